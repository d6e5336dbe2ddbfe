//! Loading a Stable Diffusion model's parts from a [`ModelRepo`], each component from its
//! subfolder, as `textual_inversion.py` does (`subfolder="unet"`, ...). [`load`] is what
//! `generate` and `train` both call; the per-component loaders serve tests and tools.
//!
//! The family (SD 1.x/2.x, or SDXL with `tokenizer_2` and `text_encoder_2`, the second encoder
//! with its projection) comes from `model_index.json` ([`family`]).
use super::clip::ClipTextModel;
use super::component::{Component, MODEL_INDEX, TOKENIZER_FILES};
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

/// Which pipeline a model folder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `StableDiffusionPipeline`: one text encoder (SD 1.x, 2.x).
    StableDiffusion,
    /// `StableDiffusionXLPipeline`: two text encoders, pooled embedding and time ids.
    Xl {
        /// Negative prompts not given are zeros, not the encoded "" (SDXL base: true).
        force_zeros_for_empty_prompt: bool,
    },
}

impl Family {
    pub fn is_xl(self) -> bool {
        matches!(self, Family::Xl { .. })
    }

    /// The pipeline's model folders, in load (and save) order.
    pub fn components(self) -> &'static [Component] {
        if self.is_xl() {
            &[Component::TextEncoder, Component::TextEncoder2, Component::Unet, Component::Vae]
        } else {
            &[Component::TextEncoder, Component::Unet, Component::Vae]
        }
    }
}

/// The loaded parts of a model (nothing random: loading draws no random numbers).
pub struct Components {
    pub family: Family,
    pub tokenizer: super::tokenizer::ClipTokenizer,
    pub text_encoder: ClipTextModel,
    /// SDXL's second tokenizer and encoder (`CLIPTextModelWithProjection`).
    pub second: Option<(super::tokenizer::ClipTokenizer, ClipTextModel)>,
    /// The VAE's precision (fp32 where SDXL's force_upcast applies).
    pub vae_kind: Kind,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    /// `scheduler/scheduler_config.json`, which every scheduler is built from.
    pub scheduler_config: SchedulerConfig,
}

/// Loads every part of the model, as diffusers' pipeline would (variants by its rule), the
/// UNet and VAE in `o.precision` on `o.device`, the text encoder in fp32.
pub fn load(repo: &ModelRepo, options: &LoadOptions) -> Result<Components> {
    let family = family(repo)?;
    let weights = &options.weights;
    match repo.single_file() {
        Some(file) => {
            if weights.variant.is_some() {
                tracing::warn!("--variant does not apply to a single-file checkpoint ({}): ignored", file.path.display());
            }
            repo.check_pipeline(family.is_xl())?;
        }
        None => check_variant(repo, weights, family.components())?,
    }
    let parts = load_parts(repo, options, family);
    match repo.single_file() {
        Some(file) => parts.with_context(|| {
            format!(
                "reading {} as {} with the configs of {}: a model of other shapes needs --config DIR (a diffusers folder of its architecture)",
                file.path.display(),
                file.arch.name(),
                repo.files.describe()
            )
        }),
        None => parts,
    }
}

fn load_parts(repo: &ModelRepo, options: &LoadOptions, family: Family) -> Result<Components> {
    let weights = &options.weights;
    let tokenizer = match &options.tokenizer_dir {
        Some(dir) => super::tokenizer::ClipTokenizer::from_folder(dir)?,
        None => load_tokenizer(repo)?,
    };
    let text_weights = if options.text_encoder_variant { weights.clone() } else { WeightOptions { variant: None, ..weights.clone() } };
    let text_placement = Placement { device: options.device, kind: Kind::Float };
    let text_encoder = load_text_encoder_from(repo, Component::TextEncoder, &text_weights, text_placement)?;
    check_pair(&tokenizer, &text_encoder, Component::TextEncoder)?;
    let second = match family {
        Family::Xl { .. } => {
            let tokenizer_2 = load_tokenizer_from(repo, Component::Tokenizer2)?;
            let encoder_2 = load_text_encoder_from(repo, Component::TextEncoder2, &text_weights, text_placement)?;
            check_pair(&tokenizer_2, &encoder_2, Component::TextEncoder2)?;
            if !encoder_2.has_projection() {
                bail!("{}: text_encoder_2 has no text_projection (SDXL's second encoder is a CLIPTextModelWithProjection)", repo.describe());
            }
            Some((tokenizer_2, encoder_2))
        }
        Family::StableDiffusion => None,
    };
    let placement = Placement { device: options.device, kind: options.precision.kind() };
    let unet = load_unet(repo, weights, placement)?;
    let vae_cfg: VaeConfig = config::load(&repo.require(&Component::Vae.config_path())?)?;
    // SDXL's pipeline decodes in fp32 when the VAE says force_upcast and runs in fp16 (SDXL's
    // VAE overflows fp16); ours keeps that VAE in fp32 from the start.
    let vae_placement = if family.is_xl() && options.precision == Precision::Fp16 && vae_cfg.force_upcast.unwrap_or(false) {
        Placement { device: options.device, kind: Kind::Float }
    } else {
        placement
    };
    let vae = load_vae(repo, weights, vae_placement)?;
    let vae_kind = vae_placement.kind;
    if family.is_xl() != unet.takes_added_conditioning() {
        bail!(
            "{}: the pipeline is {family:?} but its UNet {} SDXL's added conditioning",
            repo.describe(),
            if unet.takes_added_conditioning() { "has" } else { "lacks" }
        );
    }
    check_widths(repo, &text_encoder, second.as_ref().map(|(_, e)| e), &unet, &vae)?;
    let scheduler_config = load_scheduler_config(repo)?;
    Ok(Components { family, tokenizer, text_encoder, second, unet, vae, vae_kind, scheduler_config })
}

