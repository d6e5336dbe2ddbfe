//! Each component's `config.json`, through serde, with diffusers'/transformers' defaults.
//!
//! Fields we do not implement are still read, and any value other than the one we support is a
//! clear error (never silently ignored): see each `validate`. Every number a file controls is
//! checked against a range before anything is built from it (a zero group count divides by
//! zero, a negative width reaches libtorch, a billion layers is a 200 GB allocation); how many
//! layers there are is checked again against the weight files by the model loaders.
//!
//! A field that names one of a fixed set of values (block types, activations) is a [`Named`]
//! enum value: a name outside the set is kept as written, so that `validate` refuses it naming
//! the file, the key and the value.
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::ops::RangeInclusive;
use std::path::Path;

use crate::formats::regular;

mod clip_model;
mod named;
pub use clip_model::{ClipModelConfig, ClipVisionConfig};
pub(crate) use named::config_enum;
pub use named::{names, ConfigName, Named};

/// Widths (channels, hidden sizes, embedding dimensions): the largest real ones are 5120
/// (OpenCLIP bigG's MLP); the bound keeps every product of two of them far from overflowing.
pub const MAX_WIDTH: i64 = 1 << 16;
/// Layers of one block or of a text encoder (real models: at most 32).
pub const MAX_LAYERS: i64 = 1024;
/// UNet and VAE blocks (real models: 3 or 4; each halves the resolution).
pub const MAX_BLOCKS: usize = 8;
/// Vocabulary rows (CLIP: 49408; the largest multilingual tokenizers: about 250k).
pub const MAX_VOCAB: i64 = 1 << 20;
/// Text positions (CLIP: 77; long-context CLIP variants: a few hundred).
pub const MAX_POSITIONS: i64 = 1 << 14;
/// The UNet's `sample_size` in latent pixels (SDXL: 128): the default image is 8x that.
pub const MAX_SAMPLE_SIZE: i64 = 1024;

/// Reads a JSON config: only a regular file of at most [`regular::CONFIG_MAX_BYTES`].
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = regular::read_to_string(path, regular::CONFIG_MAX_BYTES)?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a valid config", path.display()))
}

/// A config whose values can be checked on their own, before any model is built from it.
pub trait Validate {
    /// Fails naming `file`, the field and what was expected.
    fn validate(&self, file: &Path) -> Result<()>;
}

/// [`read`] then [`Validate::validate`]: what every loader uses, so that nothing is built from
/// an unchecked value.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T> {
    let config: T = read(path)?;
    config.validate(path)?;
    Ok(config)
}

/// `value` of `field` in `range`, or an error naming the file, the field and the range.
fn in_range(file: &Path, field: &str, value: i64, range: RangeInclusive<i64>) -> Result<()> {
    if !range.contains(&value) {
        bail!("{}: {field} is {value}; expected {} to {}", file.display(), range.start(), range.end());
    }
    Ok(())
}

/// A finite `value` of `field` in `range`, or an error naming the file, the field and the range.
fn number(file: &Path, field: &str, value: f64, range: RangeInclusive<f64>) -> Result<()> {
    if !value.is_finite() || !range.contains(&value) {
        bail!("{}: {field} is {value}; expected a number from {:e} to {:e}", file.display(), range.start(), range.end());
    }
    Ok(())
}

/// Scale factors (divided by): positive.
const POSITIVE: RangeInclusive<f64> = f64::MIN_POSITIVE..=1e6;
/// Normalisation epsilons.
const EPS: RangeInclusive<f64> = 0.0..=1.0;

/// A value given either once for all blocks or once per block.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    pub fn get(&self, i: usize) -> Option<T> {
        match self {
            PerBlock::One(v) => Some(v.clone()),
            PerBlock::Each(v) => v.get(i).cloned(),
        }
    }
    fn len_ok(&self, n: usize) -> bool {
        match self {
            PerBlock::One(_) => true,
            PerBlock::Each(v) => v.len() == n,
        }
    }
}

impl PerBlock<i64> {
    /// Every value in `range` (see [`in_range`]); `field` names the list.
    fn in_range(&self, file: &Path, field: &str, range: RangeInclusive<i64>) -> Result<()> {
        match self {
            PerBlock::One(v) => in_range(file, field, *v, range),
            PerBlock::Each(v) => v.iter().enumerate().try_for_each(|(i, v)| in_range(file, &format!("{field}[{i}]"), *v, range.clone())),
        }
    }
}

