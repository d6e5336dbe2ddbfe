//! The embeddings a training run saved, with the step of each: `learned_embeds-steps-N.*`
//! (`--save_steps`), `checkpoint-N/learned_embeds.safetensors` (`--checkpointing_steps`) and the
//! final `learned_embeds.*`, whose step is the last one `metrics.jsonl` records. An SDXL run
//! saves each with a second file for its second text encoder (`learned_embeds_2-steps-N.*`,
//! `checkpoint-N/learned_embeds_2.safetensors`, `learned_embeds_2.*`): the two are paired.
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One saved embedding of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedEmbedding {
    /// Optimizer updates done when it was saved.
    pub step: u64,
    /// The rows of the (first) text encoder.
    pub file: PathBuf,
    /// SDXL: the rows of the second text encoder (OpenCLIP ViT-bigG), saved beside `file`.
    pub file_2: Option<PathBuf>,
}

/// The second encoder's file beside `file` (`learned_embeds` -> `learned_embeds_2` in its name).
fn second_of(file: &Path) -> Option<PathBuf> {
    let name = file.file_name()?.to_str()?;
    let rest = name.strip_prefix("learned_embeds")?;
    Some(file.with_file_name(format!("learned_embeds_2{rest}")))
}

/// The final file's names, in the order diffusers resolves a training folder.
const FINAL: [&str; 2] = ["learned_embeds.safetensors", "learned_embeds.bin"];

/// Every saved embedding of the run folder `run`, one per step, in step order. Where several
/// files hold one step, the final file is listed first, then `learned_embeds-steps-N`, then the
/// checkpoint (they hold the same rows). In an SDXL run (one where any saved file has its
/// `learned_embeds_2` pair) a file without its pair is skipped, with a warning. Fails when `run`
/// is no run folder or holds none.
pub fn discover(run: &Path) -> Result<Vec<SavedEmbedding>> {
    if !run.is_dir() {
        bail!("--run {} is not a folder: name the --output_dir of a `train` run", run.display());
    }
    let mut by_step: BTreeMap<u64, (u8, PathBuf)> = BTreeMap::new();
    let mut offer = |step: u64, rank: u8, file: PathBuf| {
        let keep = by_step.get(&step).is_none_or(|(r, _)| rank < *r);
        if keep {
            by_step.insert(step, (rank, file));
        }
    };
    let entries = std::fs::read_dir(run).with_context(|| format!("reading --run {}", run.display()))?;
    let mut names = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("reading --run {}", run.display()))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    for name in &names {
        let path = run.join(name);
        if let Some(n) = name.strip_prefix("learned_embeds-steps-").and_then(|r| r.strip_suffix(".safetensors").or_else(|| r.strip_suffix(".bin"))) {
            if let (Ok(step), true) = (n.parse::<u64>(), is_regular(&path)) {
                offer(step, if name.ends_with(".safetensors") { 1 } else { 2 }, path);
            }
        } else if let Some(n) = name.strip_prefix("checkpoint-") {
            let rows = path.join("learned_embeds.safetensors");
            if let (Ok(step), true) = (n.parse::<u64>(), is_regular(&rows)) {
                offer(step, 3, rows);
            }
        }
    }
    if let Some(last) = FINAL.iter().map(|n| run.join(n)).find(|p| is_regular(p)) {
        match last_logged_step(run)? {
            Some(step) => offer(step, 0, last),
            None => tracing::warn!("{}: skipped, its step is unknown ({} records none)", last.display(), crate::train::metrics::METRICS_FILE),
        }
    }
    let xl = by_step.values().any(|(_, f)| second_of(f).is_some_and(|p| is_regular(&p)));
    let mut paired = BTreeMap::new();
    for (step, (_, file)) in by_step {
        let file_2 = second_of(&file).filter(|p| xl && is_regular(p));
        if xl && file_2.is_none() {
            tracing::warn!("{}: skipped, an SDXL run's file without its learned_embeds_2 pair", file.display());
            continue;
        }
        paired.insert(step, SavedEmbedding { step, file, file_2 });
    }
    if paired.is_empty() {
        bail!(
            "--run {} holds no saved embedding: expected learned_embeds-steps-N.safetensors (--save_steps), checkpoint-N/ (--checkpointing_steps) or learned_embeds.safetensors with metrics.jsonl",
            run.display()
        );
    }
    Ok(paired.into_values().collect())
}

