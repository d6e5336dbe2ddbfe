//! `evaluate --run`: every saved embedding of a training run scored with CLIP, and the best one
//! picked (docs/evaluating.md, "Picking the best step"). The model is loaded once; each step's
//! rows replace the previous step's in the text encoder (an SDXL run's pair: in both), and the
//! same prompts and seeds are generated at every step, so the steps differ only in the embedding.
use super::best::{pick, BestBy, StepScores};
use super::plot::{eval_plot, rows_grid};
use super::prompts::{self, Property};
use super::run_folder::{discover, SavedEmbedding};
use super::scorer::{similarities, ClipScorer};
use crate::formats::atomic;
use crate::formats::embeddings::{self, Encoder, OutFormat};
use crate::image_out::{encode_png, to_pixels};
use crate::models::repo::ModelSource;
use crate::models::stable_diffusion::LoadOptions;
use crate::pipeline::{GenerateOptions, Models};
use crate::schedulers::{self, SchedulerKind};
use crate::text::learned_tokens::EmbeddingSpec;
use crate::train::metrics::Rgb8;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The evaluation's report, in `eval.json`.
pub const EVAL_JSON: &str = "eval.json";
/// Both scores against the step.
pub const EVAL_PNG: &str = "eval.png";
/// The best step's embedding, in the diffusers format.
pub const BEST_FILE: &str = "learned_embeds.best.safetensors";
/// SDXL: the best step's second text encoder's rows, as train names that file
/// (`learned_embeds_2`), beside [`BEST_FILE`].
pub const BEST_FILE_2: &str = "learned_embeds_2.best.safetensors";
/// Where each step's images go: `images/step-N/prompt-K/IIII-SEED.png`.
pub const IMAGES_DIR: &str = "images";

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
    /// `{}` for the token; None: [`prompts::reconstruction`].
    pub reconstruction_prompt: Option<String>,
    /// `{}` for the token; empty: [`prompts::editing`].
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

/// One prompt of the evaluation: what is generated and what its images are scored against.
#[derive(Debug, Clone, Serialize)]
pub struct EvalPrompt {
    pub prompt: String,
    /// The prompt without the learned token (editing prompts' text_similarity is against it).
    pub text: String,
    pub role: &'static str,
}

#[derive(Serialize)]
struct StepReport<'a> {
    #[serde(flatten)]
    scores: &'a StepScores,
    /// Each editing prompt's text_similarity, in the order of `prompts` (the reconstruction
    /// prompt's excluded); `text_similarity` is their mean.
    text_similarity_per_prompt: &'a [f64],
    grid: String,
}

#[derive(Serialize)]
struct Settings<'a> {
    run: String,
    pretrained_model_name_or_path: &'a str,
    /// `sd` or `sdxl`.
    family: &'static str,
    clip_model: &'a str,
    reference_dir: String,
    references: usize,
    token: &'a str,
    learnable_property: Property,
    prompts: &'a [EvalPrompt],
    num_images: usize,
    seeds: Vec<u64>,
    num_inference_steps: usize,
    guidance_scale: f64,
    height: i64,
    width: i64,
    scheduler: &'a str,
    best_by: BestBy,
    text_margin: f64,
    best_rule: String,
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

/// An u8 `[H, W, 3]` tensor as an image (what is saved is what is scored).
fn to_images(pixels: &Tensor) -> Result<Vec<(Rgb8, image::RgbImage)>> {
    Rgb8::from_tensor(pixels)?
        .into_iter()
        .map(|r| {
            let img = image::RgbImage::from_raw(r.width, r.height, r.data.clone()).context("pixel buffer of the wrong size")?;
            Ok((r, img))
        })
        .collect()
}

