//! The samplers of issue 21 (DDPM, Euler and DPM-Solver++ 2M with Karras sigmas, UniPC, Heun,
//! KDPM2, KDPM2 ancestral, LMS and DPM-Solver++ single-step with and without Karras sigmas, DEIS,
//! UniPC with Karras sigmas) against
//! diffusers 0.42.1 (fixtures/samplers, from scripts/fixtures/make_fixtures_samplers.py):
//! - whole loops of 10 and 3 steps with tests/schedulers.rs's fake model on SD 1.5's PNDM config,
//!   SD 2's DDIM v-prediction config and the DDPMScheduler config fine-tuned models ship
//!   (DDPM's noise drawn from the seeded global CPU generator as diffusers draws it);
//! - whole seeded pipeline runs of 4 steps on tiny-sd (SD 1.5's config, and SD 2's v-prediction
//!   one) and tiny-sdxl, one of them with the model's own DDPMScheduler.
//!
//! Tolerances: integer timesteps equal (the float ones of Karras Euler, Heun and LMS, and KDPM2's
//! midpoints, 2e-4: one f32 ulp of numpy's log, as tests/schedulers.rs
//! says why), final loop latents 1e-4 max-abs, pipeline latents 1e-4 max-abs, images 1/255 per
//! pixel. `--nocapture` prints each observed error.
mod common;
use common::fixtures;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use tch::{Device, Kind, Tensor};
use textual_inversion::device::Precision;
use textual_inversion::models::files::HubOptions;
use textual_inversion::models::repo::ModelRepo;
use textual_inversion::models::stable_diffusion::{LoadOptions, WeightOptions};
use textual_inversion::pipeline::{GenerateOptions, Models};
use textual_inversion::schedulers::{self, Scheduler, SchedulerConfig, SchedulerKind};

const LOOP_TOLERANCE: f64 = 1e-4;
const LATENT_TOLERANCE: f64 = 1e-4;

fn dir() -> std::path::PathBuf {
    fixtures().join("samplers")
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap()
}

