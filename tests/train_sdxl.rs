//! SDXL training against diffusers' real `textual_inversion_sdxl.py` on fixtures/tiny-sdxl
//! (fixtures/train-sdxl, scripts/fixtures/make_fixtures_sdxl_train.py):
//!
//! - replay: each recorded micro-step's inputs (both tokenizers' ids, time ids, posterior
//!   draw, noise, timesteps) through our step with both encoders: every loss within 1e-5
//!   relative, both encoders' gradients within 1e-4 relative, rows after every update and both
//!   final files within 1e-4 max-abs;
//! - `--seed`: the unpatched script's runs, in a folder whose directory order differs from the
//!   sorted one: every micro-step's loss within 1e-5 relative, `learned_embeds.safetensors` and
//!   `learned_embeds_2.safetensors` (and the `-steps-N` pair) within 1e-4;
//! - our files: the pair, the `{clip_l, clip_g}` file named after the trigger word, checkpoints
//!   holding both encoders' rows and an exact resume, a short last batch (the script's
//!   IndexError), validation through the SDXL pipeline.
mod common;
use common::{embedding_rows, fixtures, folder_listing, ok, repo};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};
use textual_inversion::device::Precision;
use textual_inversion::models::files::HubOptions;
use textual_inversion::models::repo::ModelRepo;
use textual_inversion::models::stable_diffusion::{LoadOptions, WeightOptions};
use textual_inversion::pipeline::Models;
use textual_inversion::schedulers::DdpmScheduler;
use textual_inversion::train::step::{loss, StepInputs};

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).norm().double_value(&[]);
    d / b.to_kind(Kind::Double).norm().double_value(&[]).max(1e-30)
}

/// tiny-sdxl, or a copy in `tmp` whose scheduler predicts v.
fn model(vpred: bool, tmp: &Path) -> PathBuf {
    let src = fixtures().join("tiny-sdxl");
    if !vpred {
        return src;
    }
    let dst = tmp.join("tiny-sdxl-vpred");
    std::fs::create_dir_all(dst.join("scheduler")).unwrap();
    for part in ["model_index.json", "tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "unet", "vae"] {
        std::os::unix::fs::symlink(src.join(part), dst.join(part)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("scheduler/scheduler_config.json")).unwrap()).unwrap();
    cfg["prediction_type"] = "v_prediction".into();
    std::fs::write(dst.join("scheduler/scheduler_config.json"), cfg.to_string()).unwrap();
    dst
}