/// A tokenizer and the text encoder it feeds must agree: every id it gives is a row of the
/// encoder's embedding and every sequence it pads to fits the encoder's positions; otherwise the
/// first prompt would index past a tensor inside libtorch.
fn check_pair(tokenizer: &super::tokenizer::ClipTokenizer, encoder: &ClipTextModel, folder: Component) -> Result<()> {
    let c = &encoder.config;
    if tokenizer.model_max_length() as i64 > c.max_position_embeddings {
        bail!(
            "{}: model_max_length {} is more than the {} positions of {folder} (its config's max_position_embeddings)",
            tokenizer.folder().join(Component::Tokenizer.config_file()).display(),
            tokenizer.model_max_length(),
            c.max_position_embeddings
        );
    }
    if let Some(id) = tokenizer.max_id().filter(|&id| i64::from(id) >= c.vocab_size) {
        bail!(
            "{}: the tokenizer has token id {id}, but {folder} has only {} rows (its config's vocab_size): they do not belong together",
            tokenizer.folder().display(),
            c.vocab_size
        );
    }
    Ok(())
}

/// The widths where one part feeds another must agree, or the first denoising step multiplies
/// mismatched matrices inside libtorch: the text encoders' hidden states (concatenated for
/// SDXL) are the UNet's cross-attention context, SDXL's pooled embedding and time ids its
/// added embedding's input, and the VAE's latents its input and output.
fn check_widths(repo: &ModelRepo, text: &ClipTextModel, text_2: Option<&ClipTextModel>, unet: &UNet2DConditionModel, vae: &AutoencoderKL) -> Result<()> {
    let u = &unet.config;
    let unet_config = || repo.get(&Component::Unet.config_path()).ok().flatten().map_or_else(|| Component::Unet.config_path(), |p| p.display().to_string());
    let context = text.hidden_size() + text_2.map_or(0, |t| t.hidden_size());
    let encoders = if text_2.is_some() { "text_encoder's and text_encoder_2's hidden_size together" } else { "text_encoder's hidden_size" };
    for i in 0..u.block_out_channels.len() {
        if let Some(d) = u.cross_attention_dim.get(i).filter(|&d| d != context) {
            bail!("{}: cross_attention_dim is {d} but the {encoders} is {context}", unet_config());
        }
    }
    if let (Some((time_dim, input)), Some(t2)) = (u.text_time(), text_2) {
        let want = t2.pooled_width() + 6 * time_dim;
        if input != want {
            bail!(
                "{}: projection_class_embeddings_input_dim is {input}, but text_encoder_2's pooled width {} plus 6 time ids of addition_time_embed_dim {time_dim} is {want}",
                unet_config(),
                t2.pooled_width()
            );
        }
    }
    let latent = vae.config.latent_channels;
    if u.in_channels != latent || u.out_channels != latent {
        bail!("{}: in_channels {} and out_channels {} must be the VAE's latent_channels ({latent})", unet_config(), u.in_channels, u.out_channels);
    }
    Ok(())
}

/// `scheduler/scheduler_config.json`, with the prediction type `--prediction_type` or a
/// single-file checkpoint sets.
pub fn load_scheduler_config(repo: &ModelRepo) -> Result<SchedulerConfig> {
    let path = repo.require(&Component::Scheduler.config_path())?;
    let mut config = SchedulerConfig::read(&path)?;
    if let Some(p) = &repo.prediction_type {
        config.prediction_type = Some(p.value.into());
    }
    Ok(config)
}

