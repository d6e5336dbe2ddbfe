//! Single-file checkpoints: an original (LDM/SGM layout) Stable Diffusion 1.x, 2.x or SDXL
//! model in one `.safetensors` or `.ckpt`, the form most fine-tuned models are published in.
//!
//! As diffusers' `from_single_file`: the model type is told from the keys, the configs and
//! tokenizers come from a diffusers folder (`--config DIR`) or from the defaults for that type
//! ([`defaults`]), and each component's tensors are mapped to diffusers' names ([`ldm_keys`])
//! straight from the mapped file, without a conversion pass. A `.ckpt` is read with the
//! checkpoint pickle mode: Lightning's objects in it stay inert, nothing is executed.
//!
//! This module reads the file alone: which config folder goes with it is the caller's
//! (`repo::ModelRepo`), and each component's config is handed in when its keys are mapped.
pub mod defaults;
pub mod ldm_keys;

use super::component::Component;
use super::config::{self, ClipTextConfig, UNetConfig, VaeConfig};
use super::prediction::{PredictionOverride, PredictionSource};
use super::weights::{ModelFile, Placement, View, Weights};
use crate::schedulers::PredictionType;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// What a component's layout gives for a stored key (its prefix removed) and shape: the
/// diffusers names it provides, each with the view it is read through.
type KeyMap<'a> = &'a dyn Fn(&str, &[i64]) -> Vec<(String, View)>;

/// The model types this tool reads, with diffusers' names for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `v1`: one CLIP ViT-L text encoder under `cond_stage_model.transformer.`.
    Sd1,
    /// `v2`: one OpenCLIP ViT-H text tower under `cond_stage_model.model.`.
    Sd2,
    /// `xl_base`: CLIP ViT-L and OpenCLIP bigG under `conditioner.embedders.{0,1}.`.
    Xl,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Sd1 => "SD 1.x (v1)",
            Arch::Sd2 => "SD 2.x (v2)",
            Arch::Xl => "SDXL base (xl_base)",
        }
    }
}

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const SD1_TEXT: &str = "cond_stage_model.transformer.";
const SD2_TEXT: &str = "cond_stage_model.model.";
const XL_TEXT: &str = "conditioner.embedders.0.transformer.";
const XL_TEXT_2: &str = "conditioner.embedders.1.model.";

/// An opened single-file checkpoint.
pub struct SingleFile {
    pub path: PathBuf,
    pub model_file: ModelFile,
    pub arch: Arch,
}

impl SingleFile {
    pub fn open(path: &Path) -> Result<Self> {
        let model_file = ModelFile::open(path)?;
        let arch = detect(&model_file)?;
        Ok(SingleFile { path: path.to_path_buf(), model_file, arch })
    }

    /// What the file says of its prediction type (metadata, a `.yaml` beside it, ...); asked only
    /// when `--prediction_type` does not decide, since it may read a `.yaml` beside the file.
    pub fn own_prediction_type(&self) -> Option<PredictionOverride> {
        file_prediction_type(&self.path, &self.model_file, self.arch)
    }

    /// One component's weights (`unet`, `vae`, `text_encoder`, `text_encoder_2`) under
    /// diffusers' names, laid out by that component's config (`config_json`).
    pub fn weights(&self, component: Component, config_json: &Path, placement: Placement) -> Result<Weights> {
        let ck = &self.model_file;
        let only = |prefix: &'static str, map: KeyMap<'_>| {
            ck.component(component.folder(), placement, |k, shape| k.strip_prefix(prefix).map(|r| map(r, shape)).unwrap_or_default())
        };
        let whole = |name: Option<String>| name.map(|n| vec![(n, View::Whole)]).unwrap_or_default();
        let weights = match component {
            Component::Unet => {
                // Validated before its layer counts size the key layout.
                let cfg: UNetConfig = config::load(config_json)?;
                let blocks = cfg.block_out_channels.len();
                let layers: Vec<usize> = (0..blocks).map(|b| cfg.layers_per_block.get(b).unwrap_or(2).max(0) as usize).collect();
                let layout = ldm_keys::UNetLayout::new(&layers);
                only(UNET, &|k, _| whole(layout.key(k)))?
            }
            Component::Vae => {
                let cfg: VaeConfig = config::load(config_json)?;
                let blocks = cfg.block_out_channels.len();
                only(VAE, &|k, _| whole(ldm_keys::vae_key(k, blocks)))?
            }
            Component::TextEncoder | Component::TextEncoder2 => {
                let cfg: ClipTextConfig = config::load(config_json)?;
                let layers = cfg.num_hidden_layers.max(0) as usize;
                let (prefix, open_clip) = match (component, self.arch) {
                    (Component::TextEncoder, Arch::Sd1) => (SD1_TEXT, false),
                    (Component::TextEncoder, Arch::Sd2) => (SD2_TEXT, true),
                    (Component::TextEncoder, Arch::Xl) => (XL_TEXT, false),
                    (Component::TextEncoder2, Arch::Xl) => (XL_TEXT_2, true),
                    _ => bail!("{}: a {} checkpoint has no {component}", self.path.display(), self.arch.name()),
                };
                let projection = component == Component::TextEncoder2;
                if open_clip {
                    only(prefix, &|k, shape| ldm_keys::open_clip_keys(k, shape, layers, projection))?
                } else {
                    only(prefix, &|k, _| whole(ldm_keys::clip_key(k)))?
                }
            }
            other => bail!("{}: no component {other} in a single-file checkpoint", self.path.display()),
        };
        Ok(weights)
    }
}