config_enum! {
    /// `down_block_types` of a UNet.
    pub enum UNetDownBlock {
        CrossAttnDownBlock2D = "CrossAttnDownBlock2D",
        DownBlock2D = "DownBlock2D",
    }
}

config_enum! {
    /// `up_block_types` of a UNet.
    pub enum UNetUpBlock {
        CrossAttnUpBlock2D = "CrossAttnUpBlock2D",
        UpBlock2D = "UpBlock2D",
    }
}

config_enum! {
    /// `mid_block_type` of a UNet.
    pub enum UNetMidBlock {
        UNetMidBlock2DCrossAttn = "UNetMidBlock2DCrossAttn",
    }
}

impl UNetDownBlock {
    /// Whether the block has attention (transformer) layers after its resnets.
    pub fn has_attention(self) -> bool {
        match self {
            UNetDownBlock::CrossAttnDownBlock2D => true,
            UNetDownBlock::DownBlock2D => false,
        }
    }
}

impl UNetUpBlock {
    /// Whether the block has attention (transformer) layers after its resnets.
    pub fn has_attention(self) -> bool {
        match self {
            UNetUpBlock::CrossAttnUpBlock2D => true,
            UNetUpBlock::UpBlock2D => false,
        }
    }
}

config_enum! {
    /// `act_fn` of a UNet or VAE: one function under two names (the modules apply SiLU).
    pub enum ActFn {
        Silu = "silu",
        Swish = "swish",
    }
}

config_enum! {
    /// `addition_embed_type` of a UNet.
    pub enum AdditionEmbedType {
        /// SDXL: the pooled text embedding and the size/crop "time ids" are added to the
        /// timestep embedding.
        TextTime = "text_time",
    }
}

config_enum! {
    /// `resnet_time_scale_shift` of a UNet.
    pub enum ResnetTimeScaleShift {
        /// The timestep embedding is added to the features.
        Default = "default",
    }
}

config_enum! {
    /// `time_embedding_type` of a UNet.
    pub enum TimeEmbeddingType {
        /// Sinusoidal features of the timestep.
        Positional = "positional",
    }
}

config_enum! {
    /// `attention_type` of a UNet's transformer blocks.
    pub enum AttentionType {
        Default = "default",
    }
}

config_enum! {
    /// `down_block_types` of a VAE encoder.
    pub enum VaeDownBlock {
        DownEncoderBlock2D = "DownEncoderBlock2D",
    }
}

config_enum! {
    /// `up_block_types` of a VAE decoder.
    pub enum VaeUpBlock {
        UpDecoderBlock2D = "UpDecoderBlock2D",
    }
}

config_enum! {
    /// `hidden_act` of a CLIP text model.
    pub enum HiddenAct {
        QuickGelu = "quick_gelu",
        Gelu = "gelu",
    }
}

config_enum! {
    /// `architectures` of a CLIP text model's config.
    pub enum ClipArchitecture {
        CLIPTextModel = "CLIPTextModel",
        CLIPTextModelWithProjection = "CLIPTextModelWithProjection",
    }
}

fn default_true() -> bool {
    true
}

