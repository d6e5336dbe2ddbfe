//! `evaluate --run` on a tiny run (fixtures/tiny-sd, 6 steps, an embedding saved every 2 and a
//! checkpoint every 3) scored with the tiny random CLIPModel (fixtures/tiny-clip-model): the
//! files it writes, and its scores against the first form of `evaluate` (tested against
//! transformers in tests/clip_eval.rs) run on the images it saved. Tolerance 1e-6 (the same
//! images through the same model; observed 0). The best rule itself is unit-tested in
//! src/eval/best.rs. The same for an SDXL run (fixtures/tiny-sdxl: two files per step, loaded
//! into both text encoders); the model, reference images and size taken from the run's
//! run.json, and a run folder without one evaluated with the flags.
mod common;
use common::fixtures;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const NUM_IMAGES: usize = 2;
/// The run's --resolution (run.json): the images' size when no --height/--width is given.
const SIDE: u32 = 32;

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_textual-inversion"));
    cmd.env("HF_HUB_OFFLINE", "1");
    cmd
}

fn ok(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// One tiny training run shared by the tests, in cargo's scratch folder for integration tests
/// (made afresh by each test process, so nothing is left in the system's temporary folder).
fn run_dir() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("evaluate_run");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let run = dir.join("run");
        let (model, data) = (fixtures().join("tiny-sd"), fixtures().join("dataset/images"));
        let args = [
            "train",
            "--pretrained_model_name_or_path",
            model.to_str().unwrap(),
            "--train_data_dir",
            data.to_str().unwrap(),
            "--placeholder_token",
            "<cat-toy>",
            "--initializer_token",
            "toy",
            "--resolution",
            "32",
            "--train_batch_size",
            "1",
            "--max_train_steps",
            "6",
            "--save_steps",
            "2",
            "--checkpointing_steps",
            "3",
            "--learning_rate",
            "5e-2",
            "--seed",
            "0",
            "--report_to",
            "none",
            "--output_dir",
            run.to_str().unwrap(),
        ];
        ok(bin().args(args).output().unwrap(), "train");
        run
    })
}

