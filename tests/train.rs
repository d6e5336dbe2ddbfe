//! `train` end to end on the tiny model: the files the script writes, checkpoints and resume
//! (bit-identical to an uninterrupted run on CPU), and bad input refused before any model loads.
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{ok, repo};

fn train(out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
        .arg("train")
        .arg("--pretrained_model_name_or_path")
        .arg(repo().join("fixtures/tiny-sd"))
        .arg("--train_data_dir")
        .arg(repo().join("fixtures/dataset/images"))
        .args(["--placeholder_token", "<cat-toy>", "--initializer_token", "toy", "--resolution", "64", "--train_batch_size", "2"])
        .args(["--learning_rate", "5e-3", "--num_vectors", "2", "--repeats", "3", "--report_to", "none"])
        .args(if extra.contains(&"--seed") { &[][..] } else { &["--seed", "3"][..] })
        .arg("--output_dir")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn rows(path: &Path) -> (String, Vec<usize>, Vec<u8>) {
    let f = textual_inversion::formats::embeddings::read(path).unwrap();
    let e = &f.embeddings[0];
    (e.stored_token.clone().unwrap(), e.parts[0].tensor.shape.clone(), e.parts[0].tensor.data.clone())
}

#[test]
fn writes_the_scripts_files_and_prunes_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    ok(train(
        &out,
        &[
            "--max_train_steps",
            "6",
            "--save_steps",
            "2",
            "--checkpointing_steps",
            "2",
            "--checkpoints_total_limit",
            "2",
            "--validation_prompt",
            "a photo of <cat-toy>",
            "--validation_steps",
            "6",
            "--num_validation_images",
            "1",
        ],
    ));
    let (token, shape, _) = rows(&out.join("learned_embeds.safetensors"));
    assert_eq!((token.as_str(), shape), ("<cat-toy>", vec![2, 32]));
    let meta = textual_inversion::formats::embeddings::read(&out.join("learned_embeds.safetensors")).unwrap().metadata;
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
    for s in [2, 4, 6] {
        assert!(out.join(format!("learned_embeds-steps-{s}.safetensors")).is_file());
    }
    assert!(!out.join("checkpoint-2").exists(), "pruned to the newest 2");
    assert!(out.join("checkpoint-4/state.json").is_file() && out.join("checkpoint-6/state.json").is_file());
    assert!(out.join("validation/step-6-0.png").is_file());
    // The final file equals the last step's.
    assert_eq!(rows(&out.join("learned_embeds.safetensors")), rows(&out.join("learned_embeds-steps-6.safetensors")));
    // --no_safe_serialization writes torch.save .bin files.
    let bin = dir.path().join("bin");
    ok(train(&bin, &["--max_train_steps", "2", "--save_steps", "1", "--checkpointing_steps", "100", "--no_safe_serialization"]));
    assert_eq!(rows(&bin.join("learned_embeds.bin")).1, vec![2, 32]);
    assert!(bin.join("learned_embeds-steps-1.bin").is_file());
}

#[test]
fn resuming_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let args =
        ["--max_train_steps", "8", "--gradient_accumulation_steps", "2", "--checkpointing_steps", "3", "--lr_scheduler", "linear", "--lr_warmup_steps", "2"];
    ok(train(&straight, &args));
    // A run killed after checkpoint-3: only that checkpoint survives.
    let resumed = dir.path().join("resumed");
    std::fs::create_dir_all(&resumed).unwrap();
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    copy(&straight.join("checkpoint-3"), &resumed.join("checkpoint-3"));
    // Another --seed on the command line does not change the resumed run: the checkpoint's wins.
    let o = ok(train(&resumed, &[&args[..], &["--resume_from_checkpoint", "latest", "--seed", "99"]].concat()));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Resuming from checkpoint"));
    assert_eq!(rows(&straight.join("learned_embeds.safetensors")), rows(&resumed.join("learned_embeds.safetensors")), "bit-identical");
}