/// `unet/config.json` of a `UNet2DConditionModel`.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    /// Latent size the model was trained at (64 for SD 1.5: 512 px / 8).
    pub sample_size: Option<i64>,
    #[serde(default = "four")]
    pub in_channels: i64,
    #[serde(default = "four")]
    pub out_channels: i64,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "UNetConfig::default_down")]
    pub down_block_types: Vec<Named<UNetDownBlock>>,
    #[serde(default = "UNetConfig::default_mid")]
    pub mid_block_type: Option<Named<UNetMidBlock>>,
    #[serde(default = "UNetConfig::default_up")]
    pub up_block_types: Vec<Named<UNetUpBlock>>,
    #[serde(default = "false_per_block")]
    pub only_cross_attention: PerBlock<bool>,
    #[serde(default = "UNetConfig::default_channels")]
    pub block_out_channels: Vec<i64>,
    #[serde(default = "two_per_block")]
    pub layers_per_block: PerBlock<i64>,
    #[serde(default = "one")]
    pub downsample_padding: i64,
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "silu")]
    pub act_fn: Named<ActFn>,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: Option<i64>,
    #[serde(default = "eps5")]
    pub norm_eps: f64,
    #[serde(default = "UNetConfig::default_cross")]
    pub cross_attention_dim: PerBlock<i64>,
    #[serde(default = "one_per_block")]
    pub transformer_layers_per_block: PerBlock<i64>,
    pub encoder_hid_dim: Option<i64>,
    #[serde(default = "eight_per_block")]
    pub attention_head_dim: PerBlock<i64>,
    pub num_attention_heads: Option<PerBlock<i64>>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub use_linear_projection: bool,
    /// This and the other string fields below that are not enums: every value is refused.
    pub class_embed_type: Option<String>,
    /// `text_time` (SDXL): the pooled text embedding and the size/crop "time ids" are added to
    /// the timestep embedding.
    pub addition_embed_type: Option<Named<AdditionEmbedType>>,
    /// Width of each time id's sinusoidal features (SDXL: 256).
    pub addition_time_embed_dim: Option<i64>,
    /// Input width of `add_embedding`: pooled width + 6 x addition_time_embed_dim (SDXL: 2816).
    pub projection_class_embeddings_input_dim: Option<i64>,
    /// Read by diffusers only for `text_image` conditioning.
    pub addition_embed_type_num_heads: Option<i64>,
    pub num_class_embeds: Option<i64>,
    /// Has no effect with scaled-dot-product attention (diffusers' default processor) either;
    /// SDXL's config has `null`.
    #[serde(default)]
    pub upcast_attention: Option<bool>,
    #[serde(default = "default_time_scale_shift")]
    pub resnet_time_scale_shift: Named<ResnetTimeScaleShift>,
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    #[serde(default = "one_f")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "positional")]
    pub time_embedding_type: Named<TimeEmbeddingType>,
    pub time_embedding_dim: Option<i64>,
    pub time_embedding_act_fn: Option<String>,
    pub timestep_post_act: Option<String>,
    pub time_cond_proj_dim: Option<i64>,
    #[serde(default = "three")]
    pub conv_in_kernel: i64,
    #[serde(default = "three")]
    pub conv_out_kernel: i64,
    #[serde(default = "default_attention")]
    pub attention_type: Named<AttentionType>,
    #[serde(default)]
    pub class_embeddings_concat: bool,
    pub mid_block_only_cross_attention: Option<bool>,
    pub cross_attention_norm: Option<String>,
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
}

fn four() -> i64 {
    4
}
fn three() -> i64 {
    3
}
fn one() -> i64 {
    1
}
fn one_f() -> f64 {
    1.0
}
fn eps5() -> f64 {
    1e-5
}
fn thirty_two() -> Option<i64> {
    Some(32)
}
fn silu() -> Named<ActFn> {
    ActFn::Silu.into()
}
fn default_time_scale_shift() -> Named<ResnetTimeScaleShift> {
    ResnetTimeScaleShift::Default.into()
}
fn positional() -> Named<TimeEmbeddingType> {
    TimeEmbeddingType::Positional.into()
}
fn default_attention() -> Named<AttentionType> {
    AttentionType::Default.into()
}
fn false_per_block() -> PerBlock<bool> {
    PerBlock::One(false)
}
fn one_per_block() -> PerBlock<i64> {
    PerBlock::One(1)
}
fn two_per_block() -> PerBlock<i64> {
    PerBlock::One(2)
}
fn eight_per_block() -> PerBlock<i64> {
    PerBlock::One(8)
}

impl UNetConfig {
    fn default_down() -> Vec<Named<UNetDownBlock>> {
        use UNetDownBlock::*;
        [CrossAttnDownBlock2D, CrossAttnDownBlock2D, CrossAttnDownBlock2D, DownBlock2D].map(Named::from).to_vec()
    }
    fn default_up() -> Vec<Named<UNetUpBlock>> {
        use UNetUpBlock::*;
        [UpBlock2D, CrossAttnUpBlock2D, CrossAttnUpBlock2D, CrossAttnUpBlock2D].map(Named::from).to_vec()
    }
    fn default_mid() -> Option<Named<UNetMidBlock>> {
        Some(UNetMidBlock::UNetMidBlock2DCrossAttn.into())
    }
    fn default_channels() -> Vec<i64> {
        vec![320, 640, 1280, 1280]
    }
    fn default_cross() -> PerBlock<i64> {
        PerBlock::One(1280)
    }