/// The pipeline `model_index.json` describes (a folder without one is SD 1.x/2.x); refuses
/// those this tool does not implement, naming them.
pub fn family(repo: &ModelRepo) -> Result<Family> {
    let Some(index) = repo.get(MODEL_INDEX)? else { return Ok(Family::StableDiffusion) };
    let v: serde_json::Value = config::read(&index)?;
    let class = v.get("_class_name").and_then(|c| c.as_str()).unwrap_or("");
    let has = |k: &str| v.get(k).and_then(|c| c.as_array()).is_some_and(|a| a.iter().any(|x| !x.is_null()));
    match (has(Component::TextEncoder.folder()), has(Component::TextEncoder2.folder())) {
        (true, true) => Ok(Family::Xl { force_zeros_for_empty_prompt: v.get("force_zeros_for_empty_prompt").and_then(|f| f.as_bool()).unwrap_or(true) }),
        (false, true) => {
            bail!("{}: {class} has only text_encoder_2 (an SDXL refiner): not supported; SD 1.x, 2.x and SDXL base pipelines are", repo.describe())
        }
        _ if class.contains("XL") => bail!("{}: {class} lists no text encoders", repo.describe()),
        _ => Ok(Family::StableDiffusion),
    }
}

/// diffusers' rule for `variant=` on a pipeline: a component without variant files loads its
/// plain files (with a warning); it is an error only when none of `components` has the variant.
/// Call once before loading the components.
pub fn check_variant(repo: &ModelRepo, opts: &WeightOptions, components: &[Component]) -> Result<()> {
    let Some(v) = opts.variant.as_deref() else { return Ok(()) };
    let mut any = false;
    for c in components {
        any |= repo.find_weight_files(c.folder(), Some(v), opts.use_safetensors)?.is_ok();
    }
    if !any {
        bail!(
            "You are trying to load the model files of the `variant={v}`, but no such modeling files are available: {} has no {v} weights for {}",
            repo.describe(),
            components.iter().map(|c| c.folder()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

fn load_weights(repo: &ModelRepo, component: Component, opts: &WeightOptions, placement: Placement) -> Result<Weights> {
    if let Some(weights) = repo.single_file_weights(component, placement)? {
        return Ok(weights);
    }
    let component = component.folder();
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
    let cfg_path = repo.require(&Component::Unet.config_path())?;
    let cfg: UNetConfig = config::load(&cfg_path)?;
    UNet2DConditionModel::load(&load_weights(repo, Component::Unet, opts, placement)?, &cfg)
        .with_context(|| format!("loading the UNet ({})", cfg_path.display()))
}

pub fn load_vae(repo: &ModelRepo, opts: &WeightOptions, placement: Placement) -> Result<AutoencoderKL> {
    let cfg_path = repo.require(&Component::Vae.config_path())?;
    let cfg: VaeConfig = config::load(&cfg_path)?;
    AutoencoderKL::load(&load_weights(repo, Component::Vae, opts, placement)?, &cfg).with_context(|| format!("loading the VAE ({})", cfg_path.display()))
}

pub fn load_text_encoder(repo: &ModelRepo, opts: &WeightOptions, placement: Placement) -> Result<ClipTextModel> {
    load_text_encoder_from(repo, Component::TextEncoder, opts, placement)
}

/// A CLIP text encoder from `folder` (`text_encoder`, or SDXL's `text_encoder_2`).
pub fn load_text_encoder_from(repo: &ModelRepo, folder: Component, opts: &WeightOptions, placement: Placement) -> Result<ClipTextModel> {
    let cfg_path = repo.require(&folder.config_path())?;
    let cfg: ClipTextConfig = config::load(&cfg_path)?;
    ClipTextModel::load(&load_weights(repo, folder, opts, placement)?, &cfg).with_context(|| format!("loading {folder} ({})", cfg_path.display()))
}

pub fn load_tokenizer(repo: &ModelRepo) -> Result<super::tokenizer::ClipTokenizer> {
    load_tokenizer_from(repo, Component::Tokenizer)
}

/// A CLIP tokenizer from `folder` (`tokenizer`, or SDXL's `tokenizer_2`).
pub fn load_tokenizer_from(repo: &ModelRepo, folder: Component) -> Result<super::tokenizer::ClipTokenizer> {
    // The folder must be local: fetch every tokenizer file the model has, then read the folder.
    let mut dir = None;
    for f in TOKENIZER_FILES {
        if let Some(p) = repo.get(&folder.file(f))? {
            dir = p.parent().map(Path::to_path_buf);
        }
    }
    let dir = dir.with_context(|| format!("{} has no {folder}/ folder", repo.describe()))?;
    super::tokenizer::ClipTokenizer::from_folder(&dir).with_context(|| format!("loading {folder}"))
}