#[test]
fn bad_input_is_refused_before_models_load() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str], data: Option<&Path>| -> String {
        let has = |f: &str| extra.contains(&f);
        let mut c = Command::new(env!("CARGO_BIN_EXE_textual-inversion"));
        c.arg("train").arg("--pretrained_model_name_or_path").arg(repo().join("fixtures/tiny-sd"));
        c.arg("--train_data_dir").arg(data.map(Path::to_path_buf).unwrap_or_else(|| repo().join("fixtures/dataset/images")));
        c.args(["--resolution", "64", "--max_train_steps", "1", "--output_dir"]).arg(dir.path().join("o"));
        if !has("--placeholder_token") {
            c.args(["--placeholder_token", "<x>"]);
        }
        if !has("--initializer_token") {
            c.args(["--initializer_token", "toy"]);
        }
        let o = c.args(extra).output().unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    assert!(run(&["--placeholder_token", "cat"], None).contains("The tokenizer already contains the token cat"));
    assert!(run(&["--initializer_token", "a photo"], None).contains("The initializer token must be a single token"));
    assert!(run(&["--num_vectors", "0"], None).contains("--num_vectors has to be larger or equal to 1"));
    assert!(run(&["--report_to", "wandb"], None).contains("not available"));
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "not an image").unwrap();
    let e = run(&[], Some(&empty));
    assert!(e.contains("empty") || e.contains("no usable image"), "{e}");
}

#[test]
fn full_pipeline_loads_with_the_new_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("full");
    ok(train(&out, &["--max_train_steps", "2", "--save_as_full_pipeline"]));
    // Our own loader reads it as a model: the tokens are there, the rows are the trained ones.
    use textual_inversion::models::files::HubOptions;
    use textual_inversion::models::repo::ModelRepo;
    use textual_inversion::models::stable_diffusion::{self as sd, WeightOptions};
    let model = ModelRepo::resolve(out.to_str().unwrap(), None, &HubOptions::default()).unwrap();
    let tok = sd::load_tokenizer(&model).unwrap();
    assert_eq!((tok.token_id("<cat-toy>"), tok.token_id("<cat-toy>_1")), (Some(49408), Some(49409)));
    let te = sd::load_text_encoder(&model, &WeightOptions::default(), textual_inversion::models::weights::Placement::cpu_f32()).unwrap();
    assert_eq!(te.base_vocab(), 49410);
    let (_, _, data) = rows(&out.join("learned_embeds.safetensors"));
    let want = tch::Tensor::from_data_size(&data, &[2, 32], tch::Kind::Float);
    let got = tch::Tensor::cat(&[te.token_row(49408).unwrap().unsqueeze(0), te.token_row(49409).unwrap().unsqueeze(0)], 0);
    assert_eq!((got - want).abs().max().double_value(&[]), 0.0);
    // The base model's files are untouched (they may be hard links).
    let base = textual_inversion::models::config::read::<serde_json::Value>(&repo().join("fixtures/tiny-sd/text_encoder/config.json")).unwrap();
    assert_eq!(base["vocab_size"], 49408);
    // diffusers loads it, where a Python with diffusers is around.
    if let Some(py) = common::reference_python(&["diffusers"], "the diffusers check of the full pipeline") {
        let code = "import sys; from diffusers import StableDiffusionPipeline as P; p = P.from_pretrained(sys.argv[1]); \
                    t = p.tokenizer; ids = t.convert_tokens_to_ids(['<cat-toy>', '<cat-toy>_1']); \
                    print(ids, tuple(p.text_encoder.get_input_embeddings().weight.shape), t('a <cat-toy> <cat-toy>_1').input_ids)";
        let o = Command::new(py).args(["-c", code]).arg(&out).output().unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(stdout.contains("[49408, 49409] (49410, 32) [49406, 320, 49408, 49409, 49407]"), "{stdout}");
    }
}

#[test]
fn cached_latents_train_exactly_like_encoding_every_step() {
    // The cache keeps each (image, flip)'s posterior mean and std and draws a fresh sample per
    // step: the same draws as encoding every step, so the same embedding.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("cached"), dir.path().join("uncached"));
    ok(train(&a, &["--max_train_steps", "4", "--center_crop"]));
    ok(train(&b, &["--max_train_steps", "4", "--center_crop", "--no_cache_latents"]));
    let (ra, rb) = (rows(&a.join("learned_embeds.safetensors")), rows(&b.join("learned_embeds.safetensors")));
    let to_f32 = |d: &[u8]| d.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>();
    let diff = to_f32(&ra.2).iter().zip(to_f32(&rb.2)).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    // Batched vs single-image VAE encodes may round differently in the last bit.
    assert!(diff < 1e-6, "max difference {diff}");
}

