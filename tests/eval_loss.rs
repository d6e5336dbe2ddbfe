//! `--eval_loss_steps` and `--early_stopping` (src/train/eval_loss.rs, early_stopping.rs):
//! DVAR's rule against its own code (fixtures/evalloss/curves.json), the evaluation loss against
//! PyTorch on tiny-sd (fixtures/evalloss/expected.json, within 1e-5 relative), identical at
//! learning rate 0, the training stream untouched, resume continuing the history, and a run
//! that stops early saving its files. Two data-parallel ranks evaluate the same batch as one
//! (bit for bit at learning rate 0) and stop where the rule says on rank 0's values, every rank
//! together; an SDXL run (fixtures/tiny-sdxl) evaluates with both text encoders.
use std::path::Path;
use std::process::Command;
use textual_inversion::train::early_stopping::DvarRule;

mod common;
use common::{fixtures, ok, repo};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn train(out: &Path, extra: &[&str]) -> std::process::Output {
    train_on("tiny-sd", out, extra)
}

fn train_on(model: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
        .arg("train")
        .arg("--pretrained_model_name_or_path")
        .arg(repo().join("fixtures").join(model))
        .arg("--train_data_dir")
        .arg(fixtures().join("evalloss/images"))
        .args(["--placeholder_token", "<cat-toy>", "--initializer_token", "toy", "--resolution", "64", "--train_batch_size", "2", "--sort_images"])
        .args(["--num_vectors", "2", "--repeats", "2", "--report_to", "none", "--mixed_precision", "no", "--seed", "3"])
        .arg("--output_dir")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// Each metrics.jsonl line.
fn records(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `(step, eval_loss, eval_normalized_var)` of the lines that have an evaluation.
fn evals(out: &Path) -> Vec<(u64, f64, Option<f64>)> {
    records(out)
        .iter()
        .filter(|r| r.get("eval_loss").is_some())
        .map(|r| (r["step"].as_u64().unwrap(), r["eval_loss"].as_f64().unwrap(), r["eval_normalized_var"].as_f64()))
        .collect()
}

#[test]
fn the_rule_matches_dvars_code_on_synthetic_curves() {
    let curves = json(&fixtures().join("evalloss/curves.json"));
    for (name, c) in curves["curves"].as_object().unwrap() {
        let values: Vec<f64> = c["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let rule = DvarRule { window: c["window"].as_u64().unwrap() as usize, threshold: c["threshold"].as_f64().unwrap() };
        let reference: Vec<f64> = c["normalized_var"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for i in rule.window - 1..values.len() {
            let ours = rule.normalized_variance(&values[..=i]).unwrap();
            assert!((ours - reference[i]).abs() <= 1e-9 * reference[i].abs().max(1e-12), "{name} at {i}: {ours} vs DVAR's {}", reference[i]);
        }
        assert_eq!(rule.normalized_variance(&values[..rule.window - 1]), None, "{name}: no ratio before a full window");
        assert_eq!(rule.first_stop(&values), c["first_stop"].as_u64().map(|v| v as usize), "{name}: where it stops");
    }
    // The fixture holds a curve that stops and one that does not stop within its window's reach.
    let lin = &curves["curves"]["linear_decrease"];
    let values: Vec<f64> = lin["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let stop = lin["first_stop"].as_u64().unwrap() as usize;
    let rule = DvarRule { window: 100, threshold: 0.15 };
    assert_eq!(rule.first_stop(&values[..stop]), None, "still decreasing: no stop before W/sqrt(T)");
}

#[test]
fn eval_loss_equals_pytorch_and_does_not_move_at_learning_rate_0() {
    let expected = json(&fixtures().join("evalloss/expected.json"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lr0");
    let seed = expected["eval_seed"].as_u64().unwrap().to_string();
    ok(train(&out, &["--learning_rate", "0", "--max_train_steps", "3", "--eval_loss_steps", "1", "--eval_seed", &seed]));
    let e = evals(&out);
    assert_eq!(e.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    let want = expected["eval_loss"].as_f64().unwrap();
    for (step, v, _) in &e {
        assert!(((v - want) / want).abs() < 1e-5, "step {step}: eval_loss {v} vs PyTorch's {want}");
        assert_eq!(v.to_bits(), e[0].1.to_bits(), "every evaluation at learning rate 0 is the same, bit for bit");
    }
    // Another --eval_seed draws another batch.
    let other = dir.path().join("other");
    ok(train(&other, &["--learning_rate", "0", "--max_train_steps", "1", "--eval_loss_steps", "1", "--eval_seed", "8"]));
    assert_ne!(evals(&other)[0].1, e[0].1);
}

#[test]
fn evaluating_leaves_the_training_stream_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, evaluated) = (dir.path().join("plain"), dir.path().join("eval"));
    let args = ["--learning_rate", "5e-3", "--max_train_steps", "4", "--save_steps", "2"];
    ok(train(&plain, &args));
    ok(train(&evaluated, &[&args[..], &["--eval_loss_steps", "1", "--early_stopping", "--early_stopping_window", "100"]].concat()));
    for f in ["learned_embeds.safetensors", "learned_embeds-steps-2.safetensors"] {
        assert_eq!(std::fs::read(plain.join(f)).unwrap(), std::fs::read(evaluated.join(f)).unwrap(), "{f}: byte-identical");
    }
    let losses = |out: &Path| records(out).iter().map(|r| r["loss"].as_f64().unwrap().to_bits()).collect::<Vec<_>>();
    assert_eq!(losses(&plain), losses(&evaluated), "the logged training losses");
    assert!(records(&plain).iter().all(|r| r.get("eval_loss").is_none()));
    let e = evals(&evaluated);
    assert_eq!(e.len(), 4);
    assert!(e[3].1 != e[0].1, "the embedding moved, so did eval_loss");
}

/// A copy of `from`'s files (one level) into `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn resuming_continues_the_evaluation_history() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let args = ["--learning_rate", "5e-3", "--max_train_steps", "6", "--checkpointing_steps", "3", "--eval_loss_steps", "1"];
    let rule = ["--early_stopping", "--early_stopping_window", "2", "--early_stopping_threshold", "1e-9"];
    ok(train(&straight, &[&args[..], &rule].concat()));
    let history = json(&straight.join("checkpoint-3/eval_loss.json"));
    assert_eq!(history["eval_loss"].as_array().unwrap().len(), 3);
    let resumed = dir.path().join("resumed");
    copy_dir(&straight.join("checkpoint-3"), &resumed.join("checkpoint-3"));
    ok(train(&resumed, &[&args[..], &rule, &["--resume_from_checkpoint", "latest"]].concat()));
    let tail: Vec<_> = evals(&straight).into_iter().filter(|e| e.0 > 3).collect();
    // The ratio at step 4 needs steps 1-3's values: only the checkpoint has them.
    assert_eq!(evals(&resumed), tail, "the same values and normalized variances after resuming");
    assert!(tail[0].2.is_some());
}

#[test]
fn early_stopping_saves_as_at_the_end_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stop");
    let o = ok(train(
        &out,
        &[
            "--learning_rate",
            "5e-3",
            "--max_train_steps",
            "40",
            "--eval_loss_steps",
            "1",
            "--early_stopping",
            "--early_stopping_window",
            "2",
            "--early_stopping_threshold",
            "1",
        ],
    ));
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("early stopping at step"), "{log}");
    let e = evals(&out);
    let last = e.last().unwrap();
    assert!(last.0 < 40, "stopped before the end: {e:?}");
    assert!(last.2.unwrap() < 1.0, "stopped because the ratio fell under the threshold: {last:?}");
    // The final files of a finished run, equal to the rows at the step it stopped.
    assert!(out.join("learned_embeds.safetensors").is_file() && out.join("loss.png").is_file());
    assert!(records(&out).last().unwrap()["step"].as_u64() == Some(last.0));
}

#[test]
fn bad_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["--early_stopping"][..], "--eval_loss_steps"),
        (&["--eval_loss_steps", "1", "--eval_batch_size", "0"][..], "--eval_batch_size"),
        (&["--eval_loss_steps", "1", "--early_stopping", "--early_stopping_window", "1"][..], "--early_stopping_window"),
        (&["--eval_loss_steps", "1", "--early_stopping", "--early_stopping_threshold", "0"][..], "--early_stopping_threshold"),
    ] {
        let o = train(&dir.path().join("bad"), &[&["--max_train_steps", "1"], args].concat());
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn two_ranks_evaluate_as_one_and_stop_together() {
    if !common::c10d_available("eval_loss::two_ranks_evaluate_as_one_and_stop_together".to_string()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Learning rate 0: the rows never move, so the evaluations are of the same batch through the
    // same rows whatever the ranks do.
    let lr0 = ["--learning_rate", "0", "--max_train_steps", "3", "--eval_loss_steps", "1"];
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    ok(train(&one, &lr0));
    ok(train(&two, &[&lr0[..], &["--num_processes", "2"]].concat()));
    let bits = |out: &Path| evals(out).iter().map(|e| (e.0, e.1.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&two), bits(&one), "2 ranks' eval_loss values equal 1 rank's, bit for bit");
    assert_eq!(evals(&one).len(), 3);

    // Training: the rule stops the run at the evaluation DVAR's rule picks on the logged values,
    // at 1 rank and at 2 (where rank 1 follows rank 0's decision and both exit 0).
    let rule = ["--early_stopping", "--early_stopping_window", "2", "--early_stopping_threshold", "1"];
    let args = [&["--learning_rate", "5e-3", "--max_train_steps", "40", "--eval_loss_steps", "1"][..], &rule].concat();
    let mut stops = Vec::new();
    for (name, extra) in [("stop1", &[][..]), ("stop2", &["--num_processes", "2"][..])] {
        let out = dir.path().join(name);
        let o = ok(train(&out, &[&args[..], extra].concat()));
        let e = evals(&out);
        let values: Vec<f64> = e.iter().map(|e| e.1).collect();
        let at = DvarRule { window: 2, threshold: 1.0 }.first_stop(&values).unwrap_or_else(|| panic!("{name}: the rule never stops on {values:?}"));
        assert_eq!(at, e.len() - 1, "{name}: the run went on after the rule stopped it: {e:?}");
        let step = e[at].0;
        assert!(step < 40, "{name}: {e:?}");
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(log.contains(&format!("early stopping at step {step}")), "{name}: {log}");
        assert!(out.join("learned_embeds.safetensors").is_file(), "{name}: the final files");
        stops.push(step);
    }
    assert_eq!(stops[0], stops[1], "1 rank and 2 ranks stop at the same step");
}

#[test]
fn an_sdxl_run_evaluates_with_both_encoders() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("xl");
    let args = ["--learning_rate", "0", "--max_train_steps", "3", "--eval_loss_steps", "1"];
    ok(train_on("tiny-sdxl", &out, &args));
    let e = evals(&out);
    assert_eq!(e.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    for (step, v, _) in &e {
        assert!(v.is_finite() && *v > 0.0, "step {step}: {v}");
        assert_eq!(v.to_bits(), e[0].1.to_bits(), "every evaluation at learning rate 0 is the same, bit for bit");
    }
    // Training moves both encoders' rows, and the evaluation sees it.
    let moved = dir.path().join("xl-moved");
    ok(train_on("tiny-sdxl", &moved, &["--learning_rate", "5e-2", "--max_train_steps", "1", "--eval_loss_steps", "1"]));
    let m = evals(&moved);
    assert_ne!(m[0].1, e[0].1, "one update at learning rate 5e-2 moved the rows, and eval_loss with them");
}
