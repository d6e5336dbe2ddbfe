//! `train --eval_steps N`: the CLIP scores made while training (fixtures/tiny-sd, 32 px
//! training, 4 updates, an evaluation every 2 with fixtures/tiny-clip-model, 2 seeds, 3
//! denoising steps, one editing prompt) against `evaluate --run` on the same run's saved
//! files with the same settings: at every saved step both scores within 1e-6 (the same
//! images through the same code; observed: see `-- --nocapture`). Step 0 (the initializer's
//! embedding) is scored too. The training draws are untouched: the embeddings equal, bit for
//! bit, a run without --eval_steps. Two ranks score as one: step 0 (the same embedding in both
//! runs) within 1e-5 (CLIP embeds a different batch of images on each rank, float32 rounding),
//! and each saved step of the 2-rank run equals `evaluate --run` on its files within 1e-5.
mod common;
use common::fixtures;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

const EVAL: [&str; 12] = [
    "--eval_num_images",
    "2",
    "--eval_num_inference_steps",
    "3",
    "--eval_editing_prompt",
    "a {} on the beach",
    "--clip_batch_size",
    "8",
    "--eval_image_seed",
    "0",
    "--best_by",
    "rule",
];

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_textual-inversion"));
    cmd.env("HF_HUB_OFFLINE", "1").env("OMP_NUM_THREADS", "1");
    cmd
}