fn replay(run: &str) {
    let dir = fixtures().join("train-sdxl").join(run);
    let rec: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("record.safetensors")).unwrap().into_iter().collect();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("record.json")).unwrap()).unwrap();
    let args = &json["script_args"];
    let tmp = tempfile::tempdir().unwrap();
    let vpred = json["prediction_type"].as_str() == Some("v_prediction");
    let path = model(vpred, tmp.path());
    let repo = ModelRepo::resolve(path.to_str().unwrap(), None, &HubOptions::default()).unwrap();
    let load =
        LoadOptions { weights: WeightOptions::default(), text_encoder_variant: false, tokenizer_dir: None, device: Device::Cpu, precision: Precision::Fp32 };
    let mut m = Models::load(&repo, &load).unwrap();
    let ddpm = DdpmScheduler::new(&m.scheduler_config).unwrap();
    let scaling = m.vae.config.scaling_factor;

    let mut rows = Vec::new();
    for (k, text) in m.stacks_mut().into_iter().enumerate() {
        let k = k + 1;
        assert_eq!(rec[&format!("placeholder_token_ids_{k}")].int64_value(&[0]), text.encoder.base_vocab());
        let init = text.encoder.token_row(rec[&format!("initializer_token_id_{k}")].int64_value(&[0])).unwrap();
        assert_eq!(max_abs(&init, &rec[&format!("initializer_row_{k}")]), 0.0, "initializer row {k}");
        text.encoder.set_new_rows(rec[&format!("initial_placeholder_rows_{k}")].copy().set_requires_grad(true)).unwrap();
        rows.push(text.encoder.new_rows().unwrap().shallow_clone());
    }
    let (mut opt, mut sched) = common::script_optimizer(args, rows.iter().map(Tensor::shallow_clone).collect());
    let g = args["gradient_accumulation_steps"].as_f64().unwrap();
    let encoders: Vec<_> = m.stacks().into_iter().map(|t| &t.encoder).collect();

    let (mut worst_loss, mut worst_grad, mut worst_rows) = (0f64, 0f64, 0f64);
    let steps = rec["step_loss"].size()[0];
    let mut update = 0;
    for s in 0..steps {
        let idx = rec["step_pixel_index"].get(s);
        let pixels = rec["pixels_u8"].index_select(0, &idx).to_kind(Kind::Double) / 127.5 - 1.0;
        let post = tch::no_grad(|| m.vae.encode(&pixels.to_kind(Kind::Float))).unwrap();
        assert!(max_abs(&post.mean, &rec["step_posterior_mean"].get(s)) < 1e-5, "step {s}: posterior mean");
        let latents = (&post.mean + &post.std * rec["step_posterior_eps"].get(s)) * scaling;
        let b = latents.size()[0];
        // The time ids as our trainer builds them (image size, crop 0,0, the resolution) equal the
        // script's flat ones.
        let time_ids = rec["step_add_time_ids"].get(s).reshape([b, 6]);
        let sizes = rec["step_original_size"].get(s).to_kind(Kind::Float);
        assert!(time_ids.narrow(1, 0, 2).equal(&sizes), "step {s}: original sizes");
        let x = StepInputs {
            input_ids: rec["step_input_ids_1"].get(s),
            input_ids_2: Some(rec["step_input_ids_2"].get(s)),
            time_ids: Some(time_ids),
            latents,
            noise: rec["step_noise"].get(s),
            timesteps: rec["step_timesteps"].get(s),
            mask: None,
        };
        let l = loss(&encoders, &m.unet, &ddpm, &x, Kind::Float).unwrap();
        let want = rec["step_loss"].double_value(&[s]);
        worst_loss = worst_loss.max((l.double_value(&[]) - want).abs() / want.abs());
        (l / g).backward();
        if rec["step_sync"].int64_value(&[s]) == 1 {
            for (k, r) in rows.iter().enumerate() {
                worst_grad = worst_grad.max(rel(&r.grad(), &rec[&format!("update_grad_rows_{}", k + 1)].get(update)));
            }
            opt.step().unwrap();
            opt.set_lr(sched.step());
            opt.zero_grad();
            for (k, r) in rows.iter().enumerate() {
                worst_rows = worst_rows.max(max_abs(r, &rec[&format!("update_rows_{}", k + 1)].get(update)));
            }
            update += 1;
        }
    }
    assert_eq!(update, rec["update_rows_1"].size()[0]);
    let token = args["placeholder_token"].as_str().unwrap();
    let mut final_err = 0f64;
    for (k, file) in ["learned_embeds.safetensors", "learned_embeds_2.safetensors"].iter().enumerate() {
        let f: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join(file)).unwrap().into_iter().collect();
        final_err = final_err.max(max_abs(&rows[k], &f[token]));
    }
    eprintln!("{run}: loss rel {worst_loss:e}, grad rel {worst_grad:e}, rows {worst_rows:e}, final {final_err:e}");
    assert!(worst_loss < 1e-5, "{run}: loss {worst_loss}");
    assert!(worst_grad < 1e-4, "{run}: gradient {worst_grad}");
    assert!(worst_rows < 1e-4, "{run}: rows {worst_rows}");
    assert!(final_err < 1e-4, "{run}: final embeddings {final_err}");
}

#[test]
fn replay_multi_vector_with_accumulation() {
    replay("multi");
}

