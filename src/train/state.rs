//! `checkpoint-N/` folders: everything a resumed run needs to continue exactly where the
//! stopped one was — the placeholder rows, AdamW's moments and step, the LR schedule's counter,
//! the seed and the micro-steps done; the data order and every random draw are replayed from
//! those (see `script_rng`), so no generator state has to be stored.
//!
//! Files: `learned_embeds.safetensors` (the rows, loadable like any embedding file; SDXL's
//! second encoder's in `learned_embeds_2.safetensors`),
//! `training_state.safetensors` (optimizer and schedule tensors), `state.json` (position). A
//! folder is written under a temporary name and renamed, so a killed run never leaves half a
//! checkpoint, and the last complete one always loads.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Where the run is, saved in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Position {
    pub global_step: u64,
    /// Micro-steps done in total: resuming replays the data order and draws up to here.
    pub micro_step: u64,
    /// Accelerate's accumulation counter.
    pub accumulation: u64,
    pub seed: u64,
    pub placeholder_token: String,
    pub num_vectors: usize,
    /// Data-parallel processes the run had: the replayed data order and draws are each rank's
    /// share, so a checkpoint continues exactly only with as many (absent in older
    /// checkpoints: one).
    #[serde(default = "one_process")]
    pub world_size: usize,
    /// `--enable_bucket`'s settings ([`crate::train::dataset::BucketConfig::describe`]): the
    /// batches replayed depend on them (absent: the square path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<String>,
}

fn one_process() -> usize {
    1
}

pub struct Checkpoint {
    pub position: Position,
    /// `[n, D]` float32, one per text encoder (SDXL: two).
    pub rows: Vec<Tensor>,
    pub optimizer: Vec<(String, Tensor)>,
    pub scheduler: Vec<(String, Tensor)>,
    /// `--eval_loss_steps`'s `(update, eval_loss)` so far, in `eval_loss.json` (so that early
    /// stopping continues on resume); none without it.
    pub eval_history: Vec<(u64, f64)>,
}

