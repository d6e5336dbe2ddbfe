//! The controls kohya's and the web UI's users expect, against what those tools compute
//! (fixtures/controls, from scripts/fixtures/make_fixtures_controls.py): min-SNR weighting as
//! diffusers' `compute_snr` and train_text_to_image.py, kohya's huber/smooth_l1 with its three
//! threshold schedules, `clip_grad_norm_`, the noise-offset draw's place in the random stream,
//! A1111's caption draws (template, tag dropout, tag shuffle) on Python's `random`; then `train`
//! end to end with captions, template files, the new starting points and `--save_format`.
//!
//! Tolerances: losses and their gradients within 1e-5 relative of torch (f32 arithmetic on
//! another CPU's kernels; observed ~1e-7), clipped gradients 1e-6, SNR 1e-6; draws, captions and
//! Python's random() exact.
mod common;
use common::{rel_err, repo};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Kind, Tensor};
use textual_inversion::models::config::Named;
use textual_inversion::schedulers::{DdpmScheduler, SchedulerConfig};
use textual_inversion::train::config::{CaptionConfig, HuberSchedule, LossConfig, LossKind};
use textual_inversion::train::dataset::{Captions, Dataset, ImageOrder, LearnableProperty};
use textual_inversion::train::script_rng::{Mt19937, TagDraws};

fn dir() -> PathBuf {
    common::fixtures().join("controls")
}

fn tensors(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir().join(name)).unwrap().into_iter().collect()
}

fn record() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("record.json")).unwrap()).unwrap()
}

fn ddpm(prediction: &str) -> DdpmScheduler {
    let mut cfg = SchedulerConfig::read(&repo().join("fixtures/tiny-sd/scheduler/scheduler_config.json")).unwrap();
    cfg.prediction_type = Some(Named::parse(prediction));
    DdpmScheduler::new(&cfg).unwrap()
}

#[test]
fn losses_match_diffusers_min_snr_and_kohya_huber() {
    let t = tensors("losses.safetensors");
    let cases = record()["losses"].as_object().unwrap().clone();
    assert_eq!(cases.len(), 10);
    let (pred, target, timesteps) = (&t["pred"], &t["target"], &t["timesteps"]);
    for (name, c) in cases {
        let kind = match c["loss_type"].as_str().unwrap() {
            "l2" => LossKind::L2,
            "huber" => LossKind::Huber,
            _ => LossKind::SmoothL1,
        };
        let huber_schedule = match c["huber_schedule"].as_str() {
            Some("constant") => HuberSchedule::Constant,
            Some("exponential") => HuberSchedule::Exponential,
            _ => HuberSchedule::Snr,
        };
        let objective = LossConfig {
            kind,
            huber_c: c["huber_c"].as_f64().unwrap_or(0.1),
            huber_schedule,
            huber_scale: c["huber_scale"].as_f64().unwrap_or(1.0),
            snr_gamma: c["snr_gamma"].as_f64(),
            ..LossConfig::default()
        };
        let sched = ddpm(c["prediction_type"].as_str().unwrap());
        let p = pred.detach().copy().set_requires_grad(true);
        let loss = textual_inversion::train::step::loss_of(&p, target, timesteps, &sched, &objective).unwrap();
        loss.backward();
        let (e_loss, e_grad) = (rel_err(&loss.detach(), &t[&format!("{name}/loss")]), rel_err(&p.grad(), &t[&format!("{name}/grad")]));
        eprintln!("{name}: loss rel {e_loss:.2e}, grad rel {e_grad:.2e}");
        assert!(e_loss < 1e-5 && e_grad < 1e-5, "{name}: loss {e_loss:.2e}, grad {e_grad:.2e}");
    }
    // compute_snr over every timestep.
    let all = Tensor::arange(1000, (Kind::Int64, tch::Device::Cpu));
    let e = rel_err(&textual_inversion::train::step::snr(&all, &ddpm("epsilon")), &t["snr"]);
    assert!(e < 1e-6, "snr rel {e:.2e}");
}

#[test]
fn gradient_clipping_matches_torch() {
    let t = tensors("clip.safetensors");
    for max in record()["clip_max_norms"].as_array().unwrap() {
        let max = max.as_f64().unwrap();
        let params: Vec<Tensor> = ["a", "b"].iter().map(|k| t[&format!("grad/{k}")].zeros_like().set_requires_grad(true)).collect();
        for (p, k) in params.iter().zip(["a", "b"]) {
            // Make .grad equal the recorded gradient: d(sum(p * g))/dp = g.
            (p * &t[&format!("grad/{k}")]).sum(Kind::Float).backward();
        }
        textual_inversion::train::optim::clip_grad_norm(&params, max);
        for (p, k) in params.iter().zip(["a", "b"]) {
            let key = if max.fract() == 0.0 { format!("{max:.1}/{k}") } else { format!("{max}/{k}") };
            let e = rel_err(&p.grad(), &t[&key]);
            assert!(e < 1e-6, "max {max} {k}: {e:.2e}");
        }
    }
}

