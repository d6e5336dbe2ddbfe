//! AdamW and the LR schedules against torch 2.11.0 / diffusers 0.42.1 (fixtures/optim, from
//! scripts/fixtures/make_fixtures_optim.py): 25 AdamW steps on a [3, 32] parameter for six configurations
//! (script defaults, --scale_lr, large lr/decay, no decay, steps without gradient, a cosine
//! schedule driving the lr), resume from torch's and from our own saved state, and the lr sequence
//! of every schedule for eight (warmup, total, cycles) settings.
//!
//! Tolerances: AdamW parameters and moments within 1e-6 relative of torch (TENSOR_TOLERANCE);
//! the host-side bias-correction scalars bit-identical; learning rates within 1e-12. Observed on
//! the x86-64 AVX-512 machine that made the fixtures: every parameter, moment and learning rate
//! bit-identical (max error 0; run with `--nocapture` to see it). On an AMD EPYC without AVX-512,
//! up to 1.7e-7 relative: torch itself, rerun there, differs from the fixtures by up to 1.1e-7
//! (its vectorised kernels round differently), and our values equal that rerun bit for bit.
//! Larger errors are porting bugs.
mod common;
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Kind, Tensor};
use textual_inversion::train::lr_schedule::{LrSchedule, LrScheduleKind, LrScheduler, ScheduleArgs};
use textual_inversion::train::optim::{adam_step_scalars, AdamW, AdamWConfig};

/// Largest accepted |rust - torch| relative to max |torch|, for parameters and moments: a few
/// ulps, since the references were made on one machine and another CPU's kernels may round
/// differently.
const TENSOR_TOLERANCE: f64 = 1e-6;
const LR_TOLERANCE: f64 = 1e-12;
const STEPS: usize = 25;
const CASES: [&str; 6] = ["default", "scale_lr", "large", "no_decay", "skip", "scheduled"];

fn dir() -> PathBuf {
    common::fixtures().join("optim")
}

fn tensors(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir().join(name)).unwrap().into_iter().collect()
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("schedules.json")).unwrap()).unwrap()
}

/// max |a - b| / max |b| (0 when both are zero everywhere).
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let diff = (&a - &b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]);
    if diff == 0.0 {
        0.0
    } else {
        diff / scale.max(f64::MIN_POSITIVE)
    }
}

struct Case {
    cfg: AdamWConfig,
    init: Tensor,
    grads: Tensor,
    has_grad: Vec<bool>,
    lrs: Vec<f64>,
    params: Tensor,
    fx: HashMap<String, Tensor>,
    name: String,
}

fn case(name: &str) -> Case {
    let fx = tensors("adamw.safetensors");
    let h = Vec::<f64>::try_from(&fx[&format!("{name}/hparams")]).unwrap();
    let cfg = AdamWConfig { lr: h[0], beta1: h[1], beta2: h[2], eps: h[3], weight_decay: h[4] };
    let has_grad = Vec::<u8>::try_from(&fx[&format!("{name}/has_grad")]).unwrap().iter().map(|&b| b != 0).collect();
    let lrs = Vec::<f64>::try_from(&fx[&format!("{name}/lrs")]).unwrap();
    Case {
        cfg,
        init: fx["init"].shallow_clone(),
        grads: fx["grads"].shallow_clone(),
        has_grad,
        lrs,
        params: fx[&format!("{name}/params")].shallow_clone(),
        fx,
        name: name.to_string(),
    }
}

/// The `scheduled` case's schedule: get_scheduler("cosine", W=5, T=25) over lr 1e-3.
fn case_scheduler(c: &Case) -> Option<LrScheduler> {
    (c.name == "scheduled").then(|| {
        let args = ScheduleArgs { num_warmup_steps: 5, num_training_steps: 25, num_cycles: 1, learning_rate: c.cfg.lr };
        LrScheduler::new(LrSchedule::from_name("cosine", &args).unwrap(), c.cfg.lr)
    })
}

/// Gives `p` the gradient `g` through autograd (d/dp sum(p * g) = g exactly), after zeroing.
fn set_grad(opt: &mut AdamW, p: &Tensor, g: &Tensor) {
    opt.zero_grad();
    (p * g).sum(Kind::Float).backward();
}

