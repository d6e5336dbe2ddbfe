//! Loading a Stable Diffusion model's parts from a [`ModelRepo`], each component from its
//! subfolder, as `textual_inversion.py` does (`subfolder="unet"`, ...).
use super::clip::ClipTextModel;
use super::config::{self, ClipTextConfig, UNetConfig, VaeConfig};
use super::repo::ModelRepo;
use super::unet::UNet2DConditionModel;
use super::vae::AutoencoderKL;
use super::weights::{Placement, Weights};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Which files to use, as diffusers' `from_pretrained` arguments.
#[derive(Debug, Clone, Default)]
pub struct WeightOptions {
    /// `--variant` (e.g. `fp16`: `diffusion_pytorch_model.fp16.safetensors`).
    pub variant: Option<String>,
    /// None: safetensors when present, else `.bin`.
    pub use_safetensors: Option<bool>,
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

fn load_weights(repo: &ModelRepo, component: &str, opts: &WeightOptions, placement: Placement) -> Result<Weights> {
    let files = repo.weight_files(component, opts.variant.as_deref(), opts.use_safetensors)?;
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
