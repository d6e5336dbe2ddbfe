//! The schedulers against diffusers 0.42.1 (fixtures/schedulers, from
//! scripts/make_fixtures_schedulers.py): full denoising loops of 20, 7 and 1 steps with a fake
//! model, for 5 schedulers over SD 1.5's PNDM config, SD 2.x v-prediction configs with each
//! timestep spacing, the cosine and linear schedules, zero terminal SNR and the DPM-Solver and
//! Euler options; DDPM's add_noise and get_velocity; and the config errors.
//!
//! Tolerances: timesteps equal, final latents within 1e-4 max-abs, DDPM within 1e-6 (its
//! alphas_cumprod exactly). Observed (x86-64 AVX-512 CPU, libtorch 2.11.0): all 144 loops
//! bit-identical to diffusers at every step (max-abs 0), except EulerDiscrete with Karras sigmas:
//! its timesteps come from numpy's vectorized f32 log, which is not correctly rounded, so they
//! differ by 1-2 f32 ulps (<= 6.1e-5, allowed 2e-4) and the final latents by <= 1.9e-6. DDPM:
//! betas, alphas_cumprod, add_noise, get_velocity all max-abs 0. `--nocapture` prints each error.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use tch::{Kind, Tensor};
use textual_inversion::schedulers::{self, DdpmScheduler, Scheduler, SchedulerConfig, SchedulerKind};

const LOOP_TOLERANCE: f64 = 1e-4;
const DDPM_TOLERANCE: f64 = 1e-6;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/schedulers")
}

fn tensors(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir().join(name)).unwrap().into_iter().collect()
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap()
}