#[test]
fn replay_single_vector_style_warmup() {
    replay("single");
}

#[test]
fn replay_v_prediction_three_vectors() {
    replay("vpred");
}

// ---------------------------------------------------------------------------------------------
// --seed against the unpatched script

#[test]
fn seed_parity_with_the_unpatched_sdxl_script() {
    let root = fixtures().join("train-sdxl/seed");
    let mut names: Vec<String> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        let fixture = root.join(&name);
        let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture.join("run.json")).unwrap()).unwrap();
        assert_ne!(run["listing_names"], run["sorted_names"], "{name}: the script's folder was listed in sorted order");
        let tmp = tempfile::tempdir().unwrap();
        let images: Vec<String> = run["listing"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        let data = folder_listing(tmp.path(), &images);
        let path = model(run["vpred"] == true, tmp.path());
        let args: Vec<String> = run["cli_args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                a.as_str()
                    .unwrap()
                    .replace("<tmp>/tiny-sdxl-vpred", path.to_str().unwrap())
                    .replace("<tmp>", tmp.path().to_str().unwrap())
                    .replace("<data>", data.to_str().unwrap())
            })
            .collect();
        let o =
            Command::new(env!("CARGO_BIN_EXE_textual-inversion")).current_dir(repo()).arg("train").args(&args).args(["--report_to", "none"]).output().unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let out = tmp.path().join("out");
        let ours: Vec<serde_json::Value> =
            std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let theirs = run["micro_steps"].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name}: micro-steps");
        let mut worst = 0f64;
        for (k, (o, t)) in ours.iter().zip(theirs).enumerate() {
            let (a, b) = (o["loss"].as_f64().unwrap(), t["loss"].as_f64().unwrap());
            let r = (a - b).abs() / b.abs().max(1e-12);
            worst = worst.max(r);
            assert!(r <= 1e-5, "{name}: micro-step {k}: loss {a} vs the script's {b}");
            assert_eq!(o["step"], t["step"], "{name}: micro-step {k}: global step");
        }
        let mut files = Vec::new();
        for file in run["saved"].as_array().unwrap() {
            let file = file.as_str().unwrap();
            let (a, b) = (embedding_rows(&out.join(file)), embedding_rows(&fixture.join(file)));
            let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(a.len() == b.len() && err <= 1e-4, "{name}: {file}: {err:e}");
            files.push(format!("{file} {err:.1e}"));
        }
        eprintln!("{name}: worst loss {worst:.1e}; {}", files.join(", "));
    }
}

// ---------------------------------------------------------------------------------------------
// Our files

fn train(out: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_textual-inversion"));
    c.arg("train").arg("--pretrained_model_name_or_path").arg(fixtures().join("tiny-sdxl"));
    c.arg("--train_data_dir").arg(fixtures().join("train/seed/images"));
    for (flag, value) in [("--placeholder_token", "<cat-toy>"), ("--initializer_token", "toy")] {
        if !extra.contains(&flag) {
            c.args([flag, value]);
        }
    }
    c.args(["--resolution", "64", "--num_vectors", "2", "--learning_rate", "5e-3", "--repeats", "1", "--report_to", "none", "--seed", "3"]);
    c.arg("--output_dir").arg(out).args(extra).output().unwrap()
}