    /// SDXL's added conditioning: (time id feature width, add_embedding input width).
    pub fn text_time(&self) -> Option<(i64, i64)> {
        match self.addition_embed_type.as_ref()?.known()? {
            AdditionEmbedType::TextTime => Some((self.addition_time_embed_dim?, self.projection_class_embeddings_input_dim?)),
        }
    }

    /// Down block `i`'s type; an error for one [`Self::validate`] refuses (or no block `i`).
    pub fn down_block(&self, i: usize) -> Result<UNetDownBlock> {
        let t = self.down_block_types.get(i).with_context(|| format!("unet config: down_block_types has no entry for block {i}"))?;
        t.known().with_context(|| format!("unet config: down block type {:?} is not supported", t.name()))
    }

    /// Up block `i`'s type; an error for one [`Self::validate`] refuses (or no block `i`).
    pub fn up_block(&self, i: usize) -> Result<UNetUpBlock> {
        let t = self.up_block_types.get(i).with_context(|| format!("unet config: up_block_types has no entry for block {i}"))?;
        t.known().with_context(|| format!("unet config: up block type {:?} is not supported", t.name()))
    }

    /// Heads of each down block's attention. diffusers names this `attention_head_dim` in SD
    /// configs but uses it as the number of heads (its `num_attention_heads` fallback).
    pub fn heads(&self, block: usize) -> Option<i64> {
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).get(block)
    }

    /// Checks every value before anything is built from it (see the module documentation).
    pub fn validate(&self, file: &Path) -> Result<()> {
        let n = self.block_out_channels.len();
        let fail = |what: String| -> Result<()> { bail!("{}: {what} is not supported", file.display()) };
        if n == 0 || n > MAX_BLOCKS {
            bail!("{}: block_out_channels has {n} entries; expected 1 to {MAX_BLOCKS} blocks", file.display());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            bail!("{}: down_block_types, up_block_types and block_out_channels must have the same length", file.display());
        }
        if let Some(t) = self.down_block_types.iter().find(|t| t.known().is_none()) {
            fail(format!("down block type {:?}", t.name()))?;
        }
        if let Some(t) = self.up_block_types.iter().find(|t| t.known().is_none()) {
            fail(format!("up block type {:?}", t.name()))?;
        }
        match &self.mid_block_type {
            Some(Named::Known(UNetMidBlock::UNetMidBlock2DCrossAttn)) => {}
            other => fail(format!("mid_block_type {:?}", other.as_ref().map(Named::name)))?,
        }
        let per_block_ok = self.only_cross_attention.len_ok(n)
            && self.layers_per_block.len_ok(n)
            && self.cross_attention_dim.len_ok(n)
            && self.transformer_layers_per_block.len_ok(n)
            && self.attention_head_dim.len_ok(n)
            && self.num_attention_heads.as_ref().is_none_or(|h| h.len_ok(n));
        if !per_block_ok {
            bail!("{}: a per-block list does not have one entry per block ({n})", file.display());
        }
        if self.only_cross_attention != PerBlock::One(false) && self.only_cross_attention != PerBlock::Each(vec![false; n]) {
            fail("only_cross_attention".into())?;
        }
        if self.mid_block_only_cross_attention == Some(true) {
            fail("mid_block_only_cross_attention".into())?;
        }
        if self.dual_cross_attention {
            fail("dual_cross_attention".into())?;
        }
        if let Named::Other(a) = &self.act_fn {
            fail(format!("act_fn {a:?}"))?;
        }
        if self.norm_num_groups.is_none() {
            fail("norm_num_groups null".into())?;
        }
        match &self.addition_embed_type {
            None => {}
            Some(Named::Known(AdditionEmbedType::TextTime))
                if self.addition_time_embed_dim.is_none() || self.projection_class_embeddings_input_dim.is_none() =>
            {
                bail!("{}: addition_embed_type \"text_time\" needs addition_time_embed_dim and projection_class_embeddings_input_dim", file.display());
            }
            Some(Named::Known(AdditionEmbedType::TextTime)) => {}
            Some(Named::Other(other)) => fail(format!("addition_embed_type {other:?} (only SDXL's \"text_time\")"))?,
        }
        for (name, v) in [
            ("class_embed_type", &self.class_embed_type),
            ("time_embedding_act_fn", &self.time_embedding_act_fn),
            ("timestep_post_act", &self.timestep_post_act),
            ("cross_attention_norm", &self.cross_attention_norm),
        ] {
            if let Some(v) = v {
                fail(format!("{name} {v:?}"))?;
            }
        }
        for (name, v) in [
            ("num_class_embeds", self.num_class_embeds),
            ("encoder_hid_dim", self.encoder_hid_dim),
            ("time_cond_proj_dim", self.time_cond_proj_dim),
            ("time_embedding_dim", self.time_embedding_dim),
        ] {
            if let Some(v) = v {
                fail(format!("{name} {v}"))?;
            }
        }
        if self.reverse_transformer_layers_per_block.as_ref().is_some_and(|v| !v.is_null()) {
            fail("reverse_transformer_layers_per_block".into())?;
        }
        if let Named::Other(v) = &self.resnet_time_scale_shift {
            fail(format!("resnet_time_scale_shift {v:?}"))?;
        }
        if self.resnet_skip_time_act || self.resnet_out_scale_factor != 1.0 {
            fail("resnet_skip_time_act / resnet_out_scale_factor".into())?;
        }
        if let Named::Other(v) = &self.time_embedding_type {
            fail(format!("time_embedding_type {v:?}"))?;
        }
        if self.attention_type.known().is_none() || self.class_embeddings_concat {
            fail(format!("attention_type {:?}", self.attention_type.name()))?;
        }
        if self.conv_in_kernel % 2 == 0 || self.conv_out_kernel % 2 == 0 {
            fail("even conv_in/conv_out kernels".into())?;
        }
        in_range(file, "conv_in_kernel", self.conv_in_kernel, 1..=31)?;
        in_range(file, "conv_out_kernel", self.conv_out_kernel, 1..=31)?;
        in_range(file, "in_channels", self.in_channels, 1..=MAX_WIDTH)?;
        in_range(file, "out_channels", self.out_channels, 1..=MAX_WIDTH)?;
        if let Some(s) = self.sample_size {
            in_range(file, "sample_size", s, 1..=MAX_SAMPLE_SIZE)?;
        }
        // 1: padding all round; 0: diffusers' asymmetric padding (right and bottom by one).
        in_range(file, "downsample_padding", self.downsample_padding, 0..=1)?;
        number(file, "norm_eps", self.norm_eps, EPS)?;
        number(file, "mid_block_scale_factor", self.mid_block_scale_factor, POSITIVE)?;
        number(file, "freq_shift", self.freq_shift, -1e6..=1e6)?;
        self.layers_per_block.in_range(file, "layers_per_block", 1..=MAX_LAYERS)?;
        self.transformer_layers_per_block.in_range(file, "transformer_layers_per_block", 1..=MAX_LAYERS)?;
        self.cross_attention_dim.in_range(file, "cross_attention_dim", 1..=MAX_WIDTH)?;
        let heads_field = if self.num_attention_heads.is_some() { "num_attention_heads" } else { "attention_head_dim" };
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).in_range(file, heads_field, 1..=MAX_WIDTH)?;
        if let Some((dim, input)) = self.text_time() {
            in_range(file, "addition_time_embed_dim", dim, 1..=MAX_WIDTH)?;
            in_range(file, "projection_class_embeddings_input_dim", input, 1..=MAX_WIDTH)?;
        }
        let groups = self.norm_num_groups.unwrap_or(32);
        in_range(file, "norm_num_groups", groups, 1..=MAX_WIDTH)?;
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            in_range(file, &format!("block_out_channels[{i}]"), c, 1..=MAX_WIDTH)?;
            let heads = self.heads(i).unwrap_or(1);
            if c % heads != 0 {
                bail!("{}: block {i} has {c} channels (block_out_channels[{i}]), not divisible into {heads} attention heads ({heads_field})", file.display());
            }
            if c % groups != 0 {
                bail!("{}: block {i} has {c} channels (block_out_channels[{i}]), not divisible into norm_num_groups {groups}", file.display());
            }
        }
        Ok(())
    }
}

