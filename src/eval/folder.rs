//! An image folder for scoring: its entries in name order, each decoded with the training
//! dataset's decoder (upright 8-bit RGB, regular files only, Pillow's conversions); what is not
//! an image is skipped and named in one warning, as `--train_data_dir` does.
use crate::train::dataset::{load_rgb, skipped_summary, Skipped};
use anyhow::{bail, Context, Result};
use image::RgbImage;
use std::path::{Path, PathBuf};

/// Calls `each` with every usable image of `dir` (sorted by name), decoding one at a time so
/// that only the caller decides what is kept; returns the images' paths. `flag` names the
/// option the folder came from, for messages. Fails when the folder cannot be read or holds no
/// usable image.
pub fn for_each_image(dir: &Path, flag: &str, mut each: impl FnMut(&Path, RgbImage) -> Result<()>) -> Result<Vec<PathBuf>> {
    let read = std::fs::read_dir(dir).with_context(|| format!("cannot read {flag} {}", dir.display()))?;
    let mut entries: Vec<PathBuf> = read.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>().with_context(|| format!("listing {}", dir.display()))?;
    entries.sort();
    let (mut used, mut skipped) = (Vec::new(), Vec::new());
    for path in &entries {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let reason = if name.starts_with('.') {
            "hidden entry (name starts with '.')".to_string()
        } else if path.is_dir() {
            "a folder (sub-folders are not searched)".to_string()
        } else {
            match load_rgb(path) {
                Ok(loaded) => {
                    each(path, loaded.rgb).with_context(|| format!("scoring {}", path.display()))?;
                    used.push(path.clone());
                    continue;
                }
                Err(e) => format!("{e:#}"),
            }
        };
        skipped.push(Skipped { path: path.clone(), reason });
    }
    if used.is_empty() {
        let why = if entries.is_empty() { "the folder is empty".to_string() } else { skipped_summary(&skipped) };
        bail!("no usable image in {flag} {}: {why}", dir.display());
    }
    if !skipped.is_empty() {
        tracing::warn!("{}: skipped {} of {} entries:{}", dir.display(), skipped.len(), entries.len(), skipped_summary(&skipped));
    }
    Ok(used)
}
