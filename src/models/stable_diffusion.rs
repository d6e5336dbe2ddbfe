//! Loading a Stable Diffusion model's parts from a [`ModelRepo`], each component from its
//! subfolder, as `textual_inversion.py` does (`subfolder="unet"`, ...). [`load`] is what
//! `generate` and `train` both call; the per-component loaders serve tests and tools.
//!
//! SDXL adds `tokenizer_2` and `text_encoder_2` to [`Components`] (loaded the same way, the
//! second encoder with its projection); [`check_pipeline`] is where SDXL is refused until then.
use super::clip::ClipTextModel;
use super::config::{self, ClipTextConfig, UNetConfig, VaeConfig};
use super::repo::ModelRepo;
use super::unet::UNet2DConditionModel;
use super::vae::AutoencoderKL;
use super::weights::{Placement, Weights};
use crate::device::Precision;
use crate::schedulers::SchedulerConfig;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// Which files to use, as diffusers' `from_pretrained` arguments.
#[derive(Debug, Clone, Default)]
pub struct WeightOptions {
    /// `--variant` (e.g. `fp16`: `diffusion_pytorch_model.fp16.safetensors`).
    pub variant: Option<String>,
    /// None: safetensors when present, else `.bin`.
    pub use_safetensors: Option<bool>,
}

/// How `generate` and `train` load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub weights: WeightOptions,
    /// Whether the text encoder loads `weights.variant` too: diffusers' pipelines do; the
    /// training script loads its plain weights (it trains in fp32).
    pub text_encoder_variant: bool,
    /// `--tokenizer_name`: a tokenizer folder instead of the model's `tokenizer/`.
    pub tokenizer_dir: Option<PathBuf>,
    pub device: Device,
    /// The UNet's and VAE's precision; the text encoder is always fp32.
    pub precision: Precision,
}

/// The loaded parts of a model (nothing random: loading draws no random numbers).
pub struct Components {
    pub tokenizer: super::tokenizer::ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    /// `scheduler/scheduler_config.json`, which every scheduler is built from.
    pub scheduler_config: SchedulerConfig,
}

/// Loads every part of the model, as diffusers' pipeline would (variants by its rule), the
/// UNet and VAE in `o.precision` on `o.device`, the text encoder in fp32.
pub fn load(repo: &ModelRepo, options: &LoadOptions) -> Result<Components> {
    check_pipeline(repo)?;
    let weights = &options.weights;
    check_variant(repo, weights, &["text_encoder", "unet", "vae"])?;
    let tokenizer = match &options.tokenizer_dir {
        Some(dir) => super::tokenizer::ClipTokenizer::from_folder(dir)?,
        None => load_tokenizer(repo)?,
    };
    let text_weights = if options.text_encoder_variant { weights.clone() } else { WeightOptions { variant: None, ..weights.clone() } };
    let text_encoder = load_text_encoder(repo, &text_weights, Placement { device: options.device, kind: Kind::Float })?;
    let placement = Placement { device: options.device, kind: options.precision.kind() };
    let unet = load_unet(repo, weights, placement)?;
    let vae = load_vae(repo, weights, placement)?;
    let scheduler_config = load_scheduler_config(repo)?;
    Ok(Components { tokenizer, text_encoder, unet, vae, scheduler_config })
}

/// `scheduler/scheduler_config.json`.
pub fn load_scheduler_config(repo: &ModelRepo) -> Result<SchedulerConfig> {
    let path = repo.require("scheduler/scheduler_config.json")?;
    SchedulerConfig::read(&path)
}

/// Refuses pipelines whose parts this tool does not implement, naming them.
pub fn check_pipeline(repo: &ModelRepo) -> Result<()> {
    let Some(index) = repo.get("model_index.json")? else { return Ok(()) };
    let v: serde_json::Value = config::read(&index)?;
    let class = v.get("_class_name").and_then(|c| c.as_str()).unwrap_or("");
    if class.contains("XL") || v.get("text_encoder_2").is_some() {
        bail!("{}: {class} (SDXL) is not supported yet; SD 1.x and 2.x pipelines are", repo.describe());
    }
    Ok(())
}

/// diffusers' rule for `variant=` on a pipeline: a component without variant files loads its
/// plain files (with a warning); it is an error only when none of `components` has the variant.
/// Call once before loading the components.
pub fn check_variant(repo: &ModelRepo, opts: &WeightOptions, components: &[&str]) -> Result<()> {
    let Some(v) = opts.variant.as_deref() else { return Ok(()) };
    let mut any = false;
    for c in components {
        any |= repo.find_weight_files(c, Some(v), opts.use_safetensors)?.is_ok();
    }
    if !any {
        bail!(
            "You are trying to load the model files of the `variant={v}`, but no such modeling files are available: {} has no {v} weights for {}",
            repo.describe(),
            components.join(", ")
        );
    }
    Ok(())
}

fn load_weights(repo: &ModelRepo, component: &str, opts: &WeightOptions, placement: Placement) -> Result<Weights> {
    let mut variant = opts.variant.as_deref();
    if let Some(v) = variant {
        if let Err(tried) = repo.find_weight_files(component, Some(v), opts.use_safetensors)? {
            tracing::warn!("{component} has no {v} variant ({}): loading its plain weights, as diffusers does", tried.join(", "));
            variant = None;
        }
    }
    let files = repo.weight_files(component, variant, opts.use_safetensors)?;
    tracing::debug!("{component}: {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
    Weights::open(&files, placement)
}

pub fn load_unet(repo: &ModelRepo, opts: &WeightOptions, placement: Placement) -> Result<UNet2DConditionModel> {
    let cfg_path = repo.require("unet/config.json")?;
    let cfg: UNetConfig = config::read(&cfg_path)?;
    cfg.validate(&cfg_path)?;
    UNet2DConditionModel::load(&load_weights(repo, "unet", opts, placement)?, &cfg).context("loading the UNet")
}

pub fn load_vae(repo: &ModelRepo, opts: &WeightOptions, placement: Placement) -> Result<AutoencoderKL> {
    let cfg_path = repo.require("vae/config.json")?;
    let cfg: VaeConfig = config::read(&cfg_path)?;
    cfg.validate(&cfg_path)?;
    AutoencoderKL::load(&load_weights(repo, "vae", opts, placement)?, &cfg).context("loading the VAE")
}

pub fn load_text_encoder(repo: &ModelRepo, opts: &WeightOptions, placement: Placement) -> Result<ClipTextModel> {
    let cfg_path = repo.require("text_encoder/config.json")?;
    let cfg: ClipTextConfig = config::read(&cfg_path)?;
    cfg.validate(&cfg_path)?;
    ClipTextModel::load(&load_weights(repo, "text_encoder", opts, placement)?, &cfg).context("loading the text encoder")
}

pub fn load_tokenizer(repo: &ModelRepo) -> Result<super::tokenizer::ClipTokenizer> {
    // The folder must be local: fetch every tokenizer file the model has, then read the folder.
    let mut dir = None;
    for f in ["tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.json", "added_tokens.json"] {
        if let Some(p) = repo.get(&format!("tokenizer/{f}"))? {
            dir = p.parent().map(Path::to_path_buf);
        }
    }
    let dir = dir.with_context(|| format!("{} has no tokenizer/ folder", repo.describe()))?;
    super::tokenizer::ClipTokenizer::from_folder(&dir).context("loading the tokenizer")
}