/// Every file a run writes has the mode `open(path, 0o666)` gives under the caller's umask, as
/// Python's writers do (0644 under umask 022), not a temporary file's 0600.
#[test]
fn output_files_follow_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for (umask, want) in [("022", 0o644), ("077", 0o600), ("002", 0o664)] {
        let out = dir.path().join(format!("umask-{umask}"));
        let bin = env!("CARGO_BIN_EXE_textual-inversion");
        let script = format!(
            "umask {umask} && exec \"$0\" train --pretrained_model_name_or_path {} --train_data_dir {} --placeholder_token '<t>' \
             --initializer_token toy --resolution 64 --train_batch_size 1 --repeats 1 --max_train_steps 2 --save_steps 1 \
             --checkpointing_steps 1 --validation_prompt 'a <t>' --validation_steps 2 --num_validation_images 1 --seed 1 --output_dir {}",
            repo().join("fixtures/tiny-sd").display(),
            repo().join("fixtures/dataset/images").display(),
            out.display()
        );
        ok(Command::new("sh").arg("-c").arg(&script).arg(bin).output().unwrap());
        let gen = format!(
            "umask {umask} && exec \"$0\" generate --model {} --prompt x --num_inference_steps 1 --seed 1 --output_dir {}",
            repo().join("fixtures/tiny-sd").display(),
            out.join("images").display()
        );
        ok(Command::new("sh").arg("-c").arg(&gen).arg(bin).output().unwrap());
        let files = common::files_under(&out);
        for name in [
            "learned_embeds.safetensors",
            "learned_embeds-steps-1.safetensors",
            "loss.png",
            "metrics.jsonl",
            "state.json",
            "training_state.safetensors",
            "step-2-0.png",
            "0000-1.png",
        ] {
            assert!(files.iter().any(|f| f.file_name().unwrap() == name), "umask {umask}: {name} not written");
        }
        for f in &files {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, want, "umask {umask}: {} has mode {mode:o}", f.display());
        }
    }
}

/// A copy of the tiny model in `dir` whose scheduler config is `config`.
fn tiny_sd_with_scheduler(dir: &Path, config: serde_json::Value) -> PathBuf {
    let src = repo().join("fixtures/tiny-sd");
    let dst = dir.join("model");
    std::fs::create_dir_all(dst.join("scheduler")).unwrap();
    for part in ["model_index.json", "tokenizer", "text_encoder", "unet", "vae"] {
        std::os::unix::fs::symlink(src.join(part), dst.join(part)).unwrap();
    }
    std::fs::write(dst.join("scheduler/scheduler_config.json"), config.to_string()).unwrap();
    dst
}

fn train_on(model: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
        .arg("train")
        .arg("--pretrained_model_name_or_path")
        .arg(model)
        .arg("--train_data_dir")
        .arg(repo().join("fixtures/dataset/images"))
        .args(["--placeholder_token", "<t>", "--initializer_token", "toy", "--resolution", "64", "--train_batch_size", "1"])
        .args(["--repeats", "1", "--max_train_steps", "3", "--seed", "5", "--report_to", "none", "--output_dir"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// What diffusers' `DDPMScheduler(...).save_config()` writes for SD 1.5's betas (many
/// fine-tuned models ship it): validation (DPM-Solver++ from this config) and
/// `generate --scheduler dpm++2m` work on it.
#[test]
fn validation_and_dpm_work_on_a_ddpm_written_scheduler_config() {
    let dir = tempfile::tempdir().unwrap();
    let ddpm = serde_json::json!({
        "_class_name": "DDPMScheduler", "_diffusers_version": "0.42.1", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "clip_sample": false, "clip_sample_range": 1.0, "dynamic_thresholding_ratio": 0.995,
        "num_train_timesteps": 1000, "prediction_type": "epsilon", "rescale_betas_zero_snr": false, "sample_max_value": 1.0,
        "steps_offset": 1, "thresholding": false, "timestep_spacing": "leading", "trained_betas": null, "variance_type": "fixed_small"
    });
    let model = tiny_sd_with_scheduler(dir.path(), ddpm);
    let out = dir.path().join("out");
    let o = ok(train_on(&model, &out, &["--validation_prompt", "a <t>", "--validation_steps", "2", "--num_validation_images", "1"]));
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(!log.contains("validation at step"), "{log}");
    assert!(out.join("validation/step-2-0.png").is_file());
    let o = Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
        .args(["generate", "--model"])
        .arg(&model)
        .args(["--prompt", "x", "--num_inference_steps", "2", "--scheduler", "dpm++2m", "--seed", "1", "--output_dir"])
        .arg(dir.path().join("images"))
        .output()
        .unwrap();
    ok(o);
}

/// A validation that fails warns and training goes on, to the same embedding as a run without
/// validation; so does one that works (the generator's state is put back either way).
#[test]
fn a_failed_validation_does_not_end_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("fixtures/tiny-sd/scheduler/scheduler_config.json")).unwrap()).unwrap();
    // DDPM (training) ignores solver_order; DPM-Solver++ (validation) cannot build with it.
    cfg["solver_order"] = 0.into();
    let model = tiny_sd_with_scheduler(dir.path(), cfg);
    let (with, without) = (dir.path().join("with"), dir.path().join("without"));
    let o = ok(train_on(&model, &with, &["--validation_prompt", "a <t>", "--validation_steps", "1", "--num_validation_images", "1"]));
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("validation at step 1 failed, training goes on") && log.contains("solver_order 0"), "{log}");
    ok(train_on(&model, &without, &[]));
    assert_eq!(rows(&with.join("learned_embeds.safetensors")), rows(&without.join("learned_embeds.safetensors")));
    // And a validation that works, after every update, changes nothing either.
    let validated = dir.path().join("validated");
    ok(train_on(&common::tiny_sd(), &validated, &["--validation_prompt", "a <t>", "--validation_steps", "1", "--num_validation_images", "2"]));
    assert!(validated.join("validation/step-3-1.png").is_file());
    assert_eq!(rows(&validated.join("learned_embeds.safetensors")), rows(&without.join("learned_embeds.safetensors")));
}

