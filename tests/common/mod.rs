//! What the integration tests share: where the repository and its fixtures are, the tiny
//! model (and variants of it), the published embedding files, and the reference Python.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `fixtures/`: small models and reference values made by PyTorch (see each folder's
/// `generated_with`).
pub fn fixtures() -> PathBuf {
    repo().join("fixtures")
}

/// The tiny random SD model (`fixtures/tiny-sd`).
pub fn tiny_sd() -> PathBuf {
    fixtures().join("tiny-sd")
}

/// The tiny model, or (for another prediction type) a copy in `tmp` whose scheduler predicts
/// that, with the other components linked.
pub fn tiny_sd_predicting(prediction: &str, tmp: &Path) -> PathBuf {
    let src = repo().join("fixtures/tiny-sd");
    if prediction == "epsilon" {
        return src;
    }
    let dst = tmp.join("tiny-sd-vpred");
    std::fs::create_dir_all(dst.join("scheduler")).unwrap();
    for part in ["model_index.json", "tokenizer", "text_encoder", "unet", "vae"] {
        std::os::unix::fs::symlink(src.join(part), dst.join(part)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("scheduler/scheduler_config.json")).unwrap()).unwrap();
    cfg["prediction_type"] = prediction.into();
    std::fs::write(dst.join("scheduler/scheduler_config.json"), cfg.to_string()).unwrap();
    dst
}

#[path = "../../formats/tests/support/realworld.rs"]
mod realworld;

/// See `formats/tests/support/realworld.rs`.
pub fn realworld_dir(test: &str) -> Option<PathBuf> {
    realworld::realworld_dir(&repo(), test)
}

#[path = "../../formats/tests/support/python.rs"]
mod python;
#[allow(unused_imports)]
pub use python::reference_python;
