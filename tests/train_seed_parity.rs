//! `train --seed S` on CPU against the unpatched Python script with the same seed: the same
//! images, captions, flips, posterior draws, noise and timesteps, so the same embedding.
//!
//! The references are the `learned_embeds.safetensors` files diffusers' own textual_inversion.py
//! wrote (fixtures/train, scripts/make_fixtures_train.py; the script's image list sorted, as we
//! sort it). Tolerance 2e-4 max-abs: the JPEG images decode slightly differently here than with
//! Pillow's libjpeg-turbo (up to 4/255 per pixel); observed 1.2e-4 (single), 2.5e-5 (multi),
//! 9.1e-5 (vpred).
mod common;
use common::repo;
use std::path::Path;
use std::process::Command;

fn rows(path: &Path) -> Vec<f32> {
    let f = textual_inversion::formats::embeddings::read(path).unwrap();
    f.embeddings[0].parts[0].tensor.to_f32_vec()
}

fn parity(run: &str) {
    let dir = tempfile::tempdir().unwrap();
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("fixtures/train").join(run).join("record.json")).unwrap()).unwrap();
    // The v_prediction run used a copy of the tiny model whose scheduler predicts v.
    let vpred = common::tiny_sd_predicting("v_prediction", dir.path());
    let out = dir.path().join("out");
    let args: Vec<String> = record["cli_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("<tmp>/out", out.to_str().unwrap())
                .replace("<tmp>/tiny-sd-vpred", vpred.to_str().unwrap())
        })
        .collect();
    let o = Command::new(env!("CARGO_BIN_EXE_textual-inversion")).current_dir(repo()).arg("train").args(&args).args(["--report_to", "none"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (ours, theirs) = (rows(&out.join("learned_embeds.safetensors")), rows(&repo().join("fixtures/train").join(run).join("learned_embeds.safetensors")));
    let err = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{run}: max abs difference from the Python script's embedding {err:e}");
    assert!(err < 2e-4, "{run}: {err}");
    // And the intermediate file of the first --save_steps.
    let step = record["cli_args"].as_array().unwrap().windows(2).find(|w| w[0] == "--save_steps").map(|w| w[1].as_str().unwrap().to_string()).unwrap();
    let name = format!("learned_embeds-steps-{step}.safetensors");
    let (a, b) = (rows(&out.join(&name)), rows(&repo().join("fixtures/train").join(run).join(&name)));
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 2e-4), "{run}: {name}");
}

#[test]
fn seed_parity_two_vectors_batch_two_accumulation_two() {
    parity("multi");
}

#[test]
fn seed_parity_one_vector_warmup_center_crop() {
    parity("single");
}

#[test]
fn seed_parity_v_prediction_style() {
    parity("vpred");
}