/// Runs steps [start, STOP) of the case as the training loop does (optimizer step, then scheduler
/// step), checking every step's lr and parameters against torch. Returns the worst error.
fn run_steps(c: &Case, p: &Tensor, opt: &mut AdamW, mut sched: Option<&mut LrScheduler>, start: usize, stop: usize) -> f64 {
    let mut worst = 0.0f64;
    for i in start..stop {
        if let Some(s) = sched.as_deref() {
            opt.set_lr(s.lr());
        }
        assert_eq!(opt.lr(), c.lrs[i], "{}: lr used by step {}", c.name, i + 1);
        let g = c.grads.get(i as i64);
        if c.name == "skip" {
            // The explicit-gradient entry point, with torch's `grad is None` steps.
            let grad = c.has_grad[i].then_some(&g);
            opt.step_with_grads(&[grad]).unwrap();
        } else {
            set_grad(opt, p, &g);
            opt.step().unwrap();
        }
        if let Some(s) = sched.as_deref_mut() {
            s.step();
        }
        let err = rel_err(&p.detach(), &c.params.get(i as i64));
        assert!(err <= TENSOR_TOLERANCE, "{}: parameters after step {} differ from torch by {err:e} (relative)", c.name, i + 1);
        worst = worst.max(err);
    }
    worst
}

fn check_state(c: &Case, opt: &AdamW, at: usize) -> f64 {
    let state: HashMap<String, Tensor> = opt.state().unwrap().into_iter().collect();
    let mut worst = 0.0f64;
    for k in ["exp_avg", "exp_avg_sq"] {
        let err = rel_err(&state[&format!("state.0.{k}")], &c.fx[&format!("{}/state{at}/{k}", c.name)]);
        assert!(err <= TENSOR_TOLERANCE, "{}: {k} after step {at} differs by {err:e}", c.name);
        worst = worst.max(err);
    }
    let want_step = &c.fx[&format!("{}/state{at}/step", c.name)];
    let got_step = &state["state.0.step"];
    assert_eq!((got_step.kind(), got_step.size()), (Kind::Float, vec![]), "step is a float32 scalar like torch's");
    assert_eq!(got_step.double_value(&[]), want_step.double_value(&[]), "{}: step count after {at}", c.name);
    worst
}

fn leaf(t: &Tensor) -> Tensor {
    t.copy().set_requires_grad(true)
}

#[test]
fn adamw_matches_torch_every_step() {
    for name in CASES {
        let c = case(name);
        let p = leaf(&c.init);
        let mut opt = AdamW::new(vec![p.shallow_clone()], c.cfg).unwrap();
        let mut sched = case_scheduler(&c);
        let mut worst = run_steps(&c, &p, &mut opt, sched.as_mut(), 0, 10);
        worst = worst.max(check_state(&c, &opt, 10));
        worst = worst.max(run_steps(&c, &p, &mut opt, sched.as_mut(), 10, STEPS));
        worst = worst.max(check_state(&c, &opt, 25));
        let taken = c.has_grad.iter().filter(|&&b| b).count() as u64;
        assert_eq!(opt.step_count(0), Some(taken), "{name}: steps skipped without gradient");
        println!("{name}: worst relative error against torch over {STEPS} steps and states: {worst:e}");
    }
}

/// torch's own state after 10 steps, loaded into a fresh optimizer, continues like torch.
#[test]
fn resume_from_torch_state() {
    for name in CASES {
        let c = case(name);
        let p = leaf(&c.params.get(9));
        let mut opt = AdamW::new(vec![p.shallow_clone()], AdamWConfig { lr: 0.5, ..AdamWConfig::default() }).unwrap();
        let mut state = vec![
            ("param_groups.0.lr".to_string(), Tensor::from(c.lrs[10])),
            ("param_groups.0.beta1".to_string(), Tensor::from(c.cfg.beta1)),
            ("param_groups.0.beta2".to_string(), Tensor::from(c.cfg.beta2)),
            ("param_groups.0.eps".to_string(), Tensor::from(c.cfg.eps)),
            ("param_groups.0.weight_decay".to_string(), Tensor::from(c.cfg.weight_decay)),
        ];
        for k in ["step", "exp_avg", "exp_avg_sq"] {
            state.push((format!("state.0.{k}"), c.fx[&format!("{name}/state10/{k}")].shallow_clone()));
        }
        opt.load_state(&state).unwrap();
        assert_eq!(opt.config(), &AdamWConfig { lr: c.lrs[10], ..c.cfg }, "hyper-parameters come from the state");
        let mut sched = case_scheduler(&c);
        if let Some(s) = sched.as_mut() {
            let st = vec![
                ("last_epoch".to_string(), Tensor::from(10i64)),
                ("base_lr".to_string(), Tensor::from(c.cfg.lr)),
                ("last_lr".to_string(), Tensor::from(c.lrs[10])),
            ];
            s.load_state(&st).unwrap();
        }
        run_steps(&c, &p, &mut opt, sched.as_mut(), 10, STEPS);
        check_state(&c, &opt, 25);
    }
}

