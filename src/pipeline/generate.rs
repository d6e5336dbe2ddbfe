//! `generate` as a library call: what to load, what to make, where the images go. The CLI
//! builds a [`GenerateConfig`] from its flags once; nothing here sees clap.
use super::prompt_file::{self, Job};
use super::{GenerateOptions, Models};
use crate::distributed::ProcessGroup;
use crate::image_out::{next_paths, save_png, to_pixels};
use crate::models::repo::ModelSource;
use crate::models::stable_diffusion::LoadOptions;
use crate::schedulers::{self, SchedulerKind};
use crate::text::learned_tokens::EmbeddingSpec;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

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
    let text = metadata(cfg, options, scheduler.kind().cli_name(), &models);
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
            "height": out.decoded.size()[2],
            "width": out.decoded.size()[3],
            "load_s": (generating - started).as_secs_f64(),
            "generate_s": secs,
            "s_per_image": secs / n as f64,
            "cuda_memory": crate::progress::cuda_memory(cfg.load.device),
        });
        crate::formats::atomic::write(stats, serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    Ok(paths)
}

/// Runs the jobs of a prompt file that fall to this rank of `group` (job k on rank k mod
/// world size, see [`super::prompt_file`]), each as one `generate` of its own
/// options: images named by job and image index, never by rank, so that any world size writes
/// the same files. After every rank is done, rank 0 writes `index.jsonl` (one line per image of
/// every job) and `--stats_json` (the wall time from loading to the last rank's end, rank 0's
/// device memory). `cfg.options` is ignored (each job carries its own). Returns the paths this
/// rank wrote.
pub fn run_jobs(cfg: &GenerateConfig, jobs: &[Job], group: &ProcessGroup) -> Result<Vec<PathBuf>> {
    crate::device::ensure_available(cfg.load.device)?;
    let (rank, world_size) = (group.rank(), group.world_size());
    let mine: Vec<&Job> = prompt_file::share(jobs, rank, world_size).collect();
    crate::formats::atomic::ensure_dir(&cfg.output_dir, Path::new("."))?;
    let mut written = Vec::new();
    let mut default_size = None;
    // With --init_image every job has the image's size: job 0's (rank 0 runs it).
    let mut init_size = None;
    let started = std::time::Instant::now();
    if !mine.is_empty() {
        let repo = cfg.model.resolve()?;
        let mut models = Models::load(&repo, &cfg.load)?;
        models.load_embeddings(&cfg.embeddings)?;
        tracing::info!("loaded {} in {:.2} s", repo.describe(), started.elapsed().as_secs_f64());
        default_size = Some(models.default_size());
        let total: usize = mine.iter().map(|j| j.options.steps).sum();
        let bar = crate::progress::bar(total as u64, "{spinner} step {pos}/{len} [{bar:30}] {per_sec} ETA {eta}");
        let mut done = 0;
        for job in &mine {
            // A scheduler of its own for each job: nothing of one job's run reaches the next.
            let mut scheduler =
                schedulers::load(&models.scheduler_config, cfg.scheduler).context("building the scheduler from scheduler/scheduler_config.json")?;
            let out = models
                .generate(scheduler.as_mut(), &job.options, |i, _| bar.set_position((done + i) as u64))
                .with_context(|| format!("job {} (line {} of the prompt file)", job.index, job.line))?;
            done += job.options.steps;
            if job.options.init_image.is_some() {
                init_size = Some((out.decoded.size()[2], out.decoded.size()[3]));
            }
            let pixels = to_pixels(&out.decoded);
            let text = metadata(cfg, &job.options, scheduler.kind().cli_name(), &models);
            for (i, name) in job.image_names().iter().enumerate() {
                let path = cfg.output_dir.join(name);
                save_png(&path, &pixels.get(i as i64), &text).with_context(|| format!("saving image {i} of job {}", job.index))?;
                written.push(path);
            }
        }
        bar.finish_and_clear();
        tracing::info!("rank {rank} of {world_size}: {} job(s) in {:.2} s", mine.len(), started.elapsed().as_secs_f64());
    }
    // The index lists every rank's images: only once they are all written.
    group.barrier().context("waiting for the other ranks to finish their jobs")?;
    if rank == 0 {
        let size = default_size.context("rank 0 always runs job 0")?;
        let (default_h, default_w) = init_size.unwrap_or((size, size));
        let mut lines = String::new();
        for job in jobs {
            let o = &job.options;
            for (i, name) in job.image_names().iter().enumerate() {
                let entry = serde_json::json!({
                    "file": name, "job": job.index, "image": i, "line": job.line,
                    "prompt": o.prompt, "negative_prompt": o.negative_prompt, "seed": o.seed,
                    "width": o.width.unwrap_or(default_w), "height": o.height.unwrap_or(default_h), "steps": o.steps,
                });
                lines.push_str(&serde_json::to_string(&entry)?);
                lines.push('\n');
            }
        }
        crate::formats::atomic::write(&cfg.output_dir.join(INDEX_FILE), lines.as_bytes())?;
        if let Some(stats) = &cfg.stats_json {
            let secs = started.elapsed().as_secs_f64();
            let json = serde_json::json!({
                "command": "generate",
                "device": crate::device::device_name(cfg.load.device),
                "precision": format!("{:?}", cfg.load.precision).to_lowercase(),
                "world_size": world_size,
                "jobs": jobs.len(),
                "images": jobs.iter().map(|j| j.options.num_images_per_prompt).sum::<usize>(),
                "rank0_jobs": mine.len(),
                "wall_s": secs,
                "cuda_memory": crate::progress::cuda_memory(cfg.load.device),
            });
            crate::formats::atomic::write(stats, serde_json::to_string_pretty(&json)?.as_bytes())?;
        }
    }
    Ok(written)
}

/// The file a prompt-file run lists its images in, one JSON object per line.
pub const INDEX_FILE: &str = "index.jsonl";

/// The settings written into each PNG.
fn metadata(cfg: &GenerateConfig, o: &GenerateOptions, scheduler: &str, models: &Models) -> Vec<(String, String)> {
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
    if let Some(path) = &o.init_image {
        text.push(("init_image".to_string(), path.display().to_string()));
        text.push(("strength".to_string(), models.strength(o).to_string()));
    }
    text
}
