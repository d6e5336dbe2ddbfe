//! `textual-inversion generate`: text to image with any embeddings.
use crate::device::{parse_device, parse_kind};
use crate::image_out::{next_paths, save_png, to_pixels};
use crate::models::repo::{HubOptions, ModelRepo};
use crate::models::stable_diffusion::{self as sd, WeightOptions};
use crate::models::weights::Placement;
use crate::pipeline::{GenerateOptions, Models};
use crate::schedulers;
use crate::textual_inversion::{self, EmbeddingSpec};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Model folder or Hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5).
    #[arg(long = "pretrained_model_name_or_path", alias = "pretrained-model-name-or-path", alias = "model")]
    pub model: String,
    #[arg(long)]
    pub revision: Option<String>,
    /// Weight file variant, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors).
    #[arg(long)]
    pub variant: Option<String>,
    #[arg(long)]
    pub prompt: String,
    #[arg(long = "negative_prompt", alias = "negative-prompt")]
    pub negative_prompt: Option<String>,
    /// Where images go, as NNNN-SEED.png.
    #[arg(long = "output_dir", alias = "output-dir", default_value = ".")]
    pub output_dir: PathBuf,
    /// Embedding file (any format) or a folder with learned_embeds.*, optionally :TOKEN.
    /// Repeatable.
    #[arg(long = "embedding")]
    pub embeddings: Vec<EmbeddingSpec>,
    #[arg(long = "guidance_scale", alias = "guidance-scale", default_value_t = 7.5)]
    pub guidance_scale: f64,
    #[arg(long = "num_inference_steps", alias = "num-inference-steps", default_value_t = 50)]
    pub steps: usize,
    #[arg(long = "num_images_per_prompt", alias = "num-images-per-prompt", default_value_t = 1)]
    pub num_images: usize,
    /// Multiple of 8; default from the UNet config (512 for SD 1.5).
    #[arg(long)]
    pub height: Option<i64>,
    #[arg(long)]
    pub width: Option<i64>,
    /// Same seed, same picture (on CPU, the picture diffusers makes with
    /// generator=torch.Generator("cpu").manual_seed(SEED)). Random if not given.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Use the hidden state this many layers before the last.
    #[arg(long = "clip_skip", alias = "clip-skip")]
    pub clip_skip: Option<usize>,
    /// Scheduler instead of the model's own: pndm, ddim, euler, euler-ancestral, dpm++2m.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// cpu, cuda, cuda:N, mps.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Precision of the UNet and VAE (the text encoder stays fp32): fp32, fp16, bf16.
    #[arg(long, default_value = "fp32")]
    pub dtype: String,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let kind = parse_kind(&a.dtype)?;
    let seed = a.seed.unwrap_or_else(rand_seed);
    let started = std::time::Instant::now();
    let repo = ModelRepo::resolve(&a.model, a.revision.as_deref(), &HubOptions::from_env())?;
    sd::check_pipeline(&repo)?;
    let wopts = WeightOptions { variant: a.variant.clone(), use_safetensors: None };
    sd::check_variant(&repo, &wopts, &["text_encoder", "unet", "vae"])?;
    let mut tokenizer = sd::load_tokenizer(&repo)?;
    let mut text_encoder = sd::load_text_encoder(&repo, &wopts, Placement { device, kind: tch::Kind::Float })?;
    let tokens = textual_inversion::load(&a.embeddings, &mut tokenizer, &mut text_encoder)?;
    let unet = sd::load_unet(&repo, &wopts, Placement { device, kind })?;
    let vae = sd::load_vae(&repo, &wopts, Placement { device, kind })?;
    let mut scheduler = load_scheduler(&repo, a.scheduler.as_deref())?;
    let models = Models { tokenizer, text_encoder, unet, vae, device, kind, tokens };
    tracing::info!("loaded {} in {:.2} s", repo.describe(), started.elapsed().as_secs_f64());
    let generating = std::time::Instant::now();
    let opts = GenerateOptions {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        height: a.height,
        width: a.width,
        steps: a.steps,
        guidance_scale: a.guidance_scale,
        num_images_per_prompt: a.num_images,
        seed,
        clip_skip: a.clip_skip,
    };
    let bar = indicatif::ProgressBar::new(a.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {per_sec} ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let out = models.generate(scheduler.as_mut(), &opts, |i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    })?;
    bar.finish_and_clear();
    let secs = generating.elapsed().as_secs_f64();
    tracing::info!("generated {} image(s) in {secs:.2} s ({:.2} s per image)", a.num_images, secs / a.num_images as f64);
    let pixels = to_pixels(&out.decoded);
    let paths = next_paths(&a.output_dir, seed, a.num_images)?;
    let text = metadata(&a, seed, scheduler.kind().cli_name(), &models);
    for (i, path) in paths.iter().enumerate() {
        save_png(path, &pixels.get(i as i64), &text).with_context(|| format!("saving image {i}"))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// The model's scheduler (`scheduler/scheduler_config.json`), or another one built from the
/// same config, as diffusers' `OtherScheduler.from_config(pipe.scheduler.config)`.
pub fn load_scheduler(repo: &ModelRepo, name: Option<&str>) -> Result<Box<dyn schedulers::Scheduler>> {
    let path = repo.require("scheduler/scheduler_config.json")?;
    let cfg = schedulers::SchedulerConfig::read(&path)?;
    let kind = name.map(str::parse::<schedulers::SchedulerKind>).transpose()?;
    schedulers::load(&cfg, kind).with_context(|| format!("building the scheduler from {}", path.display()))
}

fn metadata(a: &GenerateArgs, seed: u64, scheduler: &str, models: &Models) -> Vec<(String, String)> {
    let mut t = vec![
        ("prompt".to_string(), a.prompt.clone()),
        ("negative_prompt".to_string(), a.negative_prompt.clone().unwrap_or_default()),
        ("seed".to_string(), seed.to_string()),
        ("steps".to_string(), a.steps.to_string()),
        ("guidance_scale".to_string(), a.guidance_scale.to_string()),
        ("scheduler".to_string(), scheduler.to_string()),
        ("model".to_string(), a.model.clone()),
        ("software".to_string(), format!("textual-inversion {}", env!("CARGO_PKG_VERSION"))),
    ];
    if !models.tokens.is_empty() {
        let e: Vec<String> = models.tokens.iter().map(|l| format!("{} ({} vectors) from {}", l.token, l.vectors, l.file.display())).collect();
        t.push(("embeddings".to_string(), e.join("; ")));
    }
    if let Some(c) = a.clip_skip {
        t.push(("clip_skip".to_string(), c.to_string()));
    }
    t
}

/// A seed from the clock, for runs without --seed (it is printed in the file name).
fn rand_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (nanos as u64 ^ (nanos >> 64) as u64) % 4_294_967_296
}
