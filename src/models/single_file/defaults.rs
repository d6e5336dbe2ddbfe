//! The configs a single-file checkpoint is read with when no `--config DIR` is given: those of
//! the diffusers repositories `from_single_file` itself falls back to for each model type
//! (assets/single-file/README.md says which), bundled in the binary so that no network is
//! needed, and written out once as a diffusers folder the usual loaders read.
use super::Arch;
use crate::models::component::{Component, MODEL_INDEX};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// The real CLIP BPE vocabulary (49,408 tokens), shared by every tokenizer of SD 1.x, 2.x and
/// SDXL; committed once, under the tiny fixture model that first needed it.
const VOCAB: &str = include_str!("../../../fixtures/tiny-sd/tokenizer/vocab.json");
const MERGES: &str = include_str!("../../../fixtures/tiny-sd/tokenizer/merges.txt");

macro_rules! files {
    ($dir:literal: $($f:literal),* $(,)?) => {
        &[$(($f, include_str!(concat!("../../../assets/single-file/", $dir, "/", $f)))),*]
    };
}

const V1: &[(&str, &str)] = files!("v1": "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
    "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json", "unet/config.json", "vae/config.json");
const V2: &[(&str, &str)] = files!("v2": "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
    "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json", "unet/config.json", "vae/config.json");
const XL_BASE: &[(&str, &str)] = files!("xl_base": "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
    "text_encoder_2/config.json", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json", "tokenizer_2/special_tokens_map.json", "unet/config.json", "vae/config.json");

/// The repository whose configs these are, for messages.
pub fn source(arch: Arch) -> &'static str {
    match arch {
        Arch::Sd1 => "stable-diffusion-v1-5/stable-diffusion-v1-5",
        Arch::Sd2 => "stabilityai/stable-diffusion-2-1",
        Arch::Xl => "stabilityai/stable-diffusion-xl-base-1.0",
    }
}

/// The folder holding `arch`'s bundled configs and tokenizers, written on first use under
/// `$XDG_CACHE_HOME/textual-inversion/single-file-configs/` (or `~/.cache/...`), atomically:
/// a half-written folder is never used.
pub fn folder(arch: Arch) -> Result<PathBuf> {
    folder_in(&cache_root(), arch)
}

/// [`folder`] under `cache` (the `textual-inversion` cache folder) instead of the user's.
pub fn folder_in(cache: &std::path::Path, arch: Arch) -> Result<PathBuf> {
    let (name, files) = match arch {
        Arch::Sd1 => ("v1", V1),
        Arch::Sd2 => ("v2", V2),
        Arch::Xl => ("xl_base", XL_BASE),
    };
    let root = cache.join("single-file-configs");
    // The version in the name: a new release with other configs never reads an old folder.
    let dir = root.join(format!("{name}-{}", env!("CARGO_PKG_VERSION")));
    if dir.join(MODEL_INDEX).is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(&root).with_context(|| format!("creating a folder in {}", root.display()))?;
    let _tracked = crate::formats::atomic::track(tmp.path());
    let mut all: Vec<(String, &str)> = files.iter().map(|(f, text)| (f.to_string(), *text)).collect();
    for tokenizer in [Component::Tokenizer, Component::Tokenizer2] {
        if files.iter().any(|(f, _)| f.starts_with(&tokenizer.file(""))) {
            all.push((tokenizer.file("vocab.json"), VOCAB));
            all.push((tokenizer.file("merges.txt"), MERGES));
        }
    }
    for (file, text) in all {
        let path = tmp.path().join(&file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another run may have written it meanwhile.
        if !dir.join(MODEL_INDEX).is_file() {
            return Err(e).with_context(|| format!("writing the bundled {} configs to {}", source(arch), dir.display()));
        }
    }
    Ok(dir)
}

fn cache_root() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache"))).unwrap_or_else(std::env::temp_dir).join("textual-inversion")
}