/// A regular file (not a link, folder or device): nothing else is read from a run folder.
fn is_regular(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// The largest `step` of the run's `metrics.jsonl` (None when there is no such file or record).
fn last_logged_step(run: &Path) -> Result<Option<u64>> {
    let path = run.join(crate::train::metrics::METRICS_FILE);
    if !is_regular(&path) {
        return Ok(None);
    }
    let text = crate::formats::regular::read_to_string(&path, METRICS_MAX_BYTES).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter_map(|v| v.get("step").and_then(|s| s.as_u64())).max())
}

/// About ten million records: far more than any run logs.
const METRICS_MAX_BYTES: u64 = 2 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn lists_every_step_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            "learned_embeds-steps-10.safetensors",
            "learned_embeds-steps-2.safetensors",
            "learned_embeds-steps-4.bin",
            "checkpoint-4/learned_embeds.safetensors",
        ] {
            touch(&d.join(f));
        }
        touch(&d.join("checkpoint-6/learned_embeds.safetensors"));
        touch(&d.join("learned_embeds.safetensors"));
        touch(&d.join("learned_embeds-steps-x.safetensors"));
        std::fs::write(d.join("metrics.jsonl"), "{\"step\":9}\n{\"step\":10}\nnot json\n").unwrap();
        let got: Vec<(u64, String)> = discover(d).unwrap().into_iter().map(|s| (s.step, s.file.strip_prefix(d).unwrap().display().to_string())).collect();
        let want = [
            (2, "learned_embeds-steps-2.safetensors"),
            (4, "learned_embeds-steps-4.bin"),
            (6, "checkpoint-6/learned_embeds.safetensors"),
            (10, "learned_embeds.safetensors"),
        ];
        assert_eq!(got, want.map(|(s, f)| (s, f.to_string())));
    }

    #[test]
    fn pairs_an_sdxl_runs_two_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            "learned_embeds-steps-2.safetensors",
            "learned_embeds_2-steps-2.safetensors",
            "learned_embeds-steps-4.safetensors",
            "checkpoint-3/learned_embeds.safetensors",
            "checkpoint-3/learned_embeds_2.safetensors",
            "learned_embeds.safetensors",
            "learned_embeds_2.safetensors",
        ] {
            touch(&d.join(f));
        }
        std::fs::write(d.join("metrics.jsonl"), "{\"step\":5}\n").unwrap();
        let rel = |p: &Path| p.strip_prefix(d).unwrap().display().to_string();
        let got: Vec<(u64, String, Option<String>)> = discover(d).unwrap().iter().map(|s| (s.step, rel(&s.file), s.file_2.as_deref().map(rel))).collect();
        let want = [
            (2, "learned_embeds-steps-2.safetensors", "learned_embeds_2-steps-2.safetensors"),
            (3, "checkpoint-3/learned_embeds.safetensors", "checkpoint-3/learned_embeds_2.safetensors"),
            (5, "learned_embeds.safetensors", "learned_embeds_2.safetensors"),
        ];
        // Step 4's file lacks its pair: skipped.
        assert_eq!(got, want.map(|(s, a, b)| (s, a.to_string(), Some(b.to_string()))));
    }

    #[test]
    fn refuses_what_is_no_run() {
        let dir = tempfile::tempdir().unwrap();
        let e = discover(&dir.path().join("absent")).unwrap_err().to_string();
        assert!(e.contains("is not a folder"), "{e}");
        let e = discover(dir.path()).unwrap_err().to_string();
        assert!(e.contains("holds no saved embedding"), "{e}");
        // The final file without a recorded step is not guessed at.
        touch(&dir.path().join("learned_embeds.safetensors"));
        assert!(discover(dir.path()).is_err());
    }
}