/// The rule `best_by` applies, in words (for eval.json and the log).
pub fn rule_text(by: BestBy, margin: f64) -> String {
    match by {
        BestBy::Rule => format!("highest image_similarity among steps whose text_similarity >= the first step's - {margin}"),
        BestBy::Image => "highest image_similarity".to_string(),
        BestBy::Text => "highest text_similarity".to_string(),
    }
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

    let reconstruction = cfg.reconstruction_prompt.clone().unwrap_or_else(|| prompts::reconstruction(cfg.property).to_string());
    let editing: Vec<String> =
        if cfg.editing_prompts.is_empty() { prompts::editing(cfg.property).iter().map(|s| s.to_string()).collect() } else { cfg.editing_prompts.clone() };
    let mut eval_prompts = Vec::new();
    for (template, role) in std::iter::once((&reconstruction, "reconstruction")).chain(editing.iter().map(|e| (e, "editing"))) {
        let prompt = prompts::with_token(template, &token)?;
        eval_prompts.push(EvalPrompt { text: prompts::without_token(&prompt, &token), prompt, role });
    }

    let started = std::time::Instant::now();
    let scorer = ClipScorer::load(&cfg.clip_model, cfg.clip_revision.as_deref(), cfg.load.device)?.with_batch_size(cfg.clip_batch_size)?;
    let references = scorer.folder_embeds(&cfg.reference_dir, "--reference_dir")?;
    // One text at a time, as the first form of `evaluate` embeds its --text: the same numbers
    // to the last bit (a batch of texts differs in float32 rounding).
    let each = eval_prompts.iter().map(|p| scorer.text_embeds(&[p.text.as_str()])).collect::<Result<Vec<_>>>()?;
    let text_embeds = Tensor::f_cat(&each, 0)?;
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

    let size = models.default_size();
    let (height, width) = (cfg.options.height.unwrap_or(size), cfg.options.width.unwrap_or(size));
    let seeds: Vec<u64> = (0..cfg.num_images as u64).map(|i| cfg.options.seed.wrapping_add(i)).collect();
    let scheduler_name = schedulers::load(&models.scheduler_config, cfg.scheduler)?.kind().cli_name().to_string();
    let settings = Settings {
        run: cfg.run.display().to_string(),
        pretrained_model_name_or_path: &cfg.model.name_or_path,
        family: if xl { "sdxl" } else { "sd" },
        clip_model: &cfg.clip_model,
        reference_dir: cfg.reference_dir.display().to_string(),
        references: references.files.len(),
        token: &token,
        learnable_property: cfg.property,
        prompts: &eval_prompts,
        num_images: cfg.num_images,
        seeds: seeds.clone(),
        num_inference_steps: cfg.options.steps,
        guidance_scale: models.guidance_scale(&cfg.options),
        height,
        width,
        scheduler: &scheduler_name,
        best_by: cfg.best_by,
        text_margin: cfg.text_margin,
        best_rule: rule_text(cfg.best_by, cfg.text_margin),
    };

    let total = (saved.len() * eval_prompts.len() * seeds.len()) as u64;
    let bar = crate::progress::bar(total, "{spinner} image {pos}/{len} [{bar:30}] {per_sec} ETA {eta}");
    let mut steps = Vec::new();
    let mut per_prompt = Vec::new();
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
        let (scores, text_each, grid) = score_step(cfg, &models, &scorer, &references.embeds, &text_embeds, &eval_prompts, &seeds, s, &bar)?;
        let scores = StepScores { step: s.step, file: s.file.display().to_string(), image_similarity: scores.0, text_similarity: scores.1 };
        tracing::info!(
            "step {}: image_similarity {:.6}, text_similarity {:.6} ({:.1} s)",
            s.step,
            scores.image_similarity,
            scores.text_similarity,
            step_started.elapsed().as_secs_f64()
        );
        steps.push(scores);
        per_prompt.push((text_each, grid));
        write_report(cfg, &settings, &steps, &per_prompt)?;
    }
    bar.finish_and_clear();
    let best = pick(&steps, cfg.best_by, cfg.text_margin);
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

