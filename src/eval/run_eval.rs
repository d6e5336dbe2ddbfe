//! `evaluate --run`: every saved embedding of a training run scored with CLIP, and the best one
//! picked (docs/evaluating.md, "Picking the best step"). The model is loaded once; each step's
//! rows replace the previous step's in the text encoder (an SDXL run's pair: in both), and the
//! same prompts and seeds are generated at every step, so the steps differ only in the embedding.
use super::best::{BestBy, StepScores};
use super::prompts::Property;
pub use super::report::{rule_text, BEST_FILE, BEST_FILE_2, EVAL_JSON, EVAL_PNG};
use super::report::{Report, Settings};
use super::run_folder::discover;
use super::scorer::ClipScorer;
use super::step_eval::{eval_prompts, StepEval};
pub use super::step_eval::{EvalPrompt, IMAGES_DIR};
use crate::distributed::{ProcessGroup, World};
use crate::formats::atomic;
use crate::formats::embeddings::{self, Encoder, OutFormat};
use crate::models::repo::ModelSource;
use crate::models::stable_diffusion::LoadOptions;
use crate::pipeline::{GenerateOptions, Models};
use crate::schedulers::SchedulerKind;
use crate::text::learned_tokens::EmbeddingSpec;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Everything one `evaluate --run` needs.
#[derive(Debug, Clone)]
pub struct RunEvalConfig {
    pub run: PathBuf,
    pub model: ModelSource,
    pub load: LoadOptions,
    pub clip_model: String,
    pub clip_revision: Option<String>,
    pub clip_batch_size: usize,
    /// The images the reconstruction prompt's images are compared with (the training images).
    pub reference_dir: PathBuf,
    /// The learned token; None: the one stored in the first file.
    pub token: Option<String>,
    pub property: Property,
    /// `{}` for the token; None: [`super::prompts::reconstruction`].
    pub reconstruction_prompt: Option<String>,
    /// `{}` for the token; empty: [`super::prompts::editing`].
    pub editing_prompts: Vec<String>,
    /// Images per prompt, with seeds `seed..seed+n` (one image per seed).
    pub num_images: usize,
    /// `prompt`, `seed` and `num_images_per_prompt` are set per image.
    pub options: GenerateOptions,
    pub scheduler: Option<SchedulerKind>,
    pub output_dir: PathBuf,
    pub best_by: BestBy,
    pub text_margin: f64,
}

/// What the evaluation found.
#[derive(Debug, Clone)]
pub struct RunEval {
    pub steps: Vec<StepScores>,
    pub best: Option<usize>,
    /// An SDXL run: the best step is written as [`BEST_FILE`] and [`BEST_FILE_2`].
    pub xl: bool,
}

/// The rows `[n, D]` (f32) and the embedding of a one-token, one-encoder file.
fn read_rows(file: &Path) -> Result<(Tensor, embeddings::EmbeddingFile)> {
    let ef = embeddings::read(file)?;
    if ef.embeddings.len() != 1 {
        bail!("{}: holds {} embeddings; a training run saves one", file.display(), ef.embeddings.len());
    }
    let part = ef.embeddings[0].part(Encoder::TextEncoder).with_context(|| format!("{}: no single-encoder rows (an SDXL file?)", file.display()))?;
    let rows = crate::tensors::to_tch(&part.tensor)?.to_kind(tch::Kind::Float).reshape([part.vectors() as i64, part.width() as i64]);
    Ok((rows, ef))
}