/// `vae/config.json` of an `AutoencoderKL`.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: i64,
    #[serde(default = "three")]
    pub out_channels: i64,
    #[serde(default = "VaeConfig::default_down")]
    pub down_block_types: Vec<Named<VaeDownBlock>>,
    #[serde(default = "VaeConfig::default_up")]
    pub up_block_types: Vec<Named<VaeUpBlock>>,
    #[serde(default = "VaeConfig::default_channels")]
    pub block_out_channels: Vec<i64>,
    #[serde(default = "one")]
    pub layers_per_block: i64,
    #[serde(default = "silu")]
    pub act_fn: Named<ActFn>,
    #[serde(default = "four")]
    pub latent_channels: i64,
    #[serde(default = "thirty_two_i")]
    pub norm_num_groups: i64,
    pub sample_size: Option<i64>,
    #[serde(default = "VaeConfig::default_scaling")]
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    #[serde(default)]
    pub mid_block_add_attention: Option<bool>,
    pub latents_mean: Option<serde_json::Value>,
    pub latents_std: Option<serde_json::Value>,
    #[serde(default)]
    pub force_upcast: Option<bool>,
}

fn thirty_two_i() -> i64 {
    32
}

impl VaeConfig {
    fn default_down() -> Vec<Named<VaeDownBlock>> {
        vec![VaeDownBlock::DownEncoderBlock2D.into()]
    }
    fn default_up() -> Vec<Named<VaeUpBlock>> {
        vec![VaeUpBlock::UpDecoderBlock2D.into()]
    }
    fn default_channels() -> Vec<i64> {
        vec![64]
    }
    fn default_scaling() -> f64 {
        0.18215
    }
    /// Attention in the encoder's and decoder's middle block (diffusers' default: on).
    pub fn mid_attention(&self) -> bool {
        self.mid_block_add_attention.unwrap_or(true)
    }