/// Generates and scores one step: `(image_similarity, text_similarity)`, each editing prompt's
/// text similarity, and the grid's file name.
#[allow(clippy::too_many_arguments)]
fn score_step(
    cfg: &RunEvalConfig,
    models: &Models,
    scorer: &ClipScorer,
    references: &Tensor,
    text_embeds: &Tensor,
    eval_prompts: &[EvalPrompt],
    seeds: &[u64],
    saved: &SavedEmbedding,
    bar: &indicatif::ProgressBar,
) -> Result<((f64, f64), Vec<f64>, String)> {
    let step_dir = Path::new(IMAGES_DIR).join(format!("step-{}", saved.step));
    let mut grid_rows = Vec::new();
    let (mut image_similarity, mut text_each) = (f64::NAN, Vec::new());
    for (k, p) in eval_prompts.iter().enumerate() {
        let dir = atomic::ensure_dir(&cfg.output_dir, &step_dir.join(format!("prompt-{k}")))?;
        let mut row = Vec::new();
        let mut images = Vec::new();
        for (i, &seed) in seeds.iter().enumerate() {
            let mut options = cfg.options.clone();
            options.prompt = p.prompt.clone();
            options.seed = seed;
            options.num_images_per_prompt = 1;
            // A scheduler of its own per image: nothing of one image's run reaches the next.
            let mut scheduler = schedulers::load(&models.scheduler_config, cfg.scheduler)?;
            let out = models
                .generate(scheduler.as_mut(), &options, |_, _| {})
                .with_context(|| format!("step {}: generating {:?} seed {seed}", saved.step, p.prompt))?;
            for (rgb, img) in to_images(&to_pixels(&out.decoded))? {
                let text = [("prompt".to_string(), p.prompt.clone()), ("seed".to_string(), seed.to_string()), ("step".to_string(), saved.step.to_string())];
                atomic::write(&dir.join(format!("{i:04}-{seed}.png")), &encode_png(rgb.width, rgb.height, &rgb.data, &text)?)?;
                row.push(rgb);
                images.push(img);
            }
            bar.inc(1);
        }
        let embeds = scorer.image_embeds(&images)?;
        let s = similarities(&embeds, references, &text_embeds.get(k as i64).unsqueeze(0))?;
        if k == 0 {
            image_similarity = s.image_similarity;
        } else {
            text_each.push(s.text_similarity);
        }
        grid_rows.push(row);
    }
    // The mean over the editing prompts, each the mean over its images.
    let text_similarity = if text_each.is_empty() { f64::NAN } else { text_each.iter().sum::<f64>() / text_each.len() as f64 };
    let grid_name = format!("step-{}.png", saved.step);
    let grid = rows_grid(&grid_rows)?;
    atomic::write(&cfg.output_dir.join(&grid_name), &grid.to_png()?)?;
    Ok(((image_similarity, text_similarity), text_each, grid_name))
}

/// `eval.json` and `eval.png` for the steps so far.
fn write_report(cfg: &RunEvalConfig, settings: &Settings, steps: &[StepScores], per_prompt: &[(Vec<f64>, String)]) -> Result<()> {
    let best = pick(steps, cfg.best_by, cfg.text_margin);
    let reports: Vec<StepReport> =
        steps.iter().zip(per_prompt).map(|(s, (t, g))| StepReport { scores: s, text_similarity_per_prompt: t, grid: g.clone() }).collect();
    let json = serde_json::json!({
        "steps": reports,
        "best": best.map(|b| &reports[b]),
        "best_file": best.map(|_| BEST_FILE),
        "best_file_2": best.filter(|_| settings.family == "sdxl").map(|_| BEST_FILE_2),
        "settings": settings,
    });
    let mut bytes = serde_json::to_vec_pretty(&json)?;
    bytes.push(b'\n');
    atomic::write(&cfg.output_dir.join(EVAL_JSON), &bytes)?;
    atomic::write(&cfg.output_dir.join(EVAL_PNG), &eval_plot(steps, best, 640, 400).to_png()?)?;
    Ok(())
}