/// Our own state, through a safetensors file, resumes bit-identically to an uninterrupted run.
#[test]
fn state_roundtrip_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    for name in CASES {
        let c = case(name);
        let p = leaf(&c.init);
        let mut opt = AdamW::new(vec![p.shallow_clone()], c.cfg).unwrap();
        let mut sched = case_scheduler(&c);
        run_steps(&c, &p, &mut opt, sched.as_mut(), 0, 10);

        let file = tmp.path().join(format!("{name}.safetensors"));
        let mut saved = opt.state().unwrap();
        saved.extend(sched.as_ref().map(|s| s.state()).unwrap_or_default().into_iter().map(|(k, v)| (format!("scheduler.{k}"), v)));
        saved.push(("param".to_string(), p.detach().copy()));
        Tensor::write_safetensors(&saved, &file).unwrap();

        // Uninterrupted.
        run_steps(&c, &p, &mut opt, sched.as_mut(), 10, STEPS);

        // Resumed: fresh optimizer and scheduler built from the same config, state loaded.
        let loaded = Tensor::read_safetensors(&file).unwrap();
        let (sched_state, opt_state): (Vec<_>, Vec<_>) = loaded.into_iter().filter(|(k, _)| k != "param").partition(|(k, _)| k.starts_with("scheduler."));
        let saved_param = Tensor::read_safetensors(&file).unwrap().into_iter().find(|(k, _)| k == "param").unwrap().1;
        let p2 = leaf(&saved_param);
        let mut opt2 = AdamW::new(vec![p2.shallow_clone()], c.cfg).unwrap();
        opt2.load_state(&opt_state).unwrap();
        let mut sched2 = case_scheduler(&c);
        if let Some(s) = sched2.as_mut() {
            let st: Vec<_> = sched_state.into_iter().map(|(k, v)| (k["scheduler.".len()..].to_string(), v)).collect();
            s.load_state(&st).unwrap();
            assert_eq!((s.step_count(), s.lr()), (10, c.lrs[10]));
        }
        run_steps(&c, &p2, &mut opt2, sched2.as_mut(), 10, STEPS);
        assert!(p2.detach().equal(&p.detach()), "{name}: resumed run differs from the uninterrupted one");
        let (a, b) = (opt.state().unwrap(), opt2.state().unwrap());
        assert_eq!(a.len(), b.len());
        for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
            assert_eq!(ka, kb);
            assert!(ta.equal(tb), "{name}: {ka} differs after resume");
        }
    }
}

/// `lr / (1 - b1**t)` and `(1 - b2**t)**0.5` for t = 1..=5000 as Python computes them. The fixture
/// includes steps (1270, 2582, 3069) where `**0.5` is not `sqrt`.
#[test]
fn bias_correction_scalars_match_python() {
    let fx = tensors("bias.safetensors");
    let want_step = Vec::<f64>::try_from(&fx["step_size"]).unwrap();
    let want_bc2 = Vec::<f64>::try_from(&fx["bc2_sqrt"]).unwrap();
    let mut sqrt_differs = 0;
    for (i, (ws, wb)) in want_step.iter().zip(&want_bc2).enumerate() {
        let t = (i + 1) as f64;
        let (s, b) = adam_step_scalars(1e-4, 0.9, 0.999, t);
        assert_eq!(s.to_bits(), ws.to_bits(), "step_size at t={t}: {s:e} vs {ws:e}");
        assert_eq!(b.to_bits(), wb.to_bits(), "bias_correction2_sqrt at t={t}: {b:e} vs {wb:e}");
        sqrt_differs += usize::from((1.0 - 0.999f64.powf(t)).sqrt() != *wb);
    }
    println!("sqrt() would have differed from Python's **0.5 at {sqrt_differs} of {} steps", want_bc2.len());
}