    /// Checks every value before anything is built from it (see the module documentation).
    pub fn validate(&self, file: &Path) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 || n > MAX_BLOCKS {
            bail!("{}: block_out_channels has {n} entries; expected 1 to {MAX_BLOCKS} blocks", file.display());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            bail!("{}: down_block_types, up_block_types and block_out_channels must have the same length", file.display());
        }
        if let Some(t) = self.down_block_types.iter().find(|t| t.known().is_none()) {
            bail!("{}: down block type {:?} is not supported", file.display(), t.name());
        }
        if let Some(t) = self.up_block_types.iter().find(|t| t.known().is_none()) {
            bail!("{}: up block type {:?} is not supported", file.display(), t.name());
        }
        if let Named::Other(a) = &self.act_fn {
            bail!("{}: act_fn {a:?} is not supported", file.display());
        }
        if self.shift_factor.is_some_and(|s| s != 0.0) || self.latents_mean.as_ref().is_some_and(|v| !v.is_null()) {
            bail!("{}: shift_factor / latents_mean are not supported (SD 3 and Flux VAEs)", file.display());
        }
        in_range(file, "in_channels", self.in_channels, 1..=MAX_WIDTH)?;
        in_range(file, "out_channels", self.out_channels, 1..=MAX_WIDTH)?;
        in_range(file, "latent_channels", self.latent_channels, 1..=MAX_WIDTH)?;
        in_range(file, "layers_per_block", self.layers_per_block, 1..=MAX_LAYERS)?;
        in_range(file, "norm_num_groups", self.norm_num_groups, 1..=MAX_WIDTH)?;
        if let Some(s) = self.sample_size {
            in_range(file, "sample_size", s, 1..=MAX_SAMPLE_SIZE * 8)?;
        }
        number(file, "scaling_factor", self.scaling_factor, POSITIVE)?;
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            in_range(file, &format!("block_out_channels[{i}]"), c, 1..=MAX_WIDTH)?;
            if c % self.norm_num_groups != 0 {
                bail!("{}: {c} channels (block_out_channels[{i}]) are not divisible into norm_num_groups {}", file.display(), self.norm_num_groups);
            }
        }
        Ok(())
    }
}