/// `evaluate --run` of `run` with the model and the reference images the run's run.json
/// records (none named here).
fn evaluate(run: &Path, out: &Path, extra: &[&str]) -> Output {
    let f = fixtures();
    bin()
        .arg("evaluate")
        .args(["--run", run.to_str().unwrap(), "--clip_model", f.join("tiny-clip-model").to_str().unwrap()])
        .args(["--num_images", &NUM_IMAGES.to_string(), "--num_inference_steps", "3", "--output_dir", out.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

fn evaluate_run(out: &Path, extra: &[&str]) -> Output {
    evaluate(run_dir(), out, extra)
}

/// The first form's scores of `images` against the references and `text`.
fn first_form(images: &Path, text: &str, tmp: &Path) -> (f64, f64) {
    let f = fixtures();
    let json = tmp.join("scores.json");
    ok(
        bin()
            .arg("evaluate")
            .args(["--clip_model", f.join("tiny-clip-model").to_str().unwrap(), "--reference_dir", f.join("dataset/images").to_str().unwrap()])
            .args(["--images", images.to_str().unwrap(), "--text", text, "--json", json.to_str().unwrap()])
            .output()
            .unwrap(),
        "evaluate --images",
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (v["image_similarity"].as_f64().unwrap(), v["text_similarity"].as_f64().unwrap())
}

fn png_size(path: &Path) -> (u32, u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (img.width(), img.height())
}

fn close(what: &str, got: f64, want: f64) {
    eprintln!("{what}: {got} vs {want} (error {:e})", (got - want).abs());
    assert!((got - want).abs() <= 1e-6, "{what}: {got} vs {want}");
}

#[test]
fn every_saved_step_is_scored_as_the_first_form_scores_its_images() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("eval");
    let stdout = String::from_utf8(ok(evaluate_run(&out, &[]), "evaluate --run").stdout).unwrap();
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    let steps = report["steps"].as_array().unwrap();
    let listed: Vec<(u64, String)> = steps
        .iter()
        .map(|s| (s["step"].as_u64().unwrap(), Path::new(s["file"].as_str().unwrap()).strip_prefix(run_dir()).unwrap().display().to_string()))
        .collect();
    let want = [
        (2, "learned_embeds-steps-2.safetensors"),
        (3, "checkpoint-3/learned_embeds.safetensors"),
        (4, "learned_embeds-steps-4.safetensors"),
        (6, "learned_embeds.safetensors"),
    ];
    assert_eq!(listed, want.map(|(s, f)| (s, f.to_string())));
    let prompts = report["settings"]["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 5, "the reconstruction prompt and 4 editing prompts");
    assert_eq!(prompts[0]["prompt"], "a photo of a <cat-toy>");
    assert_eq!(prompts[1]["text"], "a photo of a on the beach");
    assert_eq!(report["settings"]["seeds"], serde_json::json!([0, 1]));
    // No model, reference folder or size was named: the run's run.json gave them.
    let absolute = |p: PathBuf| std::path::absolute(p).unwrap().display().to_string();
    assert_eq!(report["settings"]["pretrained_model_name_or_path"], absolute(fixtures().join("tiny-sd")));
    assert_eq!(report["settings"]["reference_dir"], absolute(fixtures().join("dataset/images")));
    assert_eq!((report["settings"]["height"].as_u64(), report["settings"]["family"].as_str()), (Some(SIDE as u64), Some("sd")));

    for s in steps {
        let step = s["step"].as_u64().unwrap();
        let images = out.join(format!("images/step-{step}"));
        for k in 0..prompts.len() {
            let n = std::fs::read_dir(images.join(format!("prompt-{k}"))).unwrap().count();
            assert_eq!(n, NUM_IMAGES, "step {step} prompt {k}");
        }
        let (image_similarity, _) = first_form(&images.join("prompt-0"), prompts[0]["text"].as_str().unwrap(), tmp.path());
        close(&format!("step {step} image_similarity"), s["image_similarity"].as_f64().unwrap(), image_similarity);
        let per_prompt: Vec<f64> = s["text_similarity_per_prompt"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(per_prompt.len(), prompts.len() - 1);
        for (k, got) in per_prompt.iter().enumerate() {
            let (_, text_similarity) = first_form(&images.join(format!("prompt-{}", k + 1)), prompts[k + 1]["text"].as_str().unwrap(), tmp.path());
            close(&format!("step {step} editing prompt {k}"), *got, text_similarity);
        }
        let mean = per_prompt.iter().sum::<f64>() / per_prompt.len() as f64;
        close(&format!("step {step} text_similarity (mean)"), s["text_similarity"].as_f64().unwrap(), mean);
        assert_eq!(s["grid"], format!("step-{step}.png"));
        assert_eq!(png_size(&out.join(format!("step-{step}.png"))), (NUM_IMAGES as u32 * SIDE, prompts.len() as u32 * SIDE), "one row per prompt");
    }
    assert_eq!(png_size(&out.join("eval.png")), (640, 400));

    // The best is the rule's pick, and its file is the best step's rows under the run's token.
    let first_text = steps[0]["text_similarity"].as_f64().unwrap();
    let eligible = steps.iter().filter(|s| s["text_similarity"].as_f64().unwrap() >= first_text - 0.02);
    let want_best = eligible.fold(None::<&Value>, |b, s| match b {
        Some(b) if b["image_similarity"].as_f64() >= s["image_similarity"].as_f64() => Some(b),
        _ => Some(s),
    });
    assert_eq!(report["best"], *want_best.unwrap());
    let best_rows = common::embedding_rows(&out.join("learned_embeds.best.safetensors"));
    assert_eq!(best_rows, common::embedding_rows(Path::new(report["best"]["file"].as_str().unwrap())));
    let best = textual_inversion::formats::embeddings::read(&out.join("learned_embeds.best.safetensors")).unwrap();
    assert_eq!(best.embeddings[0].stored_token.as_deref(), Some("<cat-toy>"));
    assert!(stdout.contains(&format!("best step {}", report["best"]["step"])), "{stdout}");
    // Nothing was written into the run folder.
    assert!(!run_dir().join("eval.json").exists());
}

#[test]
fn best_by_and_prompts_are_the_users() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("eval");
    let f = fixtures();
    let (model, references) = (f.join("tiny-sd"), f.join("dataset/images"));
    let flags = ["--pretrained_model_name_or_path", model.to_str().unwrap(), "--reference_dir", references.to_str().unwrap()];
    let extra = [
        &flags[..],
        &["--best_by", "text", "--reconstruction_prompt", "{} toy", "--editing_prompt", "a {} in a box", "--editing_prompt", "<cat-toy> at night"],
    ]
    .concat();
    ok(evaluate_run(&out, &extra), "evaluate --run --best_by text");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    let texts: Vec<&str> = report["settings"]["prompts"].as_array().unwrap().iter().map(|p| p["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["toy", "a in a box", "at night"]);
    let steps = report["steps"].as_array().unwrap();
    let top = steps.iter().map(|s| s["text_similarity"].as_f64().unwrap()).fold(f64::MIN, f64::max);
    assert_eq!(report["best"]["text_similarity"].as_f64().unwrap(), top);
    assert_eq!(report["settings"]["best_by"], "text");
}

#[test]
fn what_is_not_a_run_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    let refuse = |run: &Path, out: &Path, want: &str| {
        let o = bin()
            .arg("evaluate")
            .args(["--run", run.to_str().unwrap(), "--pretrained_model_name_or_path", f.join("tiny-sd").to_str().unwrap()])
            .args(["--clip_model", f.join("tiny-clip-model").to_str().unwrap(), "--reference_dir", f.join("dataset/images").to_str().unwrap()])
            .args(["--output_dir", out.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "expected {want:?}: {err}");
    };
    refuse(&tmp.path().join("absent"), &tmp.path().join("e"), "is not a folder");
    refuse(tmp.path(), &tmp.path().join("e"), "holds no saved embedding");
    refuse(run_dir(), run_dir(), "is the run folder");
    // --run needs an output folder, and the model where the run has no run.json; the first
    // form's flags do not mix with it.
    let o = bin().args(["evaluate", "--clip_model", "m", "--reference_dir", "r", "--run", "x"]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--output_dir"));
    let o = bin().args(["evaluate", "--clip_model", "m", "--reference_dir", "r", "--run", "x", "--output_dir", "o"]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--pretrained_model_name_or_path"));
    let o = bin().args(["evaluate", "--clip_model", "m", "--reference_dir", "r", "--images", "i", "--text", "t", "--run", "x"]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("cannot be used with"));
}

/// A copy of the run folder `from` (files and checkpoint folders) without its run.json.
fn copy_without_record(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            for f in std::fs::read_dir(e.path()).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
            }
        } else if e.file_name() != "run.json" {
            std::fs::create_dir_all(to).unwrap();
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn a_run_without_its_record_is_evaluated_with_the_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    copy_without_record(run_dir(), &run);
    let f = fixtures();
    let (model, references) = (f.join("tiny-sd"), f.join("dataset/images"));
    let quick = ["--editing_prompt", "a {} in a box"];
    let err = |o: Output| {
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = err(evaluate(&run, &tmp.path().join("a"), &quick));
    assert!(e.contains("--pretrained_model_name_or_path") && e.contains("run.json"), "{e}");
    let e = err(evaluate(&run, &tmp.path().join("b"), &[&quick[..], &["--pretrained_model_name_or_path", model.to_str().unwrap()]].concat()));
    assert!(e.contains("--reference_dir"), "{e}");
    let out = tmp.path().join("c");
    let flags = ["--pretrained_model_name_or_path", model.to_str().unwrap(), "--reference_dir", references.to_str().unwrap(), "--learnable_property", "style"];
    ok(evaluate(&run, &out, &[&quick[..], &flags].concat()), "evaluate --run with flags, no run.json");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(report["steps"].as_array().unwrap().len(), 4);
    assert_eq!(report["settings"]["learnable_property"], "style");
    // Without a record the size is the model's own (tiny-sd: 64).
    assert_eq!(report["settings"]["height"], 64);
}

/// A tiny SDXL run (fixtures/tiny-sdxl, 4 steps, an embedding pair saved every 2 and a
/// checkpoint at 3).
fn sdxl_run(dir: &Path) -> PathBuf {
    let run = dir.join("run-sdxl");
    let (model, data) = (fixtures().join("tiny-sdxl"), fixtures().join("dataset/images"));
    let args = [
        "train",
        "--pretrained_model_name_or_path",
        model.to_str().unwrap(),
        "--train_data_dir",
        data.to_str().unwrap(),
        "--placeholder_token",
        "<cat-toy>",
        "--initializer_token",
        "toy",
        "--learnable_property",
        "style",
        "--resolution",
        "32",
        "--train_batch_size",
        "1",
        "--max_train_steps",
        "4",
        "--save_steps",
        "2",
        "--checkpointing_steps",
        "3",
        "--learning_rate",
        "5e-2",
        "--seed",
        "0",
        "--report_to",
        "none",
        "--output_dir",
        run.to_str().unwrap(),
    ];
    ok(bin().args(args).output().unwrap(), "train (SDXL)");
    run
}

#[test]
fn an_sdxl_runs_pairs_are_scored_as_the_first_form_scores_their_images() {
    let tmp = tempfile::tempdir().unwrap();
    let run = sdxl_run(tmp.path());
    let record: Value = serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!((record["family"].as_str(), record["resolution"].as_u64()), (Some("sdxl"), Some(32)));
    assert_eq!((record["learnable_property"].as_str(), record["placeholder_token"].as_str()), (Some("style"), Some("<cat-toy>")));
    let out = tmp.path().join("eval");
    let stdout = String::from_utf8(ok(evaluate(&run, &out, &["--editing_prompt", "a {} in a box"]), "evaluate --run (SDXL)").stdout).unwrap();
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(report["settings"]["family"], "sdxl");
    // The run's property chose the reconstruction prompt.
    assert_eq!(report["settings"]["prompts"][0]["prompt"], "a painting in the style of <cat-toy>");
    let steps = report["steps"].as_array().unwrap();
    let listed: Vec<(u64, String)> =
        steps.iter().map(|s| (s["step"].as_u64().unwrap(), Path::new(s["file"].as_str().unwrap()).strip_prefix(&run).unwrap().display().to_string())).collect();
    let want = [(2, "learned_embeds-steps-2.safetensors"), (3, "checkpoint-3/learned_embeds.safetensors"), (4, "learned_embeds.safetensors")];
    assert_eq!(listed, want.map(|(s, f)| (s, f.to_string())));
    let prompts = report["settings"]["prompts"].as_array().unwrap();
    for s in steps {
        let step = s["step"].as_u64().unwrap();
        let images = out.join(format!("images/step-{step}"));
        assert_eq!(png_size(&images.join("prompt-0/0000-0.png")), (SIDE, SIDE), "the run's resolution");
        let (image_similarity, _) = first_form(&images.join("prompt-0"), prompts[0]["text"].as_str().unwrap(), tmp.path());
        close(&format!("SDXL step {step} image_similarity"), s["image_similarity"].as_f64().unwrap(), image_similarity);
        let (_, text_similarity) = first_form(&images.join("prompt-1"), prompts[1]["text"].as_str().unwrap(), tmp.path());
        close(&format!("SDXL step {step} text_similarity"), s["text_similarity"].as_f64().unwrap(), text_similarity);
    }
    // What was scored is what `generate` makes with the last step's pair loaded into both
    // encoders (after earlier steps' rows were swapped in): the same pixels.
    let gen = tmp.path().join("gen");
    let (l, g) = (run.join("learned_embeds.safetensors"), run.join("learned_embeds_2.safetensors"));
    ok(
        bin()
            .args(["generate", "--pretrained_model_name_or_path", fixtures().join("tiny-sdxl").to_str().unwrap()])
            .args(["--prompt", prompts[0]["prompt"].as_str().unwrap(), "--seed", "0", "--num_inference_steps", "3", "--height", "32", "--width", "32"])
            .args(["--embedding", &format!("{}:<cat-toy>:clip_l", l.display()), "--embedding", &format!("{}:<cat-toy>:clip_g", g.display())])
            .args(["--output_dir", gen.to_str().unwrap()])
            .output()
            .unwrap(),
        "generate (SDXL)",
    );
    let pixels = |p: &Path| image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).to_rgb8().into_raw();
    assert!(pixels(&gen.join("0000-0.png")) == pixels(&out.join("images/step-4/prompt-0/0000-0.png")), "evaluate's step-4 image is generate's");
    // The steps differ only in the embedding pair, and they do differ.
    let sims: Vec<f64> = steps.iter().map(|s| s["image_similarity"].as_f64().unwrap()).collect();
    assert!(sims.windows(2).any(|w| w[0] != w[1]), "{sims:?}");
    // The best files are the best step's pair.
    let best = Path::new(report["best"]["file"].as_str().unwrap()).to_path_buf();
    let best_2 = best.with_file_name(best.file_name().unwrap().to_str().unwrap().replacen("learned_embeds", "learned_embeds_2", 1));
    assert_eq!(common::embedding_rows(&out.join("learned_embeds.best.safetensors")), common::embedding_rows(&best));
    assert_eq!(common::embedding_rows(&out.join("learned_embeds_2.best.safetensors")), common::embedding_rows(&best_2));
    assert_eq!(report["best_file_2"], "learned_embeds_2.best.safetensors");
    assert!(stdout.contains("learned_embeds_2.best.safetensors"), "{stdout}");
}