fn tensors(path: std::path::PathBuf) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn config(e: &serde_json::Value, name: &str) -> SchedulerConfig {
    SchedulerConfig::from_json(&e["configs"][name].to_string()).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// DDPM draws from libtorch's global CPU generator: one run at a time.
fn rng_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn sampler(e: &serde_json::Value, config_name: &str, name: Option<&str>) -> Box<dyn Scheduler> {
    let kind = name.map(|n| n.parse::<SchedulerKind>().unwrap());
    schedulers::load(&config(e, config_name), kind).unwrap()
}

/// Every loop of the samplers whose name starts with `prefix`; returns the worst error.
fn loops(prefix: &str) -> f64 {
    let _guard = rng_lock();
    let e = expected();
    let inputs = tensors(fixtures().join("schedulers/inputs.safetensors"));
    let want = tensors(dir().join("loops.safetensors"));
    let (init, fixed) = (&inputs["init"], &inputs["fixed"]);
    let (mut worst, mut count) = (0.0f64, 0);
    for (name, case) in e["cases"].as_object().unwrap() {
        let name_of_sampler = case["sampler"].as_str().unwrap();
        if name_of_sampler != prefix {
            continue;
        }
        count += 1;
        let mut s = sampler(&e, case["config"].as_str().unwrap(), Some(name_of_sampler));
        s.set_timesteps(case["steps"].as_u64().unwrap() as usize).unwrap();
        let want_t = Vec::<f64>::try_from(&want[&format!("{name}/timesteps")]).unwrap();
        let got_t = s.timesteps().to_vec();
        assert_eq!(got_t.len(), want_t.len(), "{name}: timesteps {got_t:?} vs {want_t:?}");
        // Float timesteps from `_sigma_to_t` (Karras Euler/Heun/LMS, KDPM2's midpoints) go
        // through numpy's f32 log, which is not correctly rounded: a last-bit difference there
        // moves the timestep by about one f32 ulp.
        let float_t = name_of_sampler.starts_with("kdpm2")
            || (name_of_sampler.ends_with("-karras") && !name_of_sampler.starts_with("dpm") && !name_of_sampler.starts_with("unipc"));
        let t_tol = if float_t { 2e-4 } else { 0.0 };
        for (g, w) in got_t.iter().zip(&want_t) {
            assert!((g - w).abs() <= t_tol, "{name}: timesteps {got_t:?} vs {want_t:?}");
        }
        let sigma = s.init_noise_sigma();
        let want_sigma = case["init_noise_sigma"].as_f64().unwrap();
        assert!((sigma - want_sigma).abs() <= 1e-6 * want_sigma.max(1.0), "{name}: init_noise_sigma {sigma} vs {want_sigma}");
        if let Some(seed) = case["seed"].as_i64() {
            tch::manual_seed(seed);
        }
        let steps = &want[&format!("{name}/steps")];
        let mut latents = init * sigma;
        for &t in &got_t {
            let x = s.scale_model_input(&latents, t).unwrap();
            let model_output = &x * 0.3 + fixed * (0.1 * t / 1000.0);
            latents = s.step(&model_output, t, &latents).unwrap();
        }
        let err = max_abs(&latents, &steps.get(steps.size()[0] - 1));
        eprintln!("{name}: final latents max-abs {err:e}");
        assert!(err <= LOOP_TOLERANCE, "{name}: final latents differ by {err}");
        worst = worst.max(err);
    }
    assert!(count > 0, "no loops for {prefix}");
    worst
}

#[test]
fn ddpm_loops_match_diffusers() {
    loops("ddpm");
}

#[test]
fn euler_karras_loops_match_diffusers() {
    loops("euler-karras");
}

#[test]
fn dpm_solver_2m_karras_loops_match_diffusers() {
    loops("dpm++2m-karras");
}

#[test]
fn unipc_loops_match_diffusers() {
    loops("unipc");
    loops("unipc-karras");
}

#[test]
fn heun_loops_match_diffusers() {
    loops("heun");
    loops("heun-karras");
}

#[test]
fn lms_loops_match_diffusers() {
    loops("lms");
    loops("lms-karras");
}

#[test]
fn dpm_solver_singlestep_loops_match_diffusers() {
    loops("dpm++2s");
    loops("dpm++2s-karras");
}

#[test]
fn deis_loops_match_diffusers() {
    loops("deis");
}

#[test]
fn kdpm2_loops_match_diffusers() {
    loops("kdpm2");
    loops("kdpm2-karras");
}

/// The ancestral variant draws one noise per whole step from the seeded global generator.
#[test]
fn kdpm2_ancestral_loops_match_diffusers() {
    loops("kdpm2-a");
    loops("kdpm2-a-karras");
}

fn models(name: &str) -> Models {
    let repo = ModelRepo::resolve(fixtures().join(name).to_str().unwrap(), None, &HubOptions::default()).unwrap();
    let load =
        LoadOptions { weights: WeightOptions::default(), text_encoder_variant: true, tokenizer_dir: None, device: Device::Cpu, precision: Precision::Fp32 };
    Models::load(&repo, &load).unwrap()
}

/// Whole pipeline runs (SD 1, SD 2 v-prediction config, SDXL), seeded, against diffusers'.
#[test]
fn pipeline_runs_match_diffusers() {
    let _guard = rng_lock();
    let e = expected();
    let mut loaded: HashMap<String, Models> = HashMap::new();
    let mut count = 0;
    for (name, run) in e["runs"].as_object().unwrap() {
        count += 1;
        let model = run["model"].as_str().unwrap();
        let m = loaded.entry(model.to_string()).or_insert_with(|| models(model));
        let want = tensors(dir().join(run["file"].as_str().unwrap()));
        let mut s = sampler(&e, run["config"].as_str().unwrap(), run["sampler"].as_str());
        assert_eq!(s.kind().class_name(), run["class"].as_str().unwrap(), "{name}");
        let o = GenerateOptions {
            prompt: run["prompt"].as_str().unwrap().to_string(),
            negative_prompt: run["negative_prompt"].as_str().map(String::from),
            steps: run["steps"].as_u64().unwrap() as usize,
            seed: run["seed"].as_u64().unwrap(),
            ..GenerateOptions::default()
        };
        let out = m.generate_from(s.as_mut(), &o, None, &mut |_, _| {}).unwrap();
        let err = max_abs(&out.latents, &want["latents"]);
        let pixels = textual_inversion::image_out::to_pixels(&out.decoded);
        let diff = (pixels.to_kind(Kind::Int) - want["image"].to_kind(Kind::Int)).abs().max().int64_value(&[]);
        eprintln!("{name}: latents max-abs {err:e}, image {diff}/255");
        assert!(err <= LATENT_TOLERANCE, "{name}: latents differ by {err}");
        assert!(diff <= 1, "{name}: image differs by {diff}/255");
    }
    assert!(count >= 33, "{count} runs");
}

/// Our names, A1111's and the class names all parse, case-insensitively, and every kind's
/// names are distinct from every other kind's.
#[test]
fn names_and_aliases_parse() {
    for (text, kind) in [
        ("DPM++ 2M Karras", SchedulerKind::DpmSolverMultistepKarras),
        ("dpm++2m-karras", SchedulerKind::DpmSolverMultistepKarras),
        ("dpmpp_2m_karras", SchedulerKind::DpmSolverMultistepKarras),
        ("DPM++ 2M", SchedulerKind::DpmSolverMultistep),
        ("Euler a", SchedulerKind::EulerAncestral),
        ("euler_a", SchedulerKind::EulerAncestral),
        ("Euler Karras", SchedulerKind::EulerKarras),
        ("EULER", SchedulerKind::Euler),
        ("PLMS", SchedulerKind::Pndm),
        ("DDPM", SchedulerKind::Ddpm),
        ("DDPMScheduler", SchedulerKind::Ddpm),
        ("ddimscheduler", SchedulerKind::Ddim),
        ("UniPC", SchedulerKind::UniPc),
        ("Heun Karras", SchedulerKind::HeunKarras),
        ("UniPCMultistepScheduler", SchedulerKind::UniPc),
        ("DEIS", SchedulerKind::Deis),
        ("UniPC Karras", SchedulerKind::UniPcKarras),
        ("DPMSolverSinglestepScheduler", SchedulerKind::DpmSolverSinglestep),
        ("dpm++2s-karras", SchedulerKind::DpmSolverSinglestepKarras),
        ("LMS Karras", SchedulerKind::LmsKarras),
        ("LMS", SchedulerKind::Lms),
        ("DEISMultistepScheduler", SchedulerKind::Deis),
        ("DPM2", SchedulerKind::Kdpm2),
        ("DPM2 Karras", SchedulerKind::Kdpm2Karras),
        ("DPM2 a", SchedulerKind::Kdpm2Ancestral),
        ("DPM2 a Karras", SchedulerKind::Kdpm2AncestralKarras),
        ("KDPM2AncestralDiscreteScheduler", SchedulerKind::Kdpm2Ancestral),
    ] {
        assert_eq!(text.parse::<SchedulerKind>().unwrap(), kind, "{text}");
    }
    for kind in SchedulerKind::ALL {
        assert_eq!(kind.cli_name().parse::<SchedulerKind>().unwrap(), kind);
        for alias in kind.aliases() {
            assert_eq!(alias.parse::<SchedulerKind>().unwrap(), kind, "{alias}");
        }
    }
    let e = "DPM++ 3M".parse::<SchedulerKind>().unwrap_err().to_string();
    assert!(e.contains("DPM++ 3M") && e.contains("dpm++2m-karras"), "{e}");
    // A config naming DDPMScheduler samples with it; the Karras kinds override the config.
    let ddpm = SchedulerConfig::from_json(r#"{"_class_name": "DDPMScheduler"}"#).unwrap();
    assert_eq!(schedulers::load(&ddpm, None).unwrap().kind(), SchedulerKind::Ddpm);
    let learned = SchedulerConfig::from_json(r#"{"_class_name": "DDPMScheduler", "variance_type": "learned_range"}"#).unwrap();
    let e = schedulers::load(&learned, None).err().unwrap().to_string();
    assert!(e.contains("variance_type") && e.contains("learned_range") && e.contains("DDPMScheduler"), "{e}");
}