/// `text_encoder/config.json` of a transformers `CLIPTextModel`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "ClipTextConfig::default_vocab")]
    pub vocab_size: i64,
    #[serde(default = "ClipTextConfig::default_hidden")]
    pub hidden_size: i64,
    #[serde(default = "ClipTextConfig::default_intermediate")]
    pub intermediate_size: i64,
    #[serde(default)]
    pub projection_dim: Option<i64>,
    #[serde(default = "ClipTextConfig::default_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "ClipTextConfig::default_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "ClipTextConfig::default_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "ClipTextConfig::default_act")]
    pub hidden_act: Named<HiddenAct>,
    #[serde(default = "eps5")]
    pub layer_norm_eps: f64,
    #[serde(default = "one")]
    pub pad_token_id: i64,
    #[serde(default = "ClipTextConfig::default_bos")]
    pub bos_token_id: i64,
    #[serde(default = "ClipTextConfig::default_eos")]
    pub eos_token_id: i64,
    #[serde(default)]
    pub architectures: Option<Vec<Named<ClipArchitecture>>>,
}

impl ClipTextConfig {
    fn default_vocab() -> i64 {
        49408
    }
    fn default_hidden() -> i64 {
        512
    }
    fn default_intermediate() -> i64 {
        2048
    }
    fn default_layers() -> i64 {
        12
    }
    fn default_heads() -> i64 {
        8
    }
    fn default_positions() -> i64 {
        77
    }
    fn default_act() -> Named<HiddenAct> {
        HiddenAct::QuickGelu.into()
    }
    fn default_bos() -> i64 {
        49406
    }
    fn default_eos() -> i64 {
        49407
    }
    pub fn activation(&self) -> Result<crate::models::nn::Activation> {
        use crate::models::nn::Activation;
        Ok(match &self.hidden_act {
            Named::Known(HiddenAct::QuickGelu) => Activation::QuickGelu,
            Named::Known(HiddenAct::Gelu) => Activation::Gelu,
            Named::Other(other) => bail!("hidden_act {other:?} is not supported ({})", names::<HiddenAct>()),
        })
    }

    /// Checks every value before anything is built from it (see the module documentation).
    pub fn validate(&self, file: &Path) -> Result<()> {
        self.activation().with_context(|| file.display().to_string())?;
        in_range(file, "vocab_size", self.vocab_size, 1..=MAX_VOCAB)?;
        in_range(file, "hidden_size", self.hidden_size, 1..=MAX_WIDTH)?;
        in_range(file, "intermediate_size", self.intermediate_size, 1..=MAX_WIDTH)?;
        in_range(file, "num_hidden_layers", self.num_hidden_layers, 1..=MAX_LAYERS)?;
        in_range(file, "num_attention_heads", self.num_attention_heads, 1..=self.hidden_size)?;
        // BOS and EOS take two positions.
        in_range(file, "max_position_embeddings", self.max_position_embeddings, 2..=MAX_POSITIONS)?;
        number(file, "layer_norm_eps", self.layer_norm_eps, EPS)?;
        if let Some(p) = self.projection_dim {
            in_range(file, "projection_dim", p, 1..=MAX_WIDTH)?;
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            bail!("{}: hidden_size {} is not divisible into {} heads (num_attention_heads)", file.display(), self.hidden_size, self.num_attention_heads);
        }
        if let Some(a) = &self.architectures {
            if a.iter().any(|a| a.known().is_none()) {
                bail!("{}: architecture {:?} is not a CLIP text model", file.display(), a.iter().map(Named::name).collect::<Vec<_>>());
            }
        }
        Ok(())
    }
}

macro_rules! validate_impl {
    ($($t:ty),*) => {$(
        impl Validate for $t {
            fn validate(&self, file: &Path) -> Result<()> {
                <$t>::validate(self, file)
            }
        }
    )*};
}
validate_impl!(UNetConfig, VaeConfig, ClipTextConfig);

#[cfg(test)]
mod tests {
    use super::*;

    /// `json` read as `T` and validated as the file `x/config.json`: the error's text, or None.
    fn refused<T: DeserializeOwned + Validate>(json: serde_json::Value) -> Option<String> {
        let config: T = serde_json::from_value(json).expect("the test's JSON reads");
        config.validate(Path::new("x/config.json")).err().map(|e| format!("{e:#}"))
    }

