//! `train --seed S` on CPU against diffusers' unpatched textual_inversion.py with the same seed,
//! over the matrix of fixtures/train/seed (scripts/fixtures/make_fixtures_seed.py): the same images in the
//! same (directory) order, captions, flips, posterior draws, noise and timesteps, hence the same
//! loss at every micro-step and the same embeddings.
//!
//! Each run trains on a folder whose directory order differs from its sorted order (checked
//! here): the folder is built so that `readdir` lists the images in the order the script's
//! `os.listdir` listed them when the fixture was made, whatever this file system's order is
//! (names are created first, the order they come back in is read, and only then are the images
//! written into them, which does not reorder a directory).
//!
//! Tolerances: every micro-step's loss within 1e-5 relative of the script's logged loss, its
//! global step and LR equal; the final `learned_embeds.safetensors` and every
//! `learned_embeds-steps-N` within 1e-4 max-abs. Most configurations train on PNGs; the `jpeg-*`
//! ones on JPEGs near the training resolution (baseline, progressive, 4:4:4, greyscale, CMYK),
//! which the port decodes exactly as Pillow does, so they hold to the same tolerances.
//! Observed values: `-- --nocapture`.
mod common;
use common::{compare_with_script, folder_listing_from, repo, script_args, Logged};
use std::process::Command;

#[derive(serde::Deserialize)]
struct Run {
    cli_args: Vec<String>,
    vpred: bool,
    /// The image set under fixtures/train/seed ("images", the PNGs, when absent).
    #[serde(default)]
    images: Option<String>,
    listing: Vec<String>,
    listing_names: Vec<String>,
    sorted_names: Vec<String>,
    micro_steps: Vec<Logged>,
    saved: Vec<String>,
}

fn parity(name: &str) {
    let fixture = repo().join("fixtures/train/seed").join(name);
    let run: Run = serde_json::from_str(&std::fs::read_to_string(fixture.join("run.json")).unwrap()).unwrap();
    assert_ne!(run.listing_names, run.sorted_names, "{name}: the script's folder was listed in sorted order");
    let tmp = tempfile::tempdir().unwrap();
    let data = folder_listing_from(tmp.path(), &run.listing, run.images.as_deref().unwrap_or("images"));
    let model = common::tiny_sd_predicting(if run.vpred { "v_prediction" } else { "epsilon" }, tmp.path());
    let out = tmp.path().join("out");
    let args = script_args(&run.cli_args, &model, tmp.path(), &data);
    let o = Command::new(env!("CARGO_BIN_EXE_textual-inversion")).current_dir(repo()).arg("train").args(&args).args(["--report_to", "none"]).output().unwrap();
    assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));

    let seen = compare_with_script(name, &out, &run.micro_steps, &fixture, &run.saved);
    eprintln!("{name}: {seen}");
}

#[test]
fn seed_parity_obj_1v_b1_constant() {
    parity("obj-1v-b1-constant");
}

#[test]
fn seed_parity_style_3v_b2_g2_linear() {
    parity("style-3v-b2-g2-linear");
}

#[test]
fn seed_parity_obj_2v_b3_short_cosine() {
    parity("obj-2v-b3-short-cosine");
}

#[test]
fn seed_parity_vpred_style_4v_b3_g2_restarts() {
    parity("vpred-style-4v-b3-g2-restarts");
}

#[test]
fn seed_parity_style_1v_b1_g2_polynomial() {
    parity("style-1v-b1-g2-polynomial");
}

#[test]
fn seed_parity_obj_2v_b2_repeats_cwarmup() {
    parity("obj-2v-b2-repeats-cwarmup");
}

#[test]
fn seed_parity_vpred_obj_1v_b1_linear() {
    parity("vpred-obj-1v-b1-linear");
}

#[test]
fn seed_parity_obj_3v_b2_g2_epochs() {
    parity("obj-3v-b2-g2-epochs");
}

#[test]
fn seed_parity_vpred_style_2v_b3_g2_poly() {
    parity("vpred-style-2v-b3-g2-poly");
}

#[test]
fn seed_parity_obj_2v_b2_g2_validation() {
    parity("obj-2v-b2-g2-validation");
}

#[test]
fn seed_parity_jpeg_obj_2v_b2_g2_cosine() {
    parity("jpeg-obj-2v-b2-g2-cosine");
}

#[test]
fn seed_parity_jpeg_vpred_style_1v_b1_crop() {
    parity("jpeg-vpred-style-1v-b1-crop");
}

/// The fixture matrix covers what it claims (so that a regenerated fixture cannot silently
/// drop a configuration).
#[test]
fn seed_matrix_covers_the_configurations() {
    let dir = repo().join("fixtures/train/seed");
    let mut seen: std::collections::BTreeSet<String> = Default::default();
    let mut runs = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.join("run.json").is_file() {
            continue;
        }
        runs += 1;
        let run: Run = serde_json::from_str(&std::fs::read_to_string(path.join("run.json")).unwrap()).unwrap();
        let arg = |flag: &str| run.cli_args.iter().position(|a| a == flag).map(|i| run.cli_args[i + 1].clone());
        let has = |flag: &str| run.cli_args.iter().any(|a| a == flag);
        let nv: u32 = arg("--num_vectors").unwrap().parse().unwrap();
        seen.insert(if nv == 1 {
            "1 vector".into()
        } else if nv >= 3 {
            "3+ vectors".into()
        } else {
            "2 vectors".into()
        });
        seen.insert(arg("--learnable_property").unwrap());
        seen.insert(format!("batch {}", arg("--train_batch_size").unwrap()));
        seen.insert(format!("accumulation {}", arg("--gradient_accumulation_steps").unwrap()));
        seen.insert(arg("--lr_scheduler").unwrap());
        seen.insert(if run.vpred { "v_prediction".into() } else { "epsilon".into() });
        for flag in ["--center_crop", "--scale_lr"] {
            if has(flag) {
                seen.insert(flag.into());
            }
        }
        if arg("--repeats").unwrap() != "1" {
            seen.insert("--repeats".into());
        }
        if arg("--lr_warmup_steps").unwrap() != "0" {
            seen.insert("warmup".into());
        }
        if arg("--learning_rate").unwrap() == "5e-3" {
            seen.insert("lr 5e-3".into());
        }
        if has("--validation_prompt") {
            seen.insert("validation".into());
        }
        let epochs = run.micro_steps.len() as f64 * arg("--train_batch_size").unwrap().parse::<f64>().unwrap()
            / (run.listing.len() as f64 * arg("--repeats").unwrap().parse::<f64>().unwrap());
        if epochs > 1.0 {
            seen.insert("several epochs".into());
        }
        let ext = if run.images.as_deref() == Some("images-jpeg") { ".jpg" } else { ".png" };
        assert!(run.listing.iter().all(|i| i.ends_with(ext)), "{ext} images only");
        if ext == ".jpg" {
            seen.insert("JPEG folder".into());
        }
    }
    assert!(runs >= 8, "{runs} configurations");
    for want in [
        "1 vector",
        "3+ vectors",
        "object",
        "style",
        "batch 1",
        "batch 2",
        "batch 3",
        "accumulation 1",
        "accumulation 2",
        "constant",
        "constant_with_warmup",
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "epsilon",
        "v_prediction",
        "--center_crop",
        "--scale_lr",
        "--repeats",
        "warmup",
        "lr 5e-3",
        "several epochs",
        "validation",
        "JPEG folder",
    ] {
        assert!(seen.contains(want), "no configuration with {want}: {seen:?}");
    }
}