fn ok(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn train(out: &Path, steps: &str, extra: &[&str]) -> Output {
    let f = fixtures();
    bin()
        .args(["train", "--pretrained_model_name_or_path", f.join("tiny-sd").to_str().unwrap()])
        .args(["--train_data_dir", f.join("dataset/images").to_str().unwrap(), "--placeholder_token", "<cat-toy>", "--initializer_token", "toy"])
        .args(["--resolution", "32", "--train_batch_size", "1", "--max_train_steps", steps, "--save_steps", "2", "--checkpointing_steps", "100"])
        .args(["--learning_rate", "5e-2", "--seed", "0", "--report_to", "none", "--output_dir", out.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

fn train_evaluating(out: &Path, steps: &str, extra: &[&str]) -> Output {
    let clip = fixtures().join("tiny-clip-model");
    let mut args = vec!["--eval_steps", "2", "--clip_model", clip.to_str().unwrap()];
    args.extend_from_slice(&EVAL);
    args.extend_from_slice(extra);
    train(out, steps, &args)
}

/// `evaluate --run` of `run` with the inline evaluation's settings.
fn evaluate_run(run: &Path, out: &Path) -> Value {
    let f = fixtures();
    ok(
        bin()
            .arg("evaluate")
            .args(["--run", run.to_str().unwrap(), "--pretrained_model_name_or_path", f.join("tiny-sd").to_str().unwrap()])
            .args(["--clip_model", f.join("tiny-clip-model").to_str().unwrap(), "--reference_dir", f.join("dataset/images").to_str().unwrap()])
            .args(["--num_images", "2", "--num_inference_steps", "3", "--editing_prompt", "a {} on the beach", "--output_dir", out.to_str().unwrap()])
            .output()
            .unwrap(),
        "evaluate --run",
    );
    json(&out.join("eval.json"))
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn scores(report: &Value, step: u64) -> (f64, f64) {
    let s = report["steps"].as_array().unwrap().iter().find(|s| s["step"] == step).unwrap_or_else(|| panic!("step {step} not in {report}"));
    (s["image_similarity"].as_f64().unwrap(), s["text_similarity"].as_f64().unwrap())
}

fn close(what: &str, got: (f64, f64), want: (f64, f64), tol: f64) -> f64 {
    let err = (got.0 - want.0).abs().max((got.1 - want.1).abs());
    eprintln!("{what}: {got:?} vs {want:?} (error {err:e})");
    assert!(err <= tol, "{what}: {got:?} vs {want:?}");
    err
}

/// Every saved step of `run` scored inline as `evaluate --run` scores it.
fn inline_equals_evaluate_run(run: &Path, tmp: &Path, tol: f64) -> Value {
    let inline = json(&run.join("eval/eval.json"));
    let steps: Vec<u64> = inline["steps"].as_array().unwrap().iter().map(|s| s["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 2, 4], "step 0 (the initializer's embedding) and every --eval_steps");
    let offline = evaluate_run(run, &tmp.join("offline"));
    for step in [2, 4] {
        close(&format!("{} step {step}", run.display()), scores(&inline, step), scores(&offline, step), tol);
    }
    assert_eq!(inline["settings"]["prompts"], offline["settings"]["prompts"]);
    assert_eq!(inline["settings"]["seeds"], offline["settings"]["seeds"]);
    inline
}

#[test]
fn inline_scores_are_evaluate_runs_and_training_is_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    ok(train_evaluating(&run, "4", &[]), "train --eval_steps");
    let inline = inline_equals_evaluate_run(&run, tmp.path(), 1e-6);
    let (step0, step2) = (&inline["steps"][0], &inline["steps"][1]);
    assert_eq!(step0["file"], "", "step 0 is no saved file");
    assert_eq!(step2["file"], run.join("learned_embeds-steps-2.safetensors").display().to_string());
    for f in ["eval.json", "eval.png", "step-0.png", "step-2.png", "step-4.png", "images/step-0/prompt-1/0001-1.png", "learned_embeds.best.safetensors"] {
        assert!(run.join("eval").join(f).is_file(), "eval/{f}");
    }
    // The best file holds the best step's rows (the final file is step 4's).
    let best = inline["best"]["step"].as_u64().unwrap();
    let best_file = if best == 0 { None } else { Some(run.join(format!("learned_embeds-steps-{best}.safetensors"))) };
    if let Some(f) = best_file {
        assert_eq!(common::embedding_rows(&run.join("eval/learned_embeds.best.safetensors")), common::embedding_rows(&f));
    }
    // metrics.jsonl: each evaluation once, on the record of the update it scored.
    let logged: Vec<(u64, u64, f64, f64)> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r.get("image_similarity").is_some())
        .map(|r| {
            (r["step"].as_u64().unwrap(), r["scored_step"].as_u64().unwrap(), r["image_similarity"].as_f64().unwrap(), r["text_similarity"].as_f64().unwrap())
        })
        .collect();
    assert_eq!(logged.iter().map(|l| (l.0, l.1)).collect::<Vec<_>>(), [(1, 0), (2, 2), (4, 4)]);
    for (i, l) in logged.iter().enumerate() {
        let s = &inline["steps"][i];
        assert_eq!((l.2, l.3), (s["image_similarity"].as_f64().unwrap(), s["text_similarity"].as_f64().unwrap()));
    }

    // The same run without --eval_steps: the very same embeddings (no training draw moved).
    let plain = tmp.path().join("plain");
    ok(train(&plain, "4", &[]), "train");
    for f in ["learned_embeds-steps-2.safetensors", "learned_embeds.safetensors"] {
        assert_eq!(common::embedding_rows(&run.join(f)), common::embedding_rows(&plain.join(f)), "{f}");
    }
}

#[test]
fn two_ranks_score_as_one() {
    if !common::c10d_available("train_eval_inline::two_ranks_score_as_one".into()) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    ok(train_evaluating(&one, "1", &[]), "train --eval_steps, one rank");
    ok(train_evaluating(&two, "4", &["--num_processes", "2"]), "train --eval_steps --num_processes 2");
    let two_report = inline_equals_evaluate_run(&two, tmp.path(), 1e-5);
    close("step 0, two ranks against one", scores(&two_report, 0), scores(&json(&one.join("eval/eval.json")), 0), 1e-5);
}

#[test]
fn bad_flag_combinations_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let clip = fixtures().join("tiny-clip-model");
    let clip = clip.to_str().unwrap();
    let cases: [(Vec<&str>, &str); 5] = [
        (vec!["--eval_steps", "2"], "--clip_model"),
        (vec!["--clip_model", clip], "--eval_steps"),
        (vec!["--eval_reference_dir", "x"], "--eval_steps"),
        (vec!["--eval_steps", "2", "--clip_model", clip, "--eval_num_images", "0"], "--eval_num_images"),
        (vec!["--eval_steps", "2", "--clip_model", clip, "--eval_reference_dir", "/nonexistent/refs"], "--eval_reference_dir /nonexistent/refs"),
    ];
    for (args, want) in cases {
        let o = train(&out, "4", &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?}: nothing written");
    }
}
