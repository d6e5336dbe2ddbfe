//! `train --num_processes N --seed S` on CPU (Gloo) against diffusers' unpatched
//! textual_inversion.py run data-parallel by accelerate (`ACCELERATE_USE_CPU=true torchrun
//! --standalone --nproc_per_node N`) with the same seed, over the matrix of fixtures/train/dist
//! (scripts/fixtures/make_fixtures_dist.py): the same shards of the same batches on each rank,
//! the same draws, the gradients averaged as DDP averages them, the LR schedule stepped N times
//! per update; hence rank 0's logged loss at every micro-step and the saved embeddings.
//!
//! The folders are built as in tests/train_seed_parity.rs (the script's directory order).
//!
//! Tolerances: at 2 ranks every micro-step's loss within 1e-5 relative of the script's rank-0
//! loss, its global step and LR equal, every saved embedding within 1e-4 max-abs. At 3 ranks
//! the same bounds are asserted; the averaging divides by 3, which is not exact in floats, and
//! DDP sums the whole embedding matrix's bucket (ring order), so the last bit may move there
//! (measured: `-- --nocapture`).
mod common;
use common::{embedding_rows, folder_listing, repo, script_args, Logged};
use std::process::Command;

#[derive(serde::Deserialize)]
struct Run {
    world_size: usize,
    cli_args: Vec<String>,
    vpred: bool,
    listing: Vec<String>,
    ranks: Vec<Vec<Logged>>,
    saved: Vec<String>,
}

fn parity(name: &str) {
    if !common::c10d_available("train_distributed::".to_string() + name) {
        return;
    }
    let fixture = repo().join("fixtures/train/dist").join(name);
    let run: Run = serde_json::from_str(&std::fs::read_to_string(fixture.join("run.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = folder_listing(tmp.path(), &run.listing);
    let model = common::tiny_sd_predicting(if run.vpred { "v_prediction" } else { "epsilon" }, tmp.path());
    let out = tmp.path().join("out");
    let args = script_args(&run.cli_args, &model, tmp.path(), &data);
    let seen = common::train_ranks_like_the_script(name, &args, run.world_size, &out, &run.ranks[0], &fixture, &run.saved);
    eprintln!("{name}: {seen}");
}

#[test]
fn dist_parity_obj_1v_b1_constant_w2() {
    parity("obj-1v-b1-constant-w2");
}

#[test]
fn dist_parity_style_3v_b2_g2_linear_w2() {
    parity("style-3v-b2-g2-linear-w2");
}

#[test]
fn dist_parity_obj_2v_b3_short_cosine_w2() {
    parity("obj-2v-b3-short-cosine-w2");
}

#[test]
fn dist_parity_vpred_style_4v_b3_g2_restarts_w2() {
    parity("vpred-style-4v-b3-g2-restarts-w2");
}

#[test]
fn dist_parity_style_1v_b1_g2_polynomial_w2() {
    parity("style-1v-b1-g2-polynomial-w2");
}

#[test]
fn dist_parity_obj_2v_b2_repeats_cwarmup_w2() {
    parity("obj-2v-b2-repeats-cwarmup-w2");
}

#[test]
fn dist_parity_vpred_obj_1v_b1_linear_w2() {
    parity("vpred-obj-1v-b1-linear-w2");
}

#[test]
fn dist_parity_obj_3v_b2_g2_epochs_w2() {
    parity("obj-3v-b2-g2-epochs-w2");
}

#[test]
fn dist_parity_obj_1v_b1_constant_w3() {
    parity("obj-1v-b1-constant-w3");
}

#[test]
fn dist_parity_obj_2v_b3_short_cosine_w3() {
    parity("obj-2v-b3-short-cosine-w3");
}

/// Every fixture folder has its test above (a regenerated matrix cannot silently grow a
/// configuration nobody runs).
#[test]
fn dist_matrix_is_tested() {
    common::assert_every_run_tested("tests/train_distributed.rs", "fixtures/train/dist", 6);
}

/// Ranks started with different arguments are refused at start, naming the rank.
#[test]
fn ranks_with_different_arguments_are_refused() {
    if !common::c10d_available("train_distributed::ranks_with_different_arguments_are_refused".into()) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = repo().join("fixtures/train/seed/images");
    let port = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port().to_string();
    let spawn = |rank: &str, lr: &str| {
        Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
            .current_dir(repo())
            .args(["train", "--pretrained_model_name_or_path", "fixtures/tiny-sd", "--train_data_dir", data.to_str().unwrap()])
            .args(["--placeholder_token", "<t>", "--initializer_token", "toy", "--resolution", "64", "--max_train_steps", "1", "--report_to", "none"])
            .args(["--output_dir", tmp.path().join("out").to_str().unwrap(), "--learning_rate", lr])
            .envs([("RANK", rank), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", port.as_str()), ("TI_DIST_TIMEOUT_S", "60")])
            .env("OMP_NUM_THREADS", "1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("0", "1e-3"), spawn("1", "2e-3"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(!a.status.success() && !b.status.success());
    let err = String::from_utf8_lossy(&a.stderr).to_string() + &String::from_utf8_lossy(&b.stderr);
    assert!(err.contains("different arguments") && err.contains("rank"), "{err}");
    assert!(!tmp.path().join("out/learned_embeds.safetensors").exists());
}

/// A 2-rank run stopped at a checkpoint and started again with `--resume_from_checkpoint latest`
/// (what torchrun's restarts do) ends with the very rows of the run that was not stopped; the
/// same checkpoint is refused by one process, naming both counts.
#[test]
fn a_checkpoint_of_two_ranks_resumes_exactly_with_two_and_is_refused_with_one() {
    if !common::c10d_available("train_distributed::a_checkpoint_of_two_ranks_resumes_exactly_with_two_and_is_refused_with_one".into()) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = repo().join("fixtures/train/seed/images");
    let train = |out: &str, steps: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
            .current_dir(repo())
            .args(["train", "--pretrained_model_name_or_path", "fixtures/tiny-sd", "--train_data_dir", data.to_str().unwrap()])
            .args(["--placeholder_token", "<t>", "--initializer_token", "toy", "--resolution", "64", "--repeats", "1", "--seed", "5"])
            .args(["--train_batch_size", "1", "--learning_rate", "5e-3", "--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "1"])
            .args(["--checkpointing_steps", "2", "--report_to", "none", "--max_train_steps", steps])
            .args(["--output_dir", tmp.path().join(out).to_str().unwrap()])
            .args(extra)
            .env("OMP_NUM_THREADS", "1")
            .output()
            .unwrap()
    };
    let ok = |o: std::process::Output| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ok(train("whole", "5", &["--num_processes", "2"]));
    ok(train("split", "3", &["--num_processes", "2"]));
    std::fs::remove_file(tmp.path().join("split/learned_embeds.safetensors")).unwrap();
    let one = train("split", "5", &["--resume_from_checkpoint", "latest"]);
    assert!(!one.status.success());
    let e = String::from_utf8_lossy(&one.stderr);
    assert!(e.contains("2 process(es)") && e.contains("this run has 1"), "{e}");
    ok(train("split", "5", &["--num_processes", "2", "--resume_from_checkpoint", "latest"]));
    let (a, b) = (embedding_rows(&tmp.path().join("whole/learned_embeds.safetensors")), embedding_rows(&tmp.path().join("split/learned_embeds.safetensors")));
    assert_eq!(a, b, "resumed from checkpoint-2 at 2 ranks: the same rows bit for bit");
}
