//! `generate` as a library call: what to load, what to make, where the images go. The CLI
//! builds a [`GenerateConfig`] from its flags once; nothing here sees clap.
use super::{GenerateOptions, Models};
use crate::image_out::{next_paths, save_png, to_pixels};
use crate::models::repo::ModelSource;
use crate::models::stable_diffusion::LoadOptions;
use crate::schedulers::{self, SchedulerKind};
use crate::text::learned_tokens::EmbeddingSpec;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Everything one `generate` run needs.
#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub model: ModelSource,
    pub load: LoadOptions,
    /// `--embedding FILE[:TOKEN]`, in order.
    pub embeddings: Vec<EmbeddingSpec>,
    /// `options.seed` is the seed used; [`crate::seed::clock_seed`] when the user gave none.
    pub options: GenerateOptions,
    /// Another scheduler built from the model's config; None: the model's own.
    pub scheduler: Option<SchedulerKind>,
    /// Where `NNNN-SEED.png` files go.
    pub output_dir: PathBuf,
    /// Where to write the run's timings and peak device memory as JSON (`--stats_json`).
    pub stats_json: Option<PathBuf>,
}

/// Loads the model and embeddings, generates, writes the images with their settings in PNG text
/// chunks; returns the paths written.
pub fn run(cfg: &GenerateConfig) -> Result<Vec<PathBuf>> {
    cfg.options.check()?;
    crate::device::ensure_available(cfg.load.device)?;
    let started = std::time::Instant::now();
    let repo = cfg.model.resolve()?;
    let mut models = Models::load(&repo, &cfg.load)?;
    models.load_embeddings(&cfg.embeddings)?;
    let mut scheduler = schedulers::load(&models.scheduler_config, cfg.scheduler).context("building the scheduler from scheduler/scheduler_config.json")?;
    tracing::info!("loaded {} in {:.2} s", repo.describe(), started.elapsed().as_secs_f64());
    let options = &cfg.options;
    let generating = std::time::Instant::now();
    let bar = crate::progress::bar(options.steps as u64, "{spinner} step {pos}/{len} [{bar:30}] {per_sec} ETA {eta}");
    let out = models.generate(scheduler.as_mut(), options, |i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    })?;
    bar.finish_and_clear();
    let secs = generating.elapsed().as_secs_f64();
    let n = options.num_images_per_prompt;
    tracing::info!("generated {n} image(s) in {secs:.2} s ({:.2} s per image)", secs / n as f64);
    let pixels = to_pixels(&out.decoded);
    let paths = next_paths(&cfg.output_dir, options.seed, n)?;
    let text = metadata(cfg, scheduler.kind().cli_name(), &models);
    for (i, path) in paths.iter().enumerate() {
        save_png(path, &pixels.get(i as i64), &text).with_context(|| format!("saving image {i}"))?;
    }
    if let Some(stats) = &cfg.stats_json {
        let json = serde_json::json!({
            "command": "generate",
            "device": crate::device::device_name(cfg.load.device),
            "precision": format!("{:?}", cfg.load.precision).to_lowercase(),
            "steps": options.steps,
            "images": n,
            "height": options.height.unwrap_or(models.default_size()),
            "width": options.width.unwrap_or(models.default_size()),
            "load_s": (generating - started).as_secs_f64(),
            "generate_s": secs,
            "s_per_image": secs / n as f64,
            "cuda_memory": crate::progress::cuda_memory(cfg.load.device),
        });
        crate::formats::atomic::write(stats, serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    Ok(paths)
}

/// The settings written into each PNG.
fn metadata(cfg: &GenerateConfig, scheduler: &str, models: &Models) -> Vec<(String, String)> {
    let o = &cfg.options;
    let mut text = vec![
        ("prompt".to_string(), o.prompt.clone()),
        ("negative_prompt".to_string(), o.negative_prompt.clone().unwrap_or_default()),
        ("seed".to_string(), o.seed.to_string()),
        ("steps".to_string(), o.steps.to_string()),
        ("guidance_scale".to_string(), models.guidance_scale(o).to_string()),
        ("scheduler".to_string(), scheduler.to_string()),
        ("model".to_string(), cfg.model.name_or_path.clone()),
        ("software".to_string(), format!("textual-inversion {}", env!("CARGO_PKG_VERSION"))),
    ];
    let tokens: Vec<String> =
        models.stacks().iter().flat_map(|s| s.tokens.iter()).map(|l| format!("{} ({} vectors) from {}", l.token, l.vectors, l.file.display())).collect();
    if !tokens.is_empty() {
        text.push(("embeddings".to_string(), tokens.join("; ")));
    }
    for (k, v) in [("prompt_2", &o.prompt_2), ("negative_prompt_2", &o.negative_prompt_2)] {
        if let Some(v) = v {
            text.push((k.to_string(), v.clone()));
        }
    }
    if let Some(c) = o.clip_skip {
        text.push(("clip_skip".to_string(), c.to_string()));
    }
    text
}
