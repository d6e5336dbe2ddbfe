//! The Rust training step replayed on the exact inputs the real `textual_inversion.py` drew
//! (fixtures/train, recorded by scripts/fixtures/make_fixtures_train.py from diffusers' script on the tiny
//! model): VAE posterior, every micro-step's loss, the gradient and rows after every update, the
//! learning rates, and the final embedding file.
//!
//! Runs: `multi` (2 vectors, batch 2, accumulation 2, constant LR), `single` (1 vector, linear
//! warmup, center crop), `vpred` (v_prediction, 3 vectors, style templates, scale_lr, cosine).
//! Tolerances: posterior 1e-5 max-abs, loss 1e-5 relative, gradient 1e-4 relative, rows and final
//! embedding 1e-4 max-abs; observed values are printed with `-- --nocapture`.
mod common;
use common::fixtures;
use std::collections::HashMap;
use tch::{Kind, Tensor};
use textual_inversion::models::files::HubOptions;
use textual_inversion::models::repo::ModelRepo;
use textual_inversion::models::stable_diffusion::{self as sd, WeightOptions};
use textual_inversion::models::weights::Placement;
use textual_inversion::schedulers::{DdpmScheduler, SchedulerConfig};
use textual_inversion::train::step::{loss, StepInputs};

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).norm().double_value(&[]);
    d / b.to_kind(Kind::Double).norm().double_value(&[]).max(1e-30)
}

fn replay(run: &str) {
    let dir = fixtures().join("train").join(run);
    let rec: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("record.safetensors")).unwrap().into_iter().collect();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("record.json")).unwrap()).unwrap();
    let args = &json["script_args"];
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_sd_predicting(json["prediction_type"].as_str().unwrap_or("epsilon"), tmp.path());
    let repo = ModelRepo::resolve(model.to_str().unwrap(), None, &HubOptions::default()).unwrap();
    let w = WeightOptions::default();
    let p = Placement::cpu_f32();
    let mut te = sd::load_text_encoder(&repo, &w, p).unwrap();
    let unet = sd::load_unet(&repo, &w, p).unwrap();
    let vae = sd::load_vae(&repo, &w, p).unwrap();
    let ddpm = DdpmScheduler::new(&SchedulerConfig::read(&repo.require("scheduler/scheduler_config.json").unwrap()).unwrap()).unwrap();

    assert_eq!(rec["placeholder_token_ids"].int64_value(&[0]), te.base_vocab());
    let init = te.token_row(rec["initializer_token_id"].int64_value(&[0])).unwrap();
    assert_eq!(max_abs(&init, &rec["initializer_row"]), 0.0, "initializer row");
    te.set_new_rows(rec["initial_placeholder_rows"].copy().set_requires_grad(true)).unwrap();
    let rows = te.new_rows().unwrap().shallow_clone();
    let (mut opt, mut sched) = common::script_optimizer(args, vec![rows.shallow_clone()]);
    let lr = args["learning_rate"].as_f64().unwrap(); // already scaled by --scale_lr in the script's args
    let g = args["gradient_accumulation_steps"].as_f64().unwrap();
    let scaling = vae.config.scaling_factor;

    let (mut worst_post, mut worst_loss, mut worst_grad, mut worst_rows) = (0f64, 0f64, 0f64, 0f64);
    let steps = rec["step_loss"].size()[0];
    let mut update = 0;
    for s in 0..steps {
        // The posterior of the recorded pixels, through our VAE.
        let idx = rec["step_pixel_index"].get(s);
        let pixels = rec["pixels_u8"].index_select(0, &idx).to_kind(Kind::Double) / 127.5 - 1.0;
        let post = tch::no_grad(|| vae.encode(&pixels.to_kind(Kind::Float))).unwrap();
        worst_post = worst_post.max(max_abs(&post.mean, &rec["step_posterior_mean"].get(s))).max(max_abs(&post.std, &rec["step_posterior_std"].get(s)));
        let latents = (&post.mean + &post.std * rec["step_posterior_eps"].get(s)) * scaling;
        assert!(max_abs(&latents, &rec["step_latents"].get(s)) < 1e-5, "step {s}: latents");
        let x = StepInputs::sd(rec["step_input_ids"].get(s), latents, rec["step_noise"].get(s), rec["step_timesteps"].get(s));
        let l = loss(&[&te], &unet, &ddpm, &x, Kind::Float).unwrap();
        let want = rec["step_loss"].double_value(&[s]);
        worst_loss = worst_loss.max((l.double_value(&[]) - want).abs() / want.abs());
        (l / g).backward();
        if rec["step_sync"].int64_value(&[s]) == 1 {
            assert!((opt.lr() - rec["update_lr"].double_value(&[update])).abs() <= 1e-12 * lr.max(1e-12), "update {update}: lr");
            worst_grad = worst_grad.max(rel(&rows.grad(), &rec["update_grad_rows"].get(update)));
            opt.step().unwrap();
            opt.set_lr(sched.step());
            opt.zero_grad();
            worst_rows = worst_rows.max(max_abs(&rows, &rec["update_rows"].get(update)));
            update += 1;
        }
    }
    assert_eq!(update, rec["update_rows"].size()[0]);
    let final_file: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("learned_embeds.safetensors")).unwrap().into_iter().collect();
    let want_final = final_file.get(args["placeholder_token"].as_str().unwrap()).expect("the script's file is keyed by the placeholder");
    let final_err = max_abs(&rows, want_final);
    eprintln!("{run}: posterior {worst_post:e}, loss rel {worst_loss:e}, grad rel {worst_grad:e}, rows {worst_rows:e}, final {final_err:e}");
    assert!(worst_post < 1e-5, "{run}: posterior {worst_post}");
    assert!(worst_loss < 1e-5, "{run}: loss {worst_loss}");
    assert!(worst_grad < 1e-4, "{run}: gradient {worst_grad}");
    assert!(worst_rows < 1e-4, "{run}: rows {worst_rows}");
    assert!(final_err < 1e-4, "{run}: final embedding {final_err}");
}

#[test]
fn multi_vector_with_accumulation_replays_the_script() {
    replay("multi");
}

#[test]
fn single_vector_with_warmup_replays_the_script() {
    replay("single");
}

#[test]
fn v_prediction_style_replays_the_script() {
    replay("vpred");
}
