//! The output folder, checked before any model loads: it must not be the model's own folder
//! when the run writes a whole pipeline there; it must be writable; what the run will replace is
//! said up front (the script replaces `learned_embeds.*` silently); and a link or special file
//! planted at a name the run writes is refused before a step is trained, never followed.
use super::config::{SaveFormat, TrainConfig};
use super::metrics::{LOSS_PNG, METRICS_FILE};
use super::on_update::trigger_name;
use crate::formats::atomic;
use crate::models::component::{Component, MODEL_INDEX};
use crate::models::repo::ModelRepo;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// `--enable_bucket`'s record of each image's bucket, in the output folder.
pub const BUCKETS_FILE: &str = "buckets.json";

/// Names listed before "and N more" in the warning about replaced files.
const LISTED: usize = 8;

fn same_folder(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// Which entries of the output folder the run writes (so an existing one is replaced).
struct Plan<'a> {
    cfg: &'a TrainConfig,
    xl: bool,
    trigger: String,
}

impl Plan<'_> {
    /// Whether `n` (a step number from a file name) is an update the run saves at.
    fn update(&self, n: &str, every: u64) -> bool {
        n.parse::<u64>().is_ok_and(|n| n > 0 && n % every == 0 && n <= self.cfg.optim.max_train_steps)
    }

    /// Whether the run writes the entry `name` of the output folder.
    fn writes(&self, name: &str) -> bool {
        let out = &self.cfg.output;
        let ext = out.embedding_format.extension();
        let encoders: &[&str] = if self.xl { &["learned_embeds", "learned_embeds_2"] } else { &["learned_embeds"] };
        for stem in encoders {
            if name == format!("{stem}.{ext}") {
                return true;
            }
            if let Some(n) = name.strip_prefix(&format!("{stem}-steps-")).and_then(|r| r.strip_suffix(&format!(".{ext}"))) {
                if self.update(n, out.save_steps) {
                    return true;
                }
            }
        }
        if let Some(n) = name.strip_prefix("checkpoint-") {
            if self.update(n, out.checkpointing_steps) {
                return true;
            }
        }
        if name == LOSS_PNG
            || name == super::run_record::RUN_RECORD
            || (name == "validation" && self.cfg.validation.is_some())
            || (name == BUCKETS_FILE && self.cfg.data.buckets.is_some())
        {
            return true;
        }
        // --push_to_hub's model card and the last validation images it links.
        if out.push.is_some()
            && (name == "README.md" || name.strip_prefix("image_").and_then(|r| r.strip_suffix(".png")).is_some_and(|n| n.parse::<usize>().is_ok()))
        {
            return true;
        }
        let t = &self.trigger;
        let extra = |f: SaveFormat| out.extra_formats.contains(&f);
        if self.xl {
            let step_files = out.extra_formats.iter().any(|f| *f != SaveFormat::Diffusers);
            if name == format!("{t}.safetensors") {
                return true;
            }
            if let Some(n) = name.strip_prefix(&format!("{t}-")).and_then(|r| r.strip_suffix(".safetensors")) {
                return step_files && self.update(n, out.save_steps);
            }
        } else {
            if extra(SaveFormat::A1111) {
                if name == format!("{t}.pt") {
                    return true;
                }
                if let Some(n) = name.strip_prefix(&format!("{t}-")).and_then(|r| r.strip_suffix(".pt")) {
                    return self.update(n, out.save_steps);
                }
            }
            if extra(SaveFormat::Kohya) {
                if name == format!("{t}.safetensors") {
                    return true;
                }
                if let Some(n) = name.strip_prefix(&format!("{t}-step")).and_then(|r| r.strip_suffix(".safetensors")) {
                    return self.update(n, out.save_steps);
                }
            }
        }
        out.save_as_full_pipeline && (name == MODEL_INDEX || Component::from_folder(name).is_some())
    }
}

/// Checks and creates the output folder before any model loads; says what the run replaces.
pub fn prepare(cfg: &TrainConfig, repo: &ModelRepo, xl: bool) -> Result<()> {
    let dir = &cfg.output.dir;
    if cfg.output.save_as_full_pipeline {
        if let Some(model) = repo.model_folder() {
            if same_folder(dir, model) {
                bail!(
                    "--output_dir {} is the model's own folder: --save_as_full_pipeline would replace the model's files with the trained pipeline's. Choose another --output_dir",
                    dir.display()
                );
            }
        }
    }
    atomic::ensure_dir(dir, Path::new("")).with_context(|| format!("cannot create --output_dir {}", dir.display()))?;
    // A fresh file of a random name (O_EXCL: a planted link is never opened), removed on drop.
    tempfile::Builder::new().prefix(".tmp-write-test-").tempfile_in(dir).with_context(|| format!("--output_dir {} is not writable", dir.display()))?;

    let plan = Plan { cfg, xl, trigger: trigger_name(&cfg.placeholder_token) };
    let mut replaced = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading --output_dir {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading --output_dir {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let appended = name == METRICS_FILE;
        if !appended && !plan.writes(&name) {
            continue;
        }
        let meta = std::fs::symlink_metadata(entry.path()).with_context(|| format!("reading {}", entry.path().display()))?;
        let t = meta.file_type();
        if t.is_symlink() || !(t.is_file() || t.is_dir()) {
            bail!(
                "{} is {} and this run writes there: nothing is written through links or into special files in the output folder. Remove it, or choose another --output_dir",
                entry.path().display(),
                if t.is_symlink() { "a symbolic link" } else { "not a regular file" }
            );
        }
        if !appended {
            replaced.push(name);
        }
    }
    if !replaced.is_empty() {
        replaced.sort();
        let more = replaced.len().saturating_sub(LISTED);
        let shown = replaced.iter().take(LISTED).cloned().collect::<Vec<_>>().join(", ");
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        tracing::warn!("--output_dir {} already holds files this run will replace: {shown}{more}", dir.display());
    }
    Ok(())
}