/// The model type, from the keys: SDXL's second (OpenCLIP) encoder, SD 2's OpenCLIP encoder or
/// its 1024-wide cross-attention (diffusers' test), else SD 1. Types this tool does not run
/// (inpainting, refiner, ControlNet, upscaler, a lone UNet or VAE) are refused by name.
pub fn detect(ck: &ModelFile) -> Result<Arch> {
    let ck = ck.tensors();
    let name = ck.name();
    let keys = ck.keys();
    let has_prefix = |p: &str| keys.iter().any(|k| k.starts_with(p));
    if !has_prefix(UNET) {
        let hint = if ck.contains("conv_in.weight") || ck.contains("encoder.conv_in.weight") || ck.contains("text_model.embeddings.token_embedding.weight") {
            " (its keys are one diffusers component's: pass the model's folder instead)"
        } else if has_prefix("control_model.") {
            " (a ControlNet)"
        } else {
            ""
        };
        bail!("{name} is not an original-layout Stable Diffusion checkpoint: it has no {UNET}* tensors{hint}");
    }
    if ck.shape_of(&format!("{UNET}input_blocks.0.0.weight")).is_some_and(|s| s.get(1).is_some_and(|&c| c != 4)) {
        bail!("{name}: its UNet does not take 4 latent channels (an inpainting or upscaling model): not supported");
    }
    if has_prefix("conditioner.embedders.0.model.") && !has_prefix(XL_TEXT) {
        bail!("{name} is an SDXL refiner (one OpenCLIP encoder): not supported; SDXL base checkpoints are");
    }
    let arch = if has_prefix(XL_TEXT_2) {
        Arch::Xl
    } else if has_prefix(SD2_TEXT)
        || ck.shape_of(&format!("{UNET}input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight")).is_some_and(|s| s.last() == Some(&1024))
    {
        Arch::Sd2
    } else {
        Arch::Sd1
    };
    let text = match arch {
        Arch::Sd1 => SD1_TEXT,
        Arch::Sd2 => SD2_TEXT,
        Arch::Xl => XL_TEXT,
    };
    if !has_prefix(text) {
        bail!("{name} looks like {} but has no text encoder ({text}*): checkpoints without one are not supported", arch.name());
    }
    if !has_prefix(VAE) {
        bail!("{name} has no VAE ({VAE}*): not supported");
    }
    Ok(arch)
}

/// What the file itself says of its prediction type, strongest first: the model-spec metadata
/// (`modelspec.prediction_type`), a `parameterization` line in a `.yaml` of the same name beside
/// it (the web UI's convention), kohya's `v_pred` marker key, and for SD 2 diffusers' rule
/// (`global_step` 875000, the 512-px base model, is epsilon). None: the config's.
fn file_prediction_type(path: &Path, ck: &ModelFile, arch: Arch) -> Option<PredictionOverride> {
    let says = |value, source| Some(PredictionOverride { value, source });
    if let Some(p) = ck.metadata.get("modelspec.prediction_type") {
        let p = match p.as_str() {
            "v" | "v_prediction" => PredictionType::VPrediction,
            "epsilon" | "eps" => PredictionType::Epsilon,
            other => {
                tracing::warn!("{}: modelspec.prediction_type {other:?} is not one this tool knows; using the config's", path.display());
                return None;
            }
        };
        return says(p, PredictionSource::Modelspec);
    }
    let yaml = path.with_extension("yaml");
    // Read only when it is a regular file (a FIFO or device there would never end), and small.
    let text = yaml.exists().then(|| crate::formats::regular::read_to_string(&yaml, crate::formats::regular::CONFIG_MAX_BYTES));
    if let Some(Err(e)) = &text {
        tracing::warn!("{e}: not read (the prediction type comes from elsewhere)");
    }
    if let Some(Ok(text)) = text {
        let v = text.lines().any(|l| {
            let l = l.trim();
            l.strip_prefix("parameterization:").is_some_and(|v| matches!(v.trim().trim_matches(['"', '\'']), "v"))
        });
        return says(if v { PredictionType::VPrediction } else { PredictionType::Epsilon }, PredictionSource::Yaml(yaml));
    }
    if ck.tensors().contains("v_pred") {
        return says(PredictionType::VPrediction, PredictionSource::VPredKey);
    }
    if arch == Arch::Sd2 && ck.global_step == Some(875_000) {
        return says(PredictionType::Epsilon, PredictionSource::Sd2BaseStep);
    }
    None
}
