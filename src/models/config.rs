//! Each component's `config.json`, through serde, with diffusers'/transformers' defaults.
//!
//! Fields we do not implement are still read, and any value other than the one we support is a
//! clear error (never silently ignored): see each `validate`. Every number a file controls is
//! checked against a range before anything is built from it (a zero group count divides by
//! zero, a negative width reaches libtorch, a billion layers is a 200 GB allocation); how many
//! layers there are is checked again against the weight files by the model loaders.
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::ops::RangeInclusive;
use std::path::Path;

use crate::formats::regular;

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
    pub down_block_types: Vec<String>,
    #[serde(default = "UNetConfig::default_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "UNetConfig::default_up")]
    pub up_block_types: Vec<String>,
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
    pub act_fn: String,
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
    pub class_embed_type: Option<String>,
    /// `text_time` (SDXL): the pooled text embedding and the size/crop "time ids" are added to
    /// the timestep embedding.
    pub addition_embed_type: Option<String>,
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
    #[serde(default = "default_str")]
    pub resnet_time_scale_shift: String,
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    #[serde(default = "one_f")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<i64>,
    pub time_embedding_act_fn: Option<String>,
    pub timestep_post_act: Option<String>,
    pub time_cond_proj_dim: Option<i64>,
    #[serde(default = "three")]
    pub conv_in_kernel: i64,
    #[serde(default = "three")]
    pub conv_out_kernel: i64,
    #[serde(default = "default_str")]
    pub attention_type: String,
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
fn silu() -> String {
    "silu".into()
}
fn default_str() -> String {
    "default".into()
}
fn positional() -> String {
    "positional".into()
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
    fn default_down() -> Vec<String> {
        ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"].map(String::from).to_vec()
    }
    fn default_up() -> Vec<String> {
        ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"].map(String::from).to_vec()
    }
    fn default_mid() -> Option<String> {
        Some("UNetMidBlock2DCrossAttn".into())
    }
    fn default_channels() -> Vec<i64> {
        vec![320, 640, 1280, 1280]
    }
    fn default_cross() -> PerBlock<i64> {
        PerBlock::One(1280)
    }

    /// SDXL's added conditioning: (time id feature width, add_embedding input width).
    pub fn text_time(&self) -> Option<(i64, i64)> {
        match self.addition_embed_type.as_deref() {
            Some("text_time") => Some((self.addition_time_embed_dim?, self.projection_class_embeddings_input_dim?)),
            _ => None,
        }
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
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                fail(format!("down block type {t:?}"))?;
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                fail(format!("up block type {t:?}"))?;
            }
        }
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            fail(format!("mid_block_type {:?}", self.mid_block_type))?;
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
        if self.act_fn != "silu" && self.act_fn != "swish" {
            fail(format!("act_fn {:?}", self.act_fn))?;
        }
        if self.norm_num_groups.is_none() {
            fail("norm_num_groups null".into())?;
        }
        match self.addition_embed_type.as_deref() {
            None => {}
            Some("text_time") if self.addition_time_embed_dim.is_none() || self.projection_class_embeddings_input_dim.is_none() => {
                bail!("{}: addition_embed_type \"text_time\" needs addition_time_embed_dim and projection_class_embeddings_input_dim", file.display());
            }
            Some("text_time") => {}
            Some(other) => fail(format!("addition_embed_type {other:?} (only SDXL's \"text_time\")"))?,
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
        if self.resnet_time_scale_shift != "default" {
            fail(format!("resnet_time_scale_shift {:?}", self.resnet_time_scale_shift))?;
        }
        if self.resnet_skip_time_act || self.resnet_out_scale_factor != 1.0 {
            fail("resnet_skip_time_act / resnet_out_scale_factor".into())?;
        }
        if self.time_embedding_type != "positional" {
            fail(format!("time_embedding_type {:?}", self.time_embedding_type))?;
        }
        if self.attention_type != "default" || self.class_embeddings_concat {
            fail(format!("attention_type {:?}", self.attention_type))?;
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
    pub down_block_types: Vec<String>,
    #[serde(default = "VaeConfig::default_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "VaeConfig::default_channels")]
    pub block_out_channels: Vec<i64>,
    #[serde(default = "one")]
    pub layers_per_block: i64,
    #[serde(default = "silu")]
    pub act_fn: String,
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
    fn default_down() -> Vec<String> {
        vec!["DownEncoderBlock2D".into()]
    }
    fn default_up() -> Vec<String> {
        vec!["UpDecoderBlock2D".into()]
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
        if let Some(t) = self.down_block_types.iter().find(|t| *t != "DownEncoderBlock2D") {
            bail!("{}: down block type {t:?} is not supported", file.display());
        }
        if let Some(t) = self.up_block_types.iter().find(|t| *t != "UpDecoderBlock2D") {
            bail!("{}: up block type {t:?} is not supported", file.display());
        }
        if self.act_fn != "silu" && self.act_fn != "swish" {
            bail!("{}: act_fn {:?} is not supported", file.display(), self.act_fn);
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
    pub hidden_act: String,
    #[serde(default = "eps5")]
    pub layer_norm_eps: f64,
    #[serde(default = "one")]
    pub pad_token_id: i64,
    #[serde(default = "ClipTextConfig::default_bos")]
    pub bos_token_id: i64,
    #[serde(default = "ClipTextConfig::default_eos")]
    pub eos_token_id: i64,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
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
    fn default_act() -> String {
        "quick_gelu".into()
    }
    fn default_bos() -> i64 {
        49406
    }
    fn default_eos() -> i64 {
        49407
    }
    pub fn activation(&self) -> Result<crate::models::nn::Activation> {
        use crate::models::nn::Activation;
        Ok(match self.hidden_act.as_str() {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            other => bail!("hidden_act {other:?} is not supported (quick_gelu, gelu)"),
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
            if a.iter().any(|a| a != "CLIPTextModel" && a != "CLIPTextModelWithProjection") {
                bail!("{}: architecture {a:?} is not a CLIP text model", file.display());
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