#[test]
fn sdxl_training_writes_both_files_checkpoints_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // batch 3 over 4 images: a short last batch, where the script raises IndexError.
    let straight = dir.path().join("straight");
    let common = ["--train_batch_size", "3", "--max_train_steps", "4", "--save_steps", "2", "--checkpointing_steps", "2"];
    ok(train(&straight, &common));
    for f in ["learned_embeds.safetensors", "learned_embeds_2.safetensors", "learned_embeds-steps-2.safetensors", "learned_embeds_2-steps-2.safetensors"] {
        assert!(straight.join(f).is_file(), "{f}");
    }
    let (a, b) = (embedding_rows(&straight.join("learned_embeds.safetensors")), embedding_rows(&straight.join("learned_embeds_2.safetensors")));
    let te = |k: &str| -> usize {
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny-sdxl").join(k).join("config.json")).unwrap()).unwrap();
        cfg["hidden_size"].as_u64().unwrap() as usize
    };
    assert_eq!((a.len(), b.len()), (2 * te("text_encoder"), 2 * te("text_encoder_2")));
    // The one-file layout A1111, kohya and ComfyUI load, named after the trigger word.
    let pair = textual_inversion::formats::embeddings::read(&straight.join("cat-toy.safetensors")).unwrap();
    use textual_inversion::formats::embeddings::Encoder;
    assert_eq!(pair.embeddings[0].part(Encoder::ClipL).unwrap().tensor.to_f32_vec(), a);
    assert_eq!(pair.embeddings[0].part(Encoder::ClipG).unwrap().tensor.to_f32_vec(), b);
    // Checkpoints hold both encoders' rows; resuming gives the same run, bit for bit.
    let ck = straight.join("checkpoint-2");
    assert!(ck.join("learned_embeds.safetensors").is_file() && ck.join("learned_embeds_2.safetensors").is_file());
    let resumed = dir.path().join("resumed");
    ok(train(&resumed, &[&common[..4], &["--save_steps", "2", "--checkpointing_steps", "2"]].concat()));
    std::fs::remove_dir_all(resumed.join("checkpoint-4")).unwrap();
    ok(train(&resumed, &[&common[..], &["--resume_from_checkpoint", "latest"]].concat()));
    for f in ["learned_embeds.safetensors", "learned_embeds_2.safetensors"] {
        assert_eq!(embedding_rows(&resumed.join(f)), embedding_rows(&straight.join(f)), "{f}: resumed equals straight");
    }
}

#[test]
fn sdxl_validation_runs_through_the_sdxl_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v");
    ok(train(
        &out,
        &[
            "--train_batch_size",
            "2",
            "--max_train_steps",
            "2",
            "--validation_prompt",
            "a photo of <cat-toy>",
            "--validation_steps",
            "1",
            "--num_validation_images",
            "1",
        ],
    ));
    // Every update, and once more at the end as the SDXL script does.
    for f in ["step-1-0.png", "step-2-0.png"] {
        assert!(out.join("validation").join(f).is_file(), "{f}");
    }
    let plain = dir.path().join("p");
    ok(train(&plain, &["--train_batch_size", "2", "--max_train_steps", "2"]));
    assert_eq!(
        embedding_rows(&out.join("learned_embeds_2.safetensors")),
        embedding_rows(&plain.join("learned_embeds_2.safetensors")),
        "validation leaves the training stream alone"
    );
}

#[test]
fn sdxl_script_errors_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let o = train(&dir.path().join("x"), &["--initializer_token", "a photo", "--max_train_steps", "1"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("The initializer token must be a single token"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = train(&dir.path().join("x"), &["--placeholder_token", "cat", "--max_train_steps", "1"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("The tokenizer already contains the token cat"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `--gradient_checkpointing` on SDXL (the pooled embedding's gradient goes through the time
/// embedding of every block) trains to the same pair of embeddings within 1e-5.
#[test]
fn sdxl_gradient_checkpointing_trains_the_same_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("plain"), dir.path().join("recomputed"));
    ok(train(&a, &["--train_batch_size", "2", "--max_train_steps", "3"]));
    ok(train(&b, &["--train_batch_size", "2", "--max_train_steps", "3", "--gradient_checkpointing"]));
    for f in ["learned_embeds.safetensors", "learned_embeds_2.safetensors"] {
        let d = embedding_rows(&a.join(f)).iter().zip(embedding_rows(&b.join(f))).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d < 1e-5, "{f}: {d}");
    }
}