/// `output_dir/checkpoint-N` folders, sorted by N. Names that do not parse are ignored (the
/// Python script crashes on them).
pub fn list(output_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(output_dir) else {
        return Ok(out);
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix("checkpoint-").and_then(|n| n.parse::<u64>().ok()) {
            if e.path().join("state.json").is_file() {
                out.push((n, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Resolves `--resume_from_checkpoint`: a folder name (only its last component is used, looked
/// up in `output_dir`, as the script does) or `latest` (None when there is none yet).
pub fn resolve(output_dir: &Path, which: &str) -> Result<Option<PathBuf>> {
    if which == "latest" {
        return Ok(list(output_dir)?.pop().map(|(_, p)| p));
    }
    let name = Path::new(which).file_name().with_context(|| format!("--resume_from_checkpoint {which}: not a folder name"))?;
    let path = output_dir.join(name);
    if !path.join("state.json").is_file() {
        bail!("--resume_from_checkpoint {which}: {} is not a checkpoint folder (no state.json)", path.display());
    }
    Ok(Some(path))
}

/// Deletes the oldest checkpoints so that, with the one about to be written, at most `limit`
/// remain (the script's `--checkpoints_total_limit` rule).
pub fn prune(output_dir: &Path, limit: usize) -> Result<()> {
    let existing = list(output_dir)?;
    if limit == 0 || existing.len() < limit {
        return Ok(());
    }
    for (_, path) in existing.iter().take(existing.len() - limit + 1) {
        tracing::info!("removing old checkpoint {}", path.display());
        std::fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// The file of text encoder `i`'s rows in a checkpoint (as the training script names them).
fn rows_file(i: usize) -> &'static str {
    if i == 0 {
        "learned_embeds.safetensors"
    } else {
        "learned_embeds_2.safetensors"
    }
}

pub fn save(dir: &Path, c: &Checkpoint) -> Result<()> {
    let parent = dir.parent().context("checkpoint folder has no parent")?;
    let name = dir.file_name().context("checkpoint folder has no name")?.to_string_lossy().to_string();
    let tmp = parent.join(format!(".{name}.tmp"));
    // A link or file planted at the checkpoint's name is refused, never followed.
    if std::fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir()) {
        bail!("{} exists and is not a folder (a link or a file): refusing to replace it with a checkpoint", dir.display());
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let _tracked = crate::formats::atomic::track(&tmp);
    // Whatever fails (a full disk, say), the half-written folder goes.
    let written = write_folder(&tmp, dir, c);
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

/// Writes the checkpoint into `tmp`, then renames it to `dir`.
fn write_folder(tmp: &Path, dir: &Path, c: &Checkpoint) -> Result<()> {
    std::fs::create_dir(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for (i, rows) in c.rows.iter().enumerate() {
        let rows = crate::tensors::from_tch(rows)?;
        crate::formats::safetensors_io::save_pt(&tmp.join(rows_file(i)), &[(c.position.placeholder_token.clone(), rows)])?;
    }
    let mut tensors = Vec::new();
    for (prefix, items) in [("optimizer.", &c.optimizer), ("scheduler.", &c.scheduler)] {
        for (k, t) in items.iter() {
            tensors.push((format!("{prefix}{k}"), crate::tensors::from_tch(t)?));
        }
    }
    crate::formats::safetensors_io::save(&tmp.join("training_state.safetensors"), &tensors, None)?;
    crate::formats::atomic::write(&tmp.join("state.json"), serde_json::to_string_pretty(&c.position)?.as_bytes())?;
    if !c.eval_history.is_empty() {
        crate::formats::atomic::write(&tmp.join(crate::train::eval_loss::HISTORY_FILE), &crate::train::eval_loss::history_json(&c.eval_history)?)?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    std::fs::rename(tmp, dir).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    Ok(())
}

pub fn load(dir: &Path) -> Result<Checkpoint> {
    let state = crate::formats::regular::read_to_string(&dir.join("state.json"), crate::formats::regular::CONFIG_MAX_BYTES)
        .with_context(|| format!("reading {}/state.json", dir.display()))?;
    let position: Position = serde_json::from_str(&state).with_context(|| format!("{}/state.json is not a checkpoint state", dir.display()))?;
    let mut rows = Vec::new();
    for i in 0..2 {
        let file = dir.join(rows_file(i));
        if i > 0 && !file.is_file() {
            break;
        }
        let emb = crate::formats::embeddings::read(&file)?;
        let part = emb.embeddings.first().and_then(|e| e.parts.first()).with_context(|| format!("{}: no rows in {}", dir.display(), rows_file(i)))?;
        let t = crate::tensors::to_tch(&part.tensor)?.to_kind(tch::Kind::Float);
        rows.push(t.reshape([part.vectors() as i64, part.width() as i64]));
    }
    let mut optimizer = Vec::new();
    let mut scheduler = Vec::new();
    let path = dir.join("training_state.safetensors");
    // The optimizer's moments of a few rows: kilobytes; a regular file only.
    let bytes = crate::formats::regular::read(&path, 256 << 20)?;
    for (k, t) in crate::formats::safetensors_io::read_all(&path.display().to_string(), &bytes)? {
        let t = crate::tensors::to_tch(&t)?;
        if let Some(k) = k.strip_prefix("optimizer.") {
            optimizer.push((k.to_string(), t));
        } else if let Some(k) = k.strip_prefix("scheduler.") {
            scheduler.push((k.to_string(), t));
        }
    }
    let eval_history = crate::train::eval_loss::read_history(dir)?;
    Ok(Checkpoint { position, rows, optimizer, scheduler, eval_history })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(optimizer: Vec<(String, Tensor)>) -> Checkpoint {
        let position =
            Position { global_step: 3, micro_step: 3, accumulation: 0, seed: 1, placeholder_token: "<t>".into(), num_vectors: 1, world_size: 1, buckets: None };
        Checkpoint {
            position,
            rows: vec![Tensor::zeros([1, 4], (tch::Kind::Float, tch::Device::Cpu))],
            optimizer,
            scheduler: Vec::new(),
            eval_history: Vec::new(),
        }
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_folder() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("checkpoint-3");
        // The rows are written first; a tensor that cannot be saved then fails the write.
        let bad = vec![("exp_avg".to_string(), Tensor::zeros([2], (tch::Kind::ComplexFloat, tch::Device::Cpu)))];
        let e = save(&target, &checkpoint(bad)).unwrap_err();
        assert!(format!("{e:#}").contains("cannot be saved"), "{e:#}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        // A good one lands.
        save(&target, &checkpoint(Vec::new())).unwrap();
        assert!(target.join("state.json").is_file() && !dir.path().join(".checkpoint-3.tmp").exists());
    }
}
