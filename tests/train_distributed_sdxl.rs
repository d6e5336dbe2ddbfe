//! `train --num_processes 2 --seed S` on an SDXL model (CPU, Gloo) against diffusers' unpatched
//! textual_inversion_sdxl.py run data-parallel by accelerate (`ACCELERATE_USE_CPU=true torchrun
//! --standalone --nproc_per_node 2`) with the same seed, over fixtures/train/dist-sdxl
//! (scripts/fixtures/make_fixtures_dist_sdxl.py): the same shards, draws, averaged gradients of
//! both encoders' rows and LR schedule as tests/train_distributed.rs checks for SD 1, hence rank
//! 0's logged loss at every micro-step and both encoders' saved embeddings
//! (learned_embeds*.safetensors and learned_embeds_2*.safetensors).
//!
//! Tolerances: every micro-step's loss within 1e-5 relative of the script's rank-0 loss, its
//! global step and LR equal, every saved embedding within 1e-4 max-abs (measured:
//! `-- --nocapture`).
//!
//! Also: the SD 1 engine launched as users launch it, by torchrun itself (`--no-python`, its
//! agent store), against the same fixture tests/train_distributed.rs uses.
mod common;
use common::{compare_with_script, fixtures, folder_listing, repo, script_args, Logged};
use std::path::{Path, PathBuf};
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

fn read_run(fixture: &Path) -> Run {
    serde_json::from_str(&std::fs::read_to_string(fixture.join("run.json")).unwrap()).unwrap()
}

/// fixtures/tiny-sdxl, or a copy in `tmp` whose scheduler predicts v (the other parts linked), as
/// make_fixtures_sdxl_train.py's `vpred_model` builds it.
fn sdxl_model(vpred: bool, tmp: &Path) -> PathBuf {
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

fn parity(name: &str) {
    if !common::c10d_available("train_distributed_sdxl::".to_string() + name) {
        return;
    }
    let fixture = repo().join("fixtures/train/dist-sdxl").join(name);
    let run = read_run(&fixture);
    assert!(run.saved.iter().any(|f| f == "learned_embeds_2.safetensors"), "{name}: no second encoder's file in the fixture");
    let tmp = tempfile::tempdir().unwrap();
    let data = folder_listing(tmp.path(), &run.listing);
    let model = sdxl_model(run.vpred, tmp.path());
    let args: Vec<String> =
        script_args(&run.cli_args, &model, tmp.path(), &data).into_iter().map(|a| a.replace("<tmp>/tiny-sdxl-vpred", model.to_str().unwrap())).collect();
    let out = tmp.path().join("out");
    let seen = common::train_ranks_like_the_script(name, &args, run.world_size, &out, &run.ranks[0], &fixture, &run.saved);
    eprintln!("{name}: {seen}");
}

#[test]
fn dist_sdxl_parity_obj_1v_b1_constant_w2() {
    parity("obj-1v-b1-constant-w2");
}

#[test]
fn dist_sdxl_parity_style_3v_b3_g2_linear_scale_w2() {
    parity("style-3v-b3-g2-linear-scale-w2");
}

#[test]
fn dist_sdxl_parity_vpred_obj_2v_b2_cosine_w2() {
    parity("vpred-obj-2v-b2-cosine-w2");
}

/// Every fixture folder has its test above.
#[test]
fn dist_sdxl_matrix_is_tested() {
    common::assert_every_run_tested("tests/train_distributed_sdxl.rs", "fixtures/train/dist-sdxl", 2);
}

/// Launched as users launch it: torchrun starts both ranks of the binary itself (`--no-python`,
/// its agent store: TORCHELASTIC_USE_AGENT_STORE), with the script's own arguments and no
/// --num_processes; rank 0's log and files match the script's as under `--num_processes 2`.
#[test]
fn torchrun_launched_training_matches_the_script() {
    let test = "train_distributed_sdxl::torchrun_launched_training_matches_the_script";
    if !common::c10d_available(test.into()) {
        return;
    }
    let Some(python) = common::reference_python(&["torch"], test) else { return };
    let name = "obj-1v-b1-constant-w2";
    let fixture = repo().join("fixtures/train/dist").join(name);
    let run = read_run(&fixture);
    let tmp = tempfile::tempdir().unwrap();
    let data = folder_listing(tmp.path(), &run.listing);
    let model = common::tiny_sd_predicting(if run.vpred { "v_prediction" } else { "epsilon" }, tmp.path());
    let args = script_args(&run.cli_args, &model, tmp.path(), &data);
    let out = tmp.path().join("out");
    let o = Command::new(&python)
        .current_dir(repo())
        .args(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", &run.world_size.to_string(), "--no-python"])
        .arg(env!("CARGO_BIN_EXE_textual-inversion"))
        .arg("train")
        .args(&args)
        .args(["--report_to", "none"])
        .env("OMP_NUM_THREADS", "1")
        .env("TI_DIST_TIMEOUT_S", "120")
        .output()
        .unwrap();
    assert!(o.status.success(), "torchrun: {}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let seen = compare_with_script(name, &out, &run.ranks[0], &fixture, &run.saved);
    eprintln!("{name} under torchrun: {seen}");
}