#[test]
fn lr_sequences_match_diffusers() {
    let meta = meta();
    let fx = tensors("schedules.safetensors");
    let errors = meta["errors"].as_object().unwrap();
    let (mut worst, mut compared) = (0.0f64, 0);
    for case in meta["cases"].as_array().unwrap() {
        let key = case["key"].as_str().unwrap();
        let lr: f64 = case["lr"].as_str().unwrap().parse().unwrap();
        let args = ScheduleArgs {
            num_warmup_steps: case["warmup"].as_i64().unwrap(),
            num_training_steps: case["total"].as_i64().unwrap(),
            num_cycles: case["cycles"].as_i64().unwrap(),
            learning_rate: lr,
        };
        for name in LrScheduleKind::NAMES {
            let built = LrSchedule::from_name(name, &args);
            if let Some(py_err) = errors.get(&format!("{name}/{key}")) {
                let err = built.expect_err("diffusers failed on this one").to_string();
                assert!(err.contains("ZeroDivisionError"), "{name}/{key}: {err} (Python: {py_err})");
                continue;
            }
            let want = Vec::<f64>::try_from(&fx[&format!("{name}/{key}")]).unwrap();
            let mut sched = LrScheduler::new(built.unwrap(), lr);
            let mut got = vec![sched.lr()];
            for _ in 1..want.len() {
                got.push(sched.step());
            }
            for (s, (g, w)) in got.iter().zip(&want).enumerate() {
                let err = (g - w).abs();
                assert!(err <= LR_TOLERANCE, "{name}/{key}: lr at scheduler step {s}: {g:e} vs diffusers {w:e}");
                worst = worst.max(err);
                compared += 1;
            }
        }
    }
    println!("{compared} learning rates compared, worst error {worst:e}");
}

#[test]
fn warmup_makes_the_first_update_use_lr_zero() {
    let args = ScheduleArgs { num_warmup_steps: 4, num_training_steps: 100, num_cycles: 1, learning_rate: 1e-3 };
    for name in ["constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"] {
        let mut s = LrScheduler::new(LrSchedule::from_name(name, &args).unwrap(), 1e-3);
        assert_eq!(s.lr(), 0.0, "{name}");
        assert_eq!(s.step(), 2.5e-4, "{name}");
    }
    let s = LrScheduler::new(LrSchedule::from_name("constant", &args).unwrap(), 1e-3);
    assert_eq!(s.lr(), 1e-3, "constant ignores warmup");
}

#[test]
fn schedule_errors_use_the_script_words() {
    let meta = meta();
    let msg = |label: &str| {
        let m = meta["messages"][label].as_str().unwrap();
        m.split_once(": ").unwrap().1.to_string()
    };
    let args = |lr: f64| ScheduleArgs { num_warmup_steps: 0, num_training_steps: 10, num_cycles: 1, learning_rate: lr };

    let err = LrSchedule::from_name("cosine_annealing", &args(1e-4)).unwrap_err().to_string();
    assert!(err.contains(&msg("unknown")), "{err}");
    assert!(err.contains("constant_with_warmup"), "lists the valid names: {err}");
    let err = LrScheduleKind::parse("piecewise_constant").unwrap_err().to_string();
    assert!(err.contains(&msg("piecewise")), "{err}");
    for (label, lr) in [("polynomial_lr", 1e-7), ("polynomial_lr_small", 5e-8)] {
        let err = LrSchedule::from_name("polynomial", &args(lr)).unwrap_err().to_string();
        assert!(err.contains(&msg(label)), "{err} vs {}", msg(label));
    }
    assert!(LrSchedule::from_name("polynomial", &args(f64::NAN)).is_err());
    assert!(LrSchedule::from_name("polynomial", &args(1.1e-7)).is_ok());
    assert_eq!("cosine".parse::<LrScheduleKind>().unwrap(), LrScheduleKind::Cosine);
}