#[test]
fn noise_offset_is_drawn_right_after_the_noise() {
    use textual_inversion::train::draws::StepDraws;
    use textual_inversion::train::script_rng::StreamShape;
    let t = tensors("draws.safetensors");
    let draws = StepDraws {
        kind: Kind::Float,
        latent_size: 8,
        num_train_timesteps: 1000,
        seed: 7,
        resized: vec![],
        num_vectors: 1,
        shape: StreamShape { len: 1, batch_size: 1, templates: 1, tags: None, shard: None },
        noise_offset: true,
    };
    tch::manual_seed(7);
    let d = draws.draw(1);
    assert!(d.posterior.equal(&t["posterior"]) && d.noise.equal(&t["noise"]));
    assert!(d.offset.unwrap().equal(&t["offset"]), "offset draw");
    assert!(d.timesteps.equal(&t["timesteps"]), "timesteps still follow");
}

#[test]
fn python_random_and_shuffle_match_cpython() {
    let r = record();
    let mut py = Mt19937::python(3);
    let got: Vec<f64> = (0..5).map(|_| py.random()).collect();
    let want: Vec<f64> = r["captions"]["random_seed3"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(got, want);
}

/// A sorted dataset folder of `n` copies of the fixture images named a, b, c, ... with
/// `captions[i]` (when Some) in `<name><ext>`.
fn captioned_folder(root: &Path, captions: &[Option<&str>], ext: &str) -> PathBuf {
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut images: Vec<PathBuf> = std::fs::read_dir(repo().join("fixtures/dataset/images")).unwrap().map(|e| e.unwrap().path()).collect();
    images.sort();
    for (i, caption) in captions.iter().enumerate() {
        let src = &images[i % images.len()];
        let name = ((b'a' + i as u8) as char).to_string();
        std::fs::copy(src, data.join(format!("{name}.{}", src.extension().unwrap().to_string_lossy()))).unwrap();
        if let Some(c) = caption {
            std::fs::write(data.join(format!("{name}{ext}")), c).unwrap();
        }
    }
    data
}

#[test]
fn caption_draws_and_texts_match_a1111_create_text() {
    let r = record();
    let c = &r["captions"];
    let words: Vec<&str> = c["words"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let lines: Vec<&str> = c["lines"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let items: Vec<usize> = c["items"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let tmp = tempfile::tempdir().unwrap();
    // A1111 reads the caption file whole: the fixture's words have no newline, so ours agree.
    let data = captioned_folder(tmp.path(), &words.iter().map(|w| Some(*w)).collect::<Vec<_>>(), ".txt");
    let template = tmp.path().join("template.txt");
    std::fs::write(&template, lines.join("\n") + "\n").unwrap();
    let dataset = Dataset::load_with(&data, 8, false, 1, ImageOrder::Sorted, Some(".txt")).unwrap();
    assert_eq!(dataset.num_images(), 3, "caption files are not images");
    assert!(dataset.skipped().is_empty(), "caption files are not skipped entries: {:?}", dataset.skipped());
    for setting in c["settings"].as_array().unwrap() {
        let cfg = CaptionConfig {
            extension: None,
            template_file: Some(template.clone()),
            shuffle_tags: setting["shuffle_tags"].as_bool().unwrap(),
            tag_dropout: setting["tag_dropout"].as_f64().unwrap(),
        };
        let captions = Captions::load(&cfg, LearnableProperty::Object, &dataset, "<t>").unwrap();
        assert_eq!(captions.num_templates(), 3);
        let draws: TagDraws = captions.tag_draws().unwrap();
        let mut py = Mt19937::python(setting["seed"].as_u64().unwrap());
        let got: Vec<String> = items
            .iter()
            .map(|&image| {
                let template = py.below(captions.num_templates());
                let tags = draws.draw(&mut py, image);
                captions.text(image, template, tags.as_deref(), "<t>")
            })
            .collect();
        let want: Vec<&str> = setting["texts"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(got, want, "seed {}", setting["seed"]);
    }
}

#[test]
fn caption_files_place_the_placeholder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = captioned_folder(
        tmp.path(),
        &[Some("a [name] on a table\n"), Some("{} in the snow"), Some("red, my-toy, smile"), Some("sitting on grass"), None],
        ".caption",
    );
    let dataset = Dataset::load_with(&data, 8, false, 1, ImageOrder::Sorted, Some(".caption")).unwrap();
    let cfg = CaptionConfig { extension: Some(".caption".into()), ..CaptionConfig::default() };
    let captions = Captions::load(&cfg, LearnableProperty::Object, &dataset, "my-toy").unwrap();
    assert!(captions.tag_draws().is_none());
    let p = "my-toy my-toy_1";
    let texts: Vec<String> = (0..5).map(|i| captions.text(i, 2, None, p)).collect();
    assert_eq!(
        texts,
        [
            "a my-toy my-toy_1 on a table",
            "my-toy my-toy_1 in the snow",
            "red, my-toy my-toy_1, smile",
            "my-toy my-toy_1, sitting on grass",
            // No caption file: the object templates (index 2: "a cropped photo of the {}").
            "a cropped photo of the my-toy my-toy_1",
        ]
    );
    // Without --caption_extension a caption file is a skipped entry, with a hint.
    let plain = Dataset::load_with(&data, 8, false, 1, ImageOrder::Sorted, None).unwrap();
    assert_eq!(plain.skipped().len(), 4);
    assert!(plain.skipped()[0].reason.contains("--caption_extension"), "{}", plain.skipped()[0].reason);
}

fn train(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
        .arg("train")
        .arg("--pretrained_model_name_or_path")
        .arg(model)
        .arg("--train_data_dir")
        .arg(data)
        .args(["--placeholder_token", "<my-toy>", "--resolution", "64", "--train_batch_size", "2", "--repeats", "2"])
        .args(if extra.contains(&"--learning_rate") { &[][..] } else { &["--learning_rate", "5e-3"][..] })
        .args(["--report_to", "none", "--seed", "5", "--output_dir"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn ok(o: std::process::Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    err
}

fn first_rows(path: &Path) -> Tensor {
    let f = textual_inversion::formats::embeddings::read(path).unwrap();
    textual_inversion::tensors::to_tch(&f.embeddings[0].parts[0].tensor).unwrap()
}

#[test]
fn captions_and_controls_train_resume_and_save_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let data = captioned_folder(tmp.path(), &[Some("red toy, on a table, soft light"), Some("a toy, [name], blue"), None], ".txt");
    let template = tmp.path().join("template.txt");
    std::fs::write(&template, "a photo of [name], [filewords]\n[filewords], art by [name]\n").unwrap();
    let tiny = repo().join("fixtures/tiny-sd");
    let args = [
        "--initializer_text",
        "red toy",
        "--template_file",
        template.to_str().unwrap(),
        "--shuffle_tags",
        "--tag_dropout",
        "0.25",
        "--loss_type",
        "huber",
        "--snr_gamma",
        "5",
        "--noise_offset",
        "0.1",
        "--max_grad_norm",
        "0.01",
        "--max_train_steps",
        "6",
        "--checkpointing_steps",
        "3",
        "--save_steps",
        "3",
        "--save_format",
        "a1111",
        "--save_format",
        "kohya",
    ];
    let straight = tmp.path().join("straight");
    let log = ok(train(&tiny, &data, &straight, &args));
    assert!(log.contains("1 of 3 images have no .txt caption file") && (log.contains("c.png") || log.contains("c.jpg")), "{log}");
    assert!(!log.contains("skipped"), "caption files are not skipped entries: {log}");
    // Resumed from checkpoint-3: the tag draws replay with everything else.
    let resumed = tmp.path().join("resumed");
    std::fs::create_dir_all(resumed.join("checkpoint-3")).unwrap();
    for e in std::fs::read_dir(straight.join("checkpoint-3")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), resumed.join("checkpoint-3").join(e.file_name())).unwrap();
    }
    ok(train(&tiny, &data, &resumed, &[&args[..], &["--resume_from_checkpoint", "latest"]].concat()));
    let final_rows = first_rows(&straight.join("learned_embeds.safetensors"));
    assert_eq!(final_rows.size(), [2, 32], "--initializer_text's two tokens set two vectors");
    assert!(final_rows.equal(&first_rows(&resumed.join("learned_embeds.safetensors"))), "resume is bit-identical");
    // The web UI's .pt (step, name) and kohya's emb_params, named after the trigger.
    let pt = textual_inversion::formats::embeddings::read(&straight.join("my-toy.pt")).unwrap();
    assert_eq!(format!("{:?}", pt.layout), "A1111");
    assert_eq!(pt.metadata.get("step").map(String::as_str), Some("6"));
    assert_eq!(pt.metadata.get("name").map(String::as_str), Some("my-toy"));
    assert_eq!(textual_inversion::formats::embeddings::read(&straight.join("my-toy-3.pt")).unwrap().metadata.get("step").map(String::as_str), Some("3"));
    let kohya = textual_inversion::formats::embeddings::read(&straight.join("my-toy.safetensors")).unwrap();
    assert_eq!(format!("{:?}", kohya.layout), "Kohya");
    assert!(straight.join("my-toy-step00000003.safetensors").is_file());
    for f in ["my-toy.pt", "my-toy.safetensors"] {
        assert!(first_rows(&straight.join(f)).equal(&final_rows), "{f} holds the final rows");
    }
    // The controls change the run (a test that cannot fail otherwise proves nothing).
    let plain = tmp.path().join("plain");
    ok(train(&tiny, &data, &plain, &["--initializer_text", "red toy", "--template_file", template.to_str().unwrap(), "--max_train_steps", "6"]));
    assert!(!first_rows(&plain.join("learned_embeds.safetensors")).equal(&final_rows));
}

#[test]
fn starting_points_initializer_text_and_initial_embedding() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = repo().join("fixtures/tiny-sd");
    let data = repo().join("fixtures/dataset/images");
    // At learning rate 0 the saved rows are the starting rows.
    let start = |name: &str, extra: &[&str]| -> Tensor {
        let out = tmp.path().join(name);
        ok(train(&tiny, &data, &out, &[&["--learning_rate", "0", "--max_train_steps", "1"][..], extra].concat()));
        first_rows(&out.join("learned_embeds.safetensors"))
    };
    let red = start("red", &["--initializer_token", "red"]);
    let toy = start("toy", &["--initializer_token", "toy"]);
    assert!(!red.equal(&toy));
    let text = start("text", &["--initializer_text", "red toy"]);
    assert!(text.equal(&Tensor::cat(&[&red, &toy], 0)), "one vector per token");
    let cycled = start("cycled", &["--initializer_text", "red toy", "--num_vectors", "3"]);
    assert!(cycled.equal(&Tensor::cat(&[&red, &toy, &red], 0)), "kohya's cycling");
    // From a file: its vector count sets --num_vectors; a different count is refused.
    let file = tmp.path().join("cycled/learned_embeds.safetensors");
    let from_file = start("from-file", &["--initial_embedding", file.to_str().unwrap()]);
    assert!(from_file.equal(&cycled));
    let o = train(&tiny, &data, &tmp.path().join("bad"), &["--initial_embedding", file.to_str().unwrap(), "--num_vectors", "2", "--max_train_steps", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--num_vectors 2 but --initial_embedding") && err.contains("holds 3 vector(s)"), "{err}");
    // Neither a token, a text nor a file: the script's error.
    let o = train(&tiny, &data, &tmp.path().join("none"), &["--max_train_steps", "1"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--initializer_token"));
    // An A1111 .pt starts a run too (written by the convert command from the diffusers file).
    let pt = tmp.path().join("cycled.pt");
    let o = Command::new(env!("CARGO_BIN_EXE_textual-inversion")).args(["convert"]).arg(&file).arg(&pt).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(start("from-pt", &["--initial_embedding", pt.to_str().unwrap()]).equal(&cycled));
}

#[test]
fn sdxl_starts_from_its_own_clip_l_clip_g_file() {
    let tmp = tempfile::tempdir().unwrap();
    let xl = repo().join("fixtures/tiny-sdxl");
    let data = repo().join("fixtures/dataset/images");
    let run = |name: &str, extra: &[&str]| -> PathBuf {
        let out = tmp.path().join(name);
        let o = Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
            .arg("train")
            .arg("--pretrained_model_name_or_path")
            .arg(&xl)
            .arg("--train_data_dir")
            .arg(&data)
            .args(["--placeholder_token", "<xl-toy>", "--resolution", "32", "--max_train_steps", "1", "--report_to", "none", "--seed", "1"])
            .arg("--output_dir")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        ok(o);
        out
    };
    let first = run("first", &["--initializer_text", "red toy", "--learning_rate", "5e-2"]);
    let pair = first.join("xl-toy.safetensors");
    let again = run("again", &["--initial_embedding", pair.to_str().unwrap(), "--learning_rate", "0"]);
    use textual_inversion::formats::embeddings::Encoder;
    for (f, part) in [("learned_embeds.safetensors", Encoder::ClipL), ("learned_embeds_2.safetensors", Encoder::ClipG)] {
        let want = textual_inversion::formats::embeddings::read(&pair).unwrap();
        let want = textual_inversion::tensors::to_tch(&want.embeddings[0].part(part).unwrap().tensor).unwrap();
        let got = first_rows(&again.join(f));
        assert_eq!(got.size()[1], want.size()[1], "{f}: the part for its encoder");
        assert!(got.equal(&want), "{f}");
    }
}