    #[test]
    fn every_supported_name_reads_and_validates() {
        assert_eq!(refused::<UNetConfig>(serde_json::json!({})), None, "diffusers' defaults");
        let unet = serde_json::json!({
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "mid_block_type": "UNetMidBlock2DCrossAttn", "block_out_channels": [32, 64], "act_fn": "swish",
            "resnet_time_scale_shift": "default", "time_embedding_type": "positional", "attention_type": "default",
            "addition_embed_type": "text_time", "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 80,
        });
        assert_eq!(refused::<UNetConfig>(unet.clone()), None);
        let c: UNetConfig = serde_json::from_value(unet).unwrap();
        assert_eq!((c.down_block(0).unwrap(), c.down_block(1).unwrap()), (UNetDownBlock::DownBlock2D, UNetDownBlock::CrossAttnDownBlock2D));
        assert_eq!((c.up_block(0).unwrap(), c.up_block(1).unwrap()), (UNetUpBlock::CrossAttnUpBlock2D, UNetUpBlock::UpBlock2D));
        assert!(c.down_block(2).is_err());
        assert_eq!((c.act_fn.clone(), c.text_time()), (Named::Known(ActFn::Swish), Some((8, 80))));
        let vae = serde_json::json!({"down_block_types": ["DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D"], "act_fn": "silu"});
        assert_eq!(refused::<VaeConfig>(vae), None);
        for (act, want) in [("quick_gelu", crate::models::nn::Activation::QuickGelu), ("gelu", crate::models::nn::Activation::Gelu)] {
            let clip = serde_json::json!({"hidden_act": act, "architectures": ["CLIPTextModelWithProjection"]});
            assert_eq!(refused::<ClipTextConfig>(clip.clone()), None);
            assert_eq!(serde_json::from_value::<ClipTextConfig>(clip).unwrap().activation().unwrap(), want);
        }
    }

    #[test]
    fn unsupported_names_are_refused_naming_the_file_the_key_and_the_value() {
        let unet = |key: &str, value: serde_json::Value| {
            let mut json = serde_json::json!({});
            json[key] = value;
            refused::<UNetConfig>(json).unwrap_or_else(|| panic!("{key} accepted"))
        };
        let cases = [
            (
                unet("down_block_types", serde_json::json!(["SimpleCrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"])),
                "down block type \"SimpleCrossAttnDownBlock2D\" is not supported",
            ),
            (
                unet("up_block_types", serde_json::json!(["UpBlock2D", "UpBlock2D", "UpBlock2D", "AttnUpBlock2D"])),
                "up block type \"AttnUpBlock2D\" is not supported",
            ),
            (
                unet("mid_block_type", serde_json::json!("UNetMidBlock2DSimpleCrossAttn")),
                "mid_block_type Some(\"UNetMidBlock2DSimpleCrossAttn\") is not supported",
            ),
            (unet("mid_block_type", serde_json::Value::Null), "mid_block_type None is not supported"),
            (unet("act_fn", serde_json::json!("mish")), "act_fn \"mish\" is not supported"),
            (unet("addition_embed_type", serde_json::json!("image")), "addition_embed_type \"image\" (only SDXL's \"text_time\") is not supported"),
            (unet("resnet_time_scale_shift", serde_json::json!("scale_shift")), "resnet_time_scale_shift \"scale_shift\" is not supported"),
            (unet("time_embedding_type", serde_json::json!("fourier")), "time_embedding_type \"fourier\" is not supported"),
            (unet("attention_type", serde_json::json!("gated")), "attention_type \"gated\" is not supported"),
            (refused::<VaeConfig>(serde_json::json!({"down_block_types": ["DownBlock2D"]})).unwrap(), "down block type \"DownBlock2D\" is not supported"),
            (refused::<VaeConfig>(serde_json::json!({"up_block_types": ["UpBlock2D"]})).unwrap(), "up block type \"UpBlock2D\" is not supported"),
            (refused::<VaeConfig>(serde_json::json!({"act_fn": "gelu"})).unwrap(), "act_fn \"gelu\" is not supported"),
            (refused::<ClipTextConfig>(serde_json::json!({"hidden_act": "relu"})).unwrap(), "hidden_act \"relu\" is not supported (quick_gelu, gelu)"),
            (refused::<ClipTextConfig>(serde_json::json!({"architectures": ["BertModel"]})).unwrap(), "architecture [\"BertModel\"] is not a CLIP text model"),
        ];
        for (e, want) in cases {
            assert!(e.starts_with("x/config.json: ") && e.contains(want), "{e}\nexpected: {want}");
        }
        // Not a string: serde's type error, as for any other field.
        let e = serde_json::from_value::<UNetConfig>(serde_json::json!({"act_fn": 1})).unwrap_err().to_string();
        assert!(e.contains("expected a string"), "{e}");
    }
}