#[test]
fn adamw_config_errors_use_torch_words() {
    let p = || vec![Tensor::zeros([2], (Kind::Float, tch::Device::Cpu))];
    let d = AdamWConfig::default();
    for (cfg, want) in [
        (AdamWConfig { lr: -1.0, ..d }, "Invalid learning rate: -1.0"),
        (AdamWConfig { eps: -1e-8, ..d }, "Invalid epsilon value: -1e-08"),
        (AdamWConfig { beta1: 1.0, ..d }, "Invalid beta parameter at index 0: 1.0"),
        (AdamWConfig { beta2: f64::NAN, ..d }, "Invalid beta parameter at index 1: nan"),
        (AdamWConfig { weight_decay: -0.5, ..d }, "Invalid weight_decay value: -0.5"),
    ] {
        let err = AdamW::new(p(), cfg).unwrap_err().to_string();
        assert_eq!(err, want);
    }
    let err = AdamW::new(vec![Tensor::zeros([2], (Kind::Int64, tch::Device::Cpu))], d).unwrap_err().to_string();
    assert!(err.contains("floating-point"), "{err}");
}

#[test]
fn parameters_without_gradient_are_skipped() {
    let p = leaf(&Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu)));
    let mut opt = AdamW::new(vec![p.shallow_clone()], AdamWConfig { lr: 0.1, ..AdamWConfig::default() }).unwrap();
    opt.step().unwrap(); // no backward yet: grad undefined
    assert_eq!(opt.step_count(0), None);
    assert!(p.detach().equal(&Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu))), "untouched, no weight decay");
    assert_eq!(opt.state().unwrap().len(), 5, "no per-parameter state, only the group");
    assert!(opt.grads_finite().unwrap());
    (&p * f64::INFINITY).sum(Kind::Float).backward();
    assert!(!opt.grads_finite().unwrap());
    assert!(opt.step_with_grads(&[]).is_err(), "one gradient per parameter");
}

#[test]
fn bad_state_is_refused_and_changes_nothing() {
    let c = case("default");
    let p = leaf(&c.init);
    let mut opt = AdamW::new(vec![p.shallow_clone()], c.cfg).unwrap();
    set_grad(&mut opt, &p, &c.grads.get(0));
    opt.step().unwrap();
    let good = opt.state().unwrap();
    let before: Vec<_> = good.iter().map(|(k, t)| (k.clone(), t.copy())).collect();

    type State = Vec<(String, Tensor)>;
    let with = |edit: &dyn Fn(&mut State)| {
        let mut s: Vec<_> = good.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
        edit(&mut s);
        s
    };
    let cases: Vec<(State, &str)> = vec![
        (with(&|s| s.retain(|(k, _)| k != "state.0.exp_avg_sq")), "no \"state.0.exp_avg_sq\""),
        (with(&|s| s.retain(|(k, _)| k != "param_groups.0.eps")), "no \"param_groups.0.eps\""),
        (with(&|s| s[1].1 = Tensor::zeros([3, 31], (Kind::Float, tch::Device::Cpu))), "shape [3, 31]"),
        (with(&|s| s.push(("state.1.step".into(), Tensor::from(1.0f64)))), "no parameter of this optimizer"),
        (with(&|s| s[0].1 = Tensor::from(-2.0f64)), "not a step count"),
        (with(&|s| s.iter_mut().find(|(k, _)| k == "param_groups.0.beta1").unwrap().1 = Tensor::from(1.5f64)), "Invalid beta parameter at index 0: 1.5"),
    ];
    for (state, want) in cases {
        let err = format!("{:#}", opt.load_state(&state).unwrap_err());
        assert!(err.contains(want), "{err} (wanted {want})");
        let now = opt.state().unwrap();
        for ((ka, ta), (kb, tb)) in now.iter().zip(&before) {
            assert!(ka == kb && ta.equal(tb), "{ka} changed by a refused load");
        }
    }

    let mut sched = LrScheduler::new(LrSchedule::Constant, 1e-4);
    let err = sched.load_state(&[("last_epoch".into(), Tensor::from(3i64))]).unwrap_err().to_string();
    assert!(err.contains("no \"base_lr\""), "{err}");
    assert_eq!(sched.step_count(), 0);
}
