//! transformers' `CLIPModel` `config.json`: the text tower's and the vision tower's configs
//! nested under `text_config` and `vision_config`, and the shared `projection_dim`.
use super::{in_range, names, number, ClipTextConfig, HiddenAct, Named, Validate, EPS, MAX_LAYERS, MAX_WIDTH};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// Largest `image_size` in pixels (real CLIP models: 224 to 448).
pub const MAX_IMAGE_SIZE: i64 = 1 << 13;

/// `vision_config` of a `CLIPModel` (transformers' `CLIPVisionConfig`, its defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "ClipVisionConfig::default_hidden")]
    pub hidden_size: i64,
    #[serde(default = "ClipVisionConfig::default_intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "ClipVisionConfig::default_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "ClipVisionConfig::default_layers")]
    pub num_attention_heads: i64,
    #[serde(default = "ClipVisionConfig::default_channels")]
    pub num_channels: i64,
    #[serde(default = "ClipVisionConfig::default_image_size")]
    pub image_size: i64,
    #[serde(default = "ClipVisionConfig::default_patch_size")]
    pub patch_size: i64,
    #[serde(default = "ClipVisionConfig::default_act")]
    pub hidden_act: Named<HiddenAct>,
    #[serde(default = "ClipVisionConfig::default_eps")]
    pub layer_norm_eps: f64,
}

impl ClipVisionConfig {
    fn default_hidden() -> i64 {
        768
    }
    fn default_intermediate() -> i64 {
        3072
    }
    fn default_layers() -> i64 {
        12
    }
    fn default_channels() -> i64 {
        3
    }
    fn default_image_size() -> i64 {
        224
    }
    fn default_patch_size() -> i64 {
        32
    }
    fn default_act() -> Named<HiddenAct> {
        HiddenAct::QuickGelu.into()
    }
    fn default_eps() -> f64 {
        1e-5
    }

    pub fn activation(&self) -> Result<crate::models::nn::Activation> {
        use crate::models::nn::Activation;
        Ok(match &self.hidden_act {
            Named::Known(HiddenAct::QuickGelu) => Activation::QuickGelu,
            Named::Known(HiddenAct::Gelu) => Activation::Gelu,
            Named::Other(other) => bail!("vision_config.hidden_act {other:?} is not supported ({})", names::<HiddenAct>()),
        })
    }

    /// Patches per side: transformers' `image_size // patch_size`.
    pub fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }

    /// Checks every value before anything is built from it.
    pub fn validate(&self, file: &Path) -> Result<()> {
        self.activation().with_context(|| file.display().to_string())?;
        in_range(file, "vision_config.hidden_size", self.hidden_size, 1..=MAX_WIDTH)?;
        in_range(file, "vision_config.intermediate_size", self.intermediate_size, 1..=MAX_WIDTH)?;
        in_range(file, "vision_config.num_hidden_layers", self.num_hidden_layers, 1..=MAX_LAYERS)?;
        in_range(file, "vision_config.num_attention_heads", self.num_attention_heads, 1..=self.hidden_size)?;
        // The image is read as RGB.
        in_range(file, "vision_config.num_channels", self.num_channels, 3..=3)?;
        in_range(file, "vision_config.image_size", self.image_size, 1..=MAX_IMAGE_SIZE)?;
        in_range(file, "vision_config.patch_size", self.patch_size, 1..=self.image_size)?;
        number(file, "vision_config.layer_norm_eps", self.layer_norm_eps, EPS)?;
        if self.hidden_size % self.num_attention_heads != 0 {
            bail!("{}: vision_config.hidden_size {} is not divisible into {} heads", file.display(), self.hidden_size, self.num_attention_heads);
        }
        Ok(())
    }
}

/// A whole `CLIPModel`: both towers and the width both are projected to.
#[derive(Debug, Clone)]
pub struct ClipModelConfig {
    pub text: ClipTextConfig,
    pub vision: ClipVisionConfig,
    pub projection_dim: i64,
}

#[derive(Deserialize)]
struct Raw {
    text_config: Option<Value>,
    text_config_dict: Option<Value>,
    vision_config: Option<Value>,
    vision_config_dict: Option<Value>,
    #[serde(default = "Raw::default_projection")]
    projection_dim: i64,
    model_type: Option<String>,
}

impl Raw {
    fn default_projection() -> i64 {
        512
    }
}

/// One tower's config: `*_config_dict` wins over `*_config` as in transformers' `CLIPConfig`
/// (old checkpoints carry both); `null` values mean the default.
fn sub_config<T: serde::de::DeserializeOwned>(file: &Path, key: &str, config: Option<Value>, dict: Option<Value>) -> Result<T> {
    let mut value = dict.or(config).unwrap_or_else(|| Value::Object(Default::default()));
    match &mut value {
        Value::Object(map) => map.retain(|_, v| !v.is_null()),
        _ => bail!("{}: {key} is not an object", file.display()),
    }
    serde_json::from_value(value).with_context(|| format!("{}: {key} is not a valid CLIP {key}", file.display()))
}

impl ClipModelConfig {
    /// Reads and checks `config.json` of a transformers `CLIPModel`.
    pub fn load(file: &Path) -> Result<Self> {
        let raw: Raw = super::read(file)?;
        if raw.vision_config.is_none() && raw.vision_config_dict.is_none() {
            let what = raw.model_type.as_deref().map_or(String::new(), |t| format!(" (model_type {t:?})"));
            bail!(
                "{}: no vision_config{what}: not a transformers CLIPModel with text and vision towers (such as openai/clip-vit-large-patch14)",
                file.display()
            );
        }
        let config = ClipModelConfig {
            text: sub_config(file, "text_config", raw.text_config, raw.text_config_dict)?,
            vision: sub_config(file, "vision_config", raw.vision_config, raw.vision_config_dict)?,
            projection_dim: raw.projection_dim,
        };
        config.validate(file)?;
        Ok(config)
    }
}

impl Validate for ClipModelConfig {
    fn validate(&self, file: &Path) -> Result<()> {
        self.text.validate(file).context("in text_config")?;
        self.vision.validate(file)?;
        in_range(file, "projection_dim", self.projection_dim, 1..=MAX_WIDTH)
    }
}