fn config(expected: &serde_json::Value, name: &str) -> SchedulerConfig {
    SchedulerConfig::from_json(&expected["configs"][name].to_string()).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// Euler ancestral and SDE DPM-Solver++ draw from libtorch's global CPU generator: one loop at a
/// time.
fn rng_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs every fixture case of one class, as the fixture script's loop does; returns the worst
/// final-latents error.
fn run_class(class: &str) -> f64 {
    let _guard = rng_lock();
    let expected = expected();
    let inputs = tensors("inputs.safetensors");
    let loops = tensors("loops.safetensors");
    let (init, fixed) = (&inputs["init"], &inputs["fixed"]);
    let mut worst = 0.0f64;
    let mut count = 0;
    for (name, case) in expected["cases"].as_object().unwrap() {
        if case["class"] != class {
            continue;
        }
        count += 1;
        let cfg = config(&expected, case["config"].as_str().unwrap());
        let kind = SchedulerKind::from_class_name(class).unwrap();
        let mut scheduler: Box<dyn Scheduler> = schedulers::build(kind, &cfg).unwrap();
        scheduler.set_timesteps(case["steps"].as_u64().unwrap() as usize).unwrap();

        let want_t = Vec::<f64>::try_from(&loops[&format!("{name}/timesteps")]).unwrap();
        let got_t = scheduler.timesteps().to_vec();
        let karras_euler = class == "EulerDiscreteScheduler" && expected["configs"][case["config"].as_str().unwrap()]["use_karras_sigmas"] == true;
        assert_eq!(got_t.len(), want_t.len(), "{name}: timesteps {got_t:?} vs {want_t:?}");
        for (g, w) in got_t.iter().zip(&want_t) {
            let tol = if karras_euler { 2e-4 } else { 0.0 };
            assert!((g - w).abs() <= tol, "{name}: timesteps {got_t:?} vs {want_t:?}");
        }
        let sigma = scheduler.init_noise_sigma();
        assert_eq!(sigma, case["init_noise_sigma"].as_f64().unwrap(), "{name}: init_noise_sigma");

        if let Some(seed) = case["seed"].as_i64() {
            tch::manual_seed(seed);
        }
        let steps = &loops[&format!("{name}/steps")];
        let mut latents = init * sigma;
        let mut step_worst = 0.0f64;
        for (i, &t) in got_t.iter().enumerate() {
            let x = scheduler.scale_model_input(&latents, t).unwrap();
            let model_output = &x * 0.3 + fixed * (0.1 * t / 1000.0);
            latents = scheduler.step(&model_output, t, &latents).unwrap();
            step_worst = step_worst.max(max_abs(&latents, &steps.get(i as i64)));
        }
        let final_err = max_abs(&latents, &steps.get(steps.size()[0] - 1));
        eprintln!("{name}: final max-abs {final_err:e}, worst step {step_worst:e}");
        assert!(final_err <= LOOP_TOLERANCE, "{name}: final latents differ by {final_err}");
        worst = worst.max(final_err);
    }
    assert!(count > 0, "no fixture cases for {class}");
    eprintln!("{class}: {count} loops, worst final max-abs {worst:e}");
    worst
}

#[test]
fn pndm_matches_diffusers() {
    run_class("PNDMScheduler");
}

#[test]
fn ddim_matches_diffusers() {
    run_class("DDIMScheduler");
}

#[test]
fn euler_matches_diffusers() {
    run_class("EulerDiscreteScheduler");
}

#[test]
fn euler_ancestral_matches_diffusers() {
    run_class("EulerAncestralDiscreteScheduler");
}

#[test]
fn dpm_solver_multistep_matches_diffusers() {
    run_class("DPMSolverMultistepScheduler");
}

#[test]
fn ddpm_add_noise_and_velocity_match_diffusers() {
    let expected = expected();
    let inputs = tensors("inputs.safetensors");
    let want = tensors("ddpm.safetensors");
    let (original, noise, t) = (&inputs["original"], &inputs["noise"], &inputs["timesteps"]);
    assert_eq!(Vec::<i64>::try_from(t).unwrap(), [0, 1, 250, 500, 998, 999]);
    for name in expected["ddpm_configs"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        let ddpm = DdpmScheduler::new(&config(&expected, name)).unwrap();
        let betas = max_abs(ddpm.betas(), &want[&format!("{name}/betas")]);
        let ac = max_abs(ddpm.alphas_cumprod(), &want[&format!("{name}/alphas_cumprod")]);
        let noisy = max_abs(&ddpm.add_noise(original, noise, t).unwrap(), &want[&format!("{name}/noisy")]);
        let velocity = max_abs(&ddpm.get_velocity(original, noise, t).unwrap(), &want[&format!("{name}/velocity")]);
        eprintln!("ddpm {name}: betas {betas:e}, alphas_cumprod {ac:e}, add_noise {noisy:e}, get_velocity {velocity:e}");
        assert_eq!(ac, 0.0, "{name}: alphas_cumprod must be diffusers' f32 values");
        assert!(betas <= DDPM_TOLERANCE && noisy <= DDPM_TOLERANCE && velocity <= DDPM_TOLERANCE, "{name}");
    }
}

#[test]
fn ddpm_reads_sd15_pndm_config_like_diffusers() {
    let cfg = SchedulerConfig::read(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-sd/scheduler/scheduler_config.json")).unwrap();
    assert_eq!(cfg.class_kind().unwrap(), SchedulerKind::Pndm);
    let ddpm = DdpmScheduler::new(&cfg).unwrap();
    assert_eq!(ddpm.num_train_timesteps(), 1000);
    assert_eq!(ddpm.prediction_type(), schedulers::PredictionType::Epsilon);
    // Batch of one per timestep, fp16 too (diffusers casts alphas_cumprod to the sample dtype).
    let x = Tensor::ones([2, 4, 2, 2], (Kind::Half, tch::Device::Cpu));
    let out = ddpm.add_noise(&x, &x, &Tensor::from_slice(&[0i64, 999])).unwrap();
    assert_eq!(out.kind(), Kind::Half);
}

fn err<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

fn cfg(json: &str) -> SchedulerConfig {
    SchedulerConfig::from_json(json).unwrap()
}

#[test]
fn config_errors_name_the_field_and_value() {
    let e = err(schedulers::build(SchedulerKind::Pndm, &cfg(r#"{"beta_schedule": "sigmoid"}"#)));
    assert!(e.contains("beta_schedule") && e.contains("sigmoid") && e.contains("scaled_linear"), "{e}");
    let e = err(DdpmScheduler::new(&cfg(r#"{"beta_schedule": "cosine"}"#)));
    assert!(e.contains("beta_schedule") && e.contains("cosine"), "{e}");
    let e = err(schedulers::build(SchedulerKind::Ddim, &cfg(r#"{"thresholding": true}"#)));
    assert!(e.contains("thresholding"), "{e}");
    let e = err(schedulers::build(SchedulerKind::DpmSolverMultistep, &cfg(r#"{"thresholding": true}"#)));
    assert!(e.contains("thresholding"), "{e}");
    // diffusers ignores fields a class does not have: so do we.
    schedulers::build(SchedulerKind::Euler, &cfg(r#"{"thresholding": true}"#)).unwrap();
    let e = err(schedulers::build(SchedulerKind::Euler, &cfg(r#"{"timestep_spacing": "uniform"}"#)));
    assert!(e.contains("timestep_spacing") && e.contains("uniform"), "{e}");
    let e = err(schedulers::build(SchedulerKind::Pndm, &cfg(r#"{"prediction_type": "sample"}"#)));
    assert!(e.contains("prediction_type") && e.contains("sample"), "{e}");
    let e = err(schedulers::build(SchedulerKind::EulerAncestral, &cfg(r#"{"prediction_type": "sample"}"#)));
    assert!(e.contains("prediction_type"), "{e}");
    schedulers::build(SchedulerKind::Ddim, &cfg(r#"{"prediction_type": "sample"}"#)).unwrap();
    let e = err(schedulers::build(SchedulerKind::DpmSolverMultistep, &cfg(r#"{"algorithm_type": "dpmsolver"}"#)));
    assert!(e.contains("algorithm_type") && e.contains("dpmsolver"), "{e}");
    let e = err(schedulers::build(SchedulerKind::DpmSolverMultistep, &cfg(r#"{"solver_order": 4}"#)));
    assert!(e.contains("solver_order") && e.contains('4'), "{e}");
    let e = err(schedulers::build(SchedulerKind::DpmSolverMultistep, &cfg(r#"{"use_lu_lambdas": true}"#)));
    assert!(e.contains("use_lu_lambdas"), "{e}");
    let e = err(schedulers::build(SchedulerKind::Euler, &cfg(r#"{"use_exponential_sigmas": true}"#)));
    assert!(e.contains("use_exponential_sigmas"), "{e}");
    let e = err(schedulers::build(SchedulerKind::Euler, &cfg(r#"{"interpolation_type": "cubic"}"#)));
    assert!(e.contains("interpolation_type") && e.contains("cubic"), "{e}");
    let e = err(schedulers::build(SchedulerKind::DpmSolverMultistep, &cfg(r#"{"final_sigmas_type": "max"}"#)));
    assert!(e.contains("final_sigmas_type") && e.contains("max"), "{e}");
    let e = err(schedulers::build(SchedulerKind::Pndm, &cfg(r#"{"trained_betas": [0.1, 0.2]}"#)));
    assert!(e.contains("trained_betas"), "{e}");
    let e = err(SchedulerConfig::from_json(r#"{"steps_offset": "one"}"#));
    assert!(e.contains("steps_offset") || e.contains("invalid type"), "{e}");
}

#[test]
fn class_names_and_overrides() {
    let e = err(schedulers::load(&cfg(r#"{"_class_name": "LMSDiscreteScheduler"}"#), None));
    assert!(e.contains("LMSDiscreteScheduler") && e.contains("not supported"), "{e}");
    let s = schedulers::load(&cfg(r#"{"_class_name": "LMSDiscreteScheduler"}"#), Some(SchedulerKind::Euler)).unwrap();
    assert_eq!(s.kind(), SchedulerKind::Euler);
    let e = err(schedulers::load(&cfg("{}"), None));
    assert!(e.contains("_class_name"), "{e}");
    for (name, kind) in [
        ("pndm", SchedulerKind::Pndm),
        ("DDIM", SchedulerKind::Ddim),
        ("euler", SchedulerKind::Euler),
        ("euler-ancestral", SchedulerKind::EulerAncestral),
        ("euler_a", SchedulerKind::EulerAncestral),
        ("dpm++2m", SchedulerKind::DpmSolverMultistep),
        ("dpmsolver++", SchedulerKind::DpmSolverMultistep),
        ("dpm-solver++", SchedulerKind::DpmSolverMultistep),
        ("DPMSolverMultistepScheduler", SchedulerKind::DpmSolverMultistep),
    ] {
        assert_eq!(name.parse::<SchedulerKind>().unwrap(), kind, "{name}");
        assert_eq!(kind.cli_name().parse::<SchedulerKind>().unwrap(), kind);
    }
    let e = err("lms".parse::<SchedulerKind>());
    assert!(e.contains("lms") && e.contains("euler-ancestral"), "{e}");

    // An override keeps the file's values and takes its own defaults for the rest: DPM-Solver++
    // on SD 1.5's config (no timestep_spacing) gets linspace, with steps_offset 1.
    let sd15 = cfg(r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null, "clip_sample": false}"#);
    let mut dpm = schedulers::load(&sd15, Some(SchedulerKind::DpmSolverMultistep)).unwrap();
    dpm.set_timesteps(5).unwrap();
    assert_eq!(dpm.timesteps(), [999.0, 799.0, 599.0, 400.0, 200.0]);
    let mut pndm = schedulers::load(&sd15, None).unwrap();
    pndm.set_timesteps(5).unwrap();
    assert_eq!(pndm.timesteps(), [801.0, 601.0, 601.0, 401.0, 201.0, 1.0]);
}

#[test]
fn python_infinity_in_saved_configs() {
    // What diffusers' save_pretrained writes for DPMSolverMultistepScheduler.
    let c = cfg(r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "note": "-Infinity in a string", "variance_type": null}"#);
    assert_eq!(c.lambda_min_clipped, Some(f64::NEG_INFINITY));
    let mut s = schedulers::load(&c, None).unwrap();
    s.set_timesteps(3).unwrap();
    assert_eq!(s.timesteps(), [999.0, 666.0, 333.0]);
}

#[test]
fn misuse_is_an_error_not_a_crash() {
    let c = cfg(r#"{"_class_name": "PNDMScheduler"}"#);
    // PNDM without skip_prk_steps (its default) runs Runge-Kutta first: at least 4 steps.
    let mut pndm = schedulers::load(&c, None).unwrap();
    let e = err(pndm.set_timesteps(3));
    assert!(e.contains("skip_prk_steps") && e.contains('4'), "{e}");
    let x = Tensor::zeros([1, 4, 2, 2], (Kind::Float, tch::Device::Cpu));
    for kind in SchedulerKind::ALL {
        let mut s = schedulers::build(kind, &c).unwrap();
        assert!(s.step(&x, 1.0, &x).is_err(), "{kind}: step before set_timesteps");
        assert!(s.set_timesteps(0).is_err(), "{kind}: 0 steps");
        assert!(s.set_timesteps(1001).is_err(), "{kind}: more steps than training timesteps");
        s.set_timesteps(10).unwrap();
        let t = s.timesteps()[0];
        let small = Tensor::zeros([1, 4, 1, 1], (Kind::Float, tch::Device::Cpu));
        assert!(s.step(&small, t, &x).is_err(), "{kind}: shape mismatch");
    }
    let mut euler = schedulers::build(SchedulerKind::Euler, &c).unwrap();
    euler.set_timesteps(10).unwrap();
    assert!(euler.scale_model_input(&x, 12.5).is_err(), "a timestep not in the run");
    let mut ddim = schedulers::build(SchedulerKind::Ddim, &c).unwrap();
    ddim.set_timesteps(10).unwrap();
    assert!(ddim.step(&x, 12.5, &x).is_err(), "a fractional timestep");
    assert!(ddim.step(&x, 5000.0, &x).is_err(), "a timestep past training");

    let ddpm = DdpmScheduler::new(&c).unwrap();
    let batch = Tensor::zeros([2, 4, 2, 2], (Kind::Float, tch::Device::Cpu));
    assert!(ddpm.add_noise(&batch, &batch, &Tensor::from_slice(&[0i64, 1000])).is_err(), "timestep out of range");
    assert!(ddpm.add_noise(&batch, &batch, &Tensor::from_slice(&[0.0f32, 1.0])).is_err(), "float timesteps");
    assert!(ddpm.get_velocity(&batch, &batch, &Tensor::from_slice(&[0i64])).is_err(), "one timestep per sample");
}

#[test]
fn half_precision_loops_stay_half() {
    let _guard = rng_lock();
    let c = cfg(r#"{"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "skip_prk_steps": true, "algorithm_type": "sde-dpmsolver++"}"#);
    for kind in SchedulerKind::ALL {
        let mut s = schedulers::build(kind, &c).unwrap();
        s.set_timesteps(4).unwrap();
        tch::manual_seed(7);
        let mut latents = schedulers::randn(&[1, 4, 2, 2], Kind::Half, tch::Device::Cpu) * s.init_noise_sigma();
        for t in s.timesteps().to_vec() {
            let x = s.scale_model_input(&latents, t).unwrap();
            latents = s.step(&(&x * 0.3), t, &latents).unwrap();
        }
        assert_eq!(latents.kind(), Kind::Half, "{kind}");
        assert!(bool::try_from(latents.isfinite().all()).unwrap(), "{kind}");
    }
    // Before set_timesteps, Euler's init_noise_sigma is that of the training sigmas.
    let euler = schedulers::build(SchedulerKind::Euler, &c).unwrap();
    assert!((euler.init_noise_sigma() - 14.6146).abs() < 1e-3, "{}", euler.init_noise_sigma());
}
