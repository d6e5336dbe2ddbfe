//! The few layer types Stable Diffusion is built from, holding their tensors directly (no
//! VarStore: weights come from [`VarPath`], frozen unless a caller asks otherwise).
use super::weights::VarPath;
use tch::Tensor;

#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(p: &VarPath, in_dim: i64, out_dim: i64, bias: bool) -> Self {
        Linear { weight: p.get("weight", &[out_dim, in_dim]), bias: bias.then(|| p.get("bias", &[out_dim])) }
    }
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.linear(&self.weight, self.bias.as_ref())
    }
}

#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: i64,
    pub padding: i64,
}

impl Conv2d {
    pub fn load(p: &VarPath, in_ch: i64, out_ch: i64, kernel: i64, stride: i64, padding: i64) -> Self {
        Conv2d { weight: p.get("weight", &[out_ch, in_ch, kernel, kernel]), bias: Some(p.get("bias", &[out_ch])), stride, padding }
    }
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.conv2d(&self.weight, self.bias.as_ref(), [self.stride; 2], [self.padding; 2], [1; 2], 1)
    }
}

#[derive(Debug)]
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub groups: i64,
    pub eps: f64,
}

impl GroupNorm {
    pub fn load(p: &VarPath, groups: i64, channels: i64, eps: f64) -> Self {
        GroupNorm { weight: p.get("weight", &[channels]), bias: p.get("bias", &[channels]), groups, eps }
    }
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.group_norm(self.groups, Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub dim: i64,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(p: &VarPath, dim: i64, eps: f64) -> Self {
        LayerNorm { weight: p.get("weight", &[dim]), bias: p.get("bias", &[dim]), dim, eps }
    }
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.layer_norm([self.dim], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// Activation functions named in diffusers/transformers configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    #[serde(alias = "swish")]
    Swish,
    Gelu,
    QuickGelu,
    Mish,
}

impl Activation {
    pub fn forward(self, xs: &Tensor) -> Tensor {
        match self {
            Activation::Silu | Activation::Swish => xs.silu(),
            Activation::Gelu => xs.gelu("none"),
            Activation::QuickGelu => xs * (xs * 1.702).sigmoid(),
            Activation::Mish => xs.mish(),
        }
    }
}

/// Multi-head attention over `[batch, tokens, heads * head_dim]` projections through
/// `scaled_dot_product_attention`, as diffusers' `AttnProcessor2_0` and transformers' `sdpa`.
/// (`upcast_attention` has no effect on that path in diffusers either: SDPA accumulates in f32.)
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: i64, causal: bool) -> Tensor {
    let (b, n, inner) = q.size3().expect("attention input is [batch, tokens, channels]");
    let head_dim = inner / heads;
    let split = |t: &Tensor| t.view([b, -1, heads, head_dim]).transpose(1, 2);
    let out = Tensor::scaled_dot_product_attention(&split(q), &split(k), &split(v), None::<Tensor>, 0.0, causal, None, false);
    out.transpose(1, 2).reshape([b, n, inner])
}