fn same_folder(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// Runs the evaluation; writes `eval.json` and `eval.png` after every step (a run stopped
/// midway keeps what it measured), the step's grid and images, and at the end the best file.
pub fn run(cfg: &RunEvalConfig) -> Result<RunEval> {
    let saved = discover(&cfg.run)?;
    if !cfg.text_margin.is_finite() || cfg.text_margin < 0.0 {
        bail!("--text_margin {} must be a finite number >= 0", cfg.text_margin);
    }
    if cfg.num_images == 0 {
        bail!("--num_images must be at least 1");
    }
    let mut check = cfg.options.clone();
    check.num_images_per_prompt = 1;
    check.check()?;
    if !cfg.reference_dir.is_dir() {
        bail!("--reference_dir {} is not a folder", cfg.reference_dir.display());
    }
    if same_folder(&cfg.output_dir, &cfg.run) {
        bail!("--output_dir {} is the run folder: the evaluation writes beside the run, never among its files. Choose another", cfg.output_dir.display());
    }
    crate::device::ensure_available(cfg.load.device)?;
    atomic::ensure_dir(&cfg.output_dir, Path::new("")).with_context(|| format!("cannot create --output_dir {}", cfg.output_dir.display()))?;
    let (first_rows, first_file) = read_rows(&saved[0].file)?;
    let token = match &cfg.token {
        Some(t) => t.clone(),
        None => first_file.trigger(0, &embeddings::file_stem(&saved[0].file)),
    };
    tracing::info!("{}: {} saved embedding(s) of {token}, steps {:?}", cfg.run.display(), saved.len(), saved.iter().map(|s| s.step).collect::<Vec<_>>());

    let prompts = eval_prompts(cfg.property, cfg.reconstruction_prompt.as_deref(), &cfg.editing_prompts, &token)?;

    let started = std::time::Instant::now();
    let scorer = ClipScorer::load(&cfg.clip_model, cfg.clip_revision.as_deref(), cfg.load.device)?.with_batch_size(cfg.clip_batch_size)?;
    let references = scorer.folder_embeds(&cfg.reference_dir, "--reference_dir")?;
    let seeds: Vec<u64> = (0..cfg.num_images as u64).map(|i| cfg.options.seed.wrapping_add(i)).collect();
    let eval = StepEval::new(&scorer, references.embeds, prompts, seeds, cfg.options.clone(), cfg.scheduler, cfg.output_dir.clone())?;
    let repo = cfg.model.resolve()?;
    let mut models = Models::load(&repo, &cfg.load)?;
    let xl = saved[0].file_2.is_some();
    if models.family.is_xl() != xl {
        bail!(
            "--run {} is {} run but {} is {} model: evaluate with the model the run was trained on",
            cfg.run.display(),
            if xl { "an SDXL" } else { "an SD 1.x/2.x" },
            repo.describe(),
            if models.family.is_xl() { "an SDXL" } else { "an SD 1.x/2.x" }
        );
    }
    let spec = |path: &Path, encoder| EmbeddingSpec { path: path.to_path_buf(), token: Some(token.clone()), encoder };
    match &saved[0].file_2 {
        // Each of an SDXL run's files is one encoder's rows: named for its encoder.
        Some(file_2) => models.load_embeddings(&[spec(&saved[0].file, Some(Encoder::ClipL)), spec(file_2, Some(Encoder::ClipG))])?,
        None => models.load_embeddings(&[spec(&saved[0].file, None)])?,
    }
    let shape = first_rows.size();
    let shape_2 = saved[0].file_2.as_deref().map(read_rows).transpose()?.map(|(r, _)| r.size());
    tracing::info!("loaded {} and {} in {:.2} s", repo.describe(), cfg.clip_model, started.elapsed().as_secs_f64());

    let settings = Settings {
        run: cfg.run.display().to_string(),
        pretrained_model_name_or_path: cfg.model.name_or_path.clone(),
        family: if xl { "sdxl" } else { "sd" },
        clip_model: cfg.clip_model.clone(),
        reference_dir: cfg.reference_dir.display().to_string(),
        references: references.files.len(),
        token: token.clone(),
        learnable_property: cfg.property,
        generation: eval.generation(&models)?,
        best_by: cfg.best_by,
        text_margin: cfg.text_margin,
        best_rule: rule_text(cfg.best_by, cfg.text_margin),
    };
    let mut report = Report::new(cfg.output_dir.clone(), settings);

    let bar = crate::progress::bar((saved.len() * eval.num_images()) as u64, "{spinner} image {pos}/{len} [{bar:30}] {per_sec} ETA {eta}");
    let single = ProcessGroup::init(&World::single())?;
    for (i, s) in saved.iter().enumerate() {
        let step_started = std::time::Instant::now();
        let (rows, _) = read_rows(&s.file)?;
        if rows.size() != shape {
            bail!("{}: rows of shape {:?}, but {} has {shape:?}: not the same run", s.file.display(), rows.size(), saved[0].file.display());
        }
        let rows_2 = s.file_2.as_deref().map(read_rows).transpose()?.map(|(r, _)| r);
        if rows_2.as_ref().map(Tensor::size) != shape_2 {
            bail!("{}: its second encoder's rows do not match {}'s: not the same run", s.file.display(), saved[0].file.display());
        }
        if i > 0 {
            models.text.encoder.set_new_rows(rows)?;
            if let (Some(rows_2), Some(text_2)) = (rows_2, models.text_2.as_mut()) {
                text_2.encoder.set_new_rows(rows_2)?;
            }
        }
        let result = eval.score(&models, &scorer, s.step, &single, &|| bar.inc(1))?.context("one process scores every image")?;
        let scores = report.push(s.step, s.file.display().to_string(), result)?;
        tracing::info!(
            "step {}: image_similarity {:.6}, text_similarity {:.6} ({:.1} s)",
            s.step,
            scores.image_similarity,
            scores.text_similarity,
            step_started.elapsed().as_secs_f64()
        );
    }
    bar.finish_and_clear();
    let best = report.best();
    let steps: Vec<StepScores> = report.steps().to_vec();
    match best {
        Some(b) => {
            let best_files = std::iter::once((&saved[b].file, BEST_FILE)).chain(saved[b].file_2.as_ref().map(|f| (f, BEST_FILE_2)));
            for (file, name) in best_files {
                let (_, ef) = read_rows(file)?;
                let out = cfg.output_dir.join(name);
                embeddings::write(&out, OutFormat::Diffusers, &token, &ef.embeddings[0], None, None).with_context(|| format!("writing {}", out.display()))?;
            }
            let out = cfg.output_dir.join(BEST_FILE);
            tracing::info!("best: step {} ({}), written to {}", steps[b].step, rule_text(cfg.best_by, cfg.text_margin), out.display());
        }
        None => tracing::warn!("no step has finite scores: no best step, {BEST_FILE} not written"),
    }
    Ok(RunEval { steps, best, xl })
}