#[test]
fn zero_save_intervals_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--save_steps", "--checkpointing_steps"] {
        let o = train(&dir.path().join("z"), &["--max_train_steps", "1", flag, "0"]);
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(&format!("{flag} must be at least 1")), "{e}");
    }
    let o = train(&dir.path().join("z"), &["--max_train_steps", "1", "--validation_prompt", "x", "--validation_steps", "0"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--validation_steps must be at least 1"));
}

/// `--gradient_checkpointing` trains to the same embedding as plain backpropagation (the
/// blocks' gradient contributions are summed in another order: tolerance 1e-5), in fp32 and
/// with accumulation, with and without the latent cache.
#[test]
fn gradient_checkpointing_trains_the_same_embedding() {
    let dir = tempfile::tempdir().unwrap();
    let to_f32 = |d: &[u8]| d.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>();
    for extra in [&["--gradient_accumulation_steps", "2"][..], &["--no_cache_latents"][..]] {
        let (a, b) = (dir.path().join("plain"), dir.path().join("recomputed"));
        let _ = (std::fs::remove_dir_all(&a), std::fs::remove_dir_all(&b));
        ok(train(&a, &[&["--max_train_steps", "3"][..], extra].concat()));
        ok(train(&b, &[&["--max_train_steps", "3", "--gradient_checkpointing"][..], extra].concat()));
        let (ra, rb) = (rows(&a.join("learned_embeds.safetensors")), rows(&b.join("learned_embeds.safetensors")));
        let diff = to_f32(&ra.2).iter().zip(to_f32(&rb.2)).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-5, "{extra:?}: max difference {diff}");
    }
}

/// A base whose model_index.json lists a safety checker and feature extractor (SD 1.5's does)
/// it does not ship here: the full pipeline lists only what it holds, so diffusers finds every
/// folder it names; and `--prediction_type` is written into its scheduler config.
#[test]
fn full_pipeline_lists_only_what_it_holds_and_keeps_the_prediction_type() {
    let dir = tempfile::tempdir().unwrap();
    let sched: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("fixtures/tiny-sd/scheduler/scheduler_config.json")).unwrap()).unwrap();
    let model = tiny_sd_with_scheduler(dir.path(), sched);
    let mut index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(model.join("model_index.json")).unwrap()).unwrap();
    index["safety_checker"] = serde_json::json!(["stable_diffusion", "StableDiffusionSafetyChecker"]);
    index["feature_extractor"] = serde_json::json!(["transformers", "CLIPImageProcessor"]);
    std::fs::remove_file(model.join("model_index.json")).unwrap();
    std::fs::write(model.join("model_index.json"), index.to_string()).unwrap();
    let out = dir.path().join("out");
    ok(train_on(&model, &out, &["--save_as_full_pipeline", "--prediction_type", "v_prediction"]));
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("model_index.json")).unwrap()).unwrap();
    for key in ["safety_checker", "feature_extractor"] {
        assert_eq!(written[key], serde_json::json!([null, null]), "{key}");
    }
    for key in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        assert!(written[key][0].is_string(), "{key}: {}", written[key]);
        assert!(out.join(key).is_dir(), "{key}/");
    }
    let sched: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("scheduler/scheduler_config.json")).unwrap()).unwrap();
    assert_eq!(sched["prediction_type"], "v_prediction");
}
