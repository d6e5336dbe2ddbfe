//! diffusers' attention modules: `Attention` (self and cross), `FeedForward` (GEGLU),
//! `BasicTransformerBlock`, `Transformer2DModel` (the UNet's spatial transformer) and the VAE's
//! single-head attention block, in current and legacy key names.
use super::nn::{attention, Conv2d, GroupNorm, LayerNorm, Linear};
use super::weights::VarPath;
use tch::Tensor;

/// Multi-head attention with `to_q`, `to_k`, `to_v` and `to_out.0`.
#[derive(Debug)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i64,
}

impl Attention {
    /// `context_dim`: width of the cross-attention input (the text embedding), or None for
    /// self-attention.
    pub fn load(p: &VarPath, dim: i64, context_dim: Option<i64>, heads: i64, head_dim: i64, qkv_bias: bool) -> Self {
        let inner = heads * head_dim;
        let ctx = context_dim.unwrap_or(dim);
        Attention {
            to_q: Linear::load(&p.pp("to_q"), dim, inner, qkv_bias),
            to_k: Linear::load(&p.pp("to_k"), ctx, inner, qkv_bias),
            to_v: Linear::load(&p.pp("to_v"), ctx, inner, qkv_bias),
            to_out: Linear::load(&p.pp("to_out").pp(0), inner, dim, true),
            heads,
        }
    }

    pub fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Tensor {
        let ctx = context.unwrap_or(xs);
        let (q, k, v) = (self.to_q.forward(xs), self.to_k.forward(ctx), self.to_v.forward(ctx));
        self.to_out.forward(&attention(&q, &k, &v, self.heads, false))
    }
}

/// `net.0.proj` (GEGLU: a linear to twice the width, half of it gating the other through
/// GELU) then `net.2`.
#[derive(Debug)]
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    pub fn load(p: &VarPath, dim: i64) -> Self {
        let inner = dim * 4;
        FeedForward { proj: Linear::load(&p.pp("net").pp(0).pp("proj"), dim, inner * 2, true), out: Linear::load(&p.pp("net").pp(2), inner, dim, true) }
    }
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let h = self.proj.forward(xs).chunk(2, -1);
        self.out.forward(&(&h[0] * h[1].gelu("none")))
    }
}

#[derive(Debug)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn load(p: &VarPath, dim: i64, heads: i64, head_dim: i64, context_dim: i64) -> Self {
        BasicTransformerBlock {
            norm1: LayerNorm::load(&p.pp("norm1"), dim, 1e-5),
            attn1: Attention::load(&p.pp("attn1"), dim, None, heads, head_dim, false),
            norm2: LayerNorm::load(&p.pp("norm2"), dim, 1e-5),
            attn2: Attention::load(&p.pp("attn2"), dim, Some(context_dim), heads, head_dim, false),
            norm3: LayerNorm::load(&p.pp("norm3"), dim, 1e-5),
            ff: FeedForward::load(&p.pp("ff"), dim),
        }
    }
    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Tensor {
        let xs = self.attn1.forward(&self.norm1.forward(xs), None) + xs;
        let xs = self.attn2.forward(&self.norm2.forward(&xs), Some(context)) + xs;
        self.ff.forward(&self.norm3.forward(&xs)) + xs
    }
}

/// The projection in and out of a spatial transformer: a 1x1 conv (SD 1.x) or a linear
/// (`use_linear_projection`, SD 2.x).
#[derive(Debug)]
enum Proj {
    Conv(Conv2d),
    Linear(Linear),
}

impl Proj {
    fn load(p: &VarPath, in_dim: i64, out_dim: i64, linear: bool) -> Self {
        if linear {
            Proj::Linear(Linear::load(p, in_dim, out_dim, true))
        } else {
            Proj::Conv(Conv2d::load(p, in_dim, out_dim, 1, 1, 0))
        }
    }
}

/// diffusers' `Transformer2DModel` for continuous input: group norm, projection in, transformer
/// blocks over the `h*w` tokens, projection out, plus the input.
#[derive(Debug)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Proj,
}

/// What a spatial transformer takes from its block.
#[derive(Debug, Clone, Copy)]
pub struct TransformerConfig {
    pub heads: i64,
    pub layers: i64,
    pub context_dim: i64,
    pub groups: i64,
    pub linear_projection: bool,
}

impl Transformer2DModel {
    pub fn load(p: &VarPath, channels: i64, c: TransformerConfig) -> Self {
        let head_dim = channels / c.heads;
        let inner = c.heads * head_dim;
        Transformer2DModel {
            norm: GroupNorm::load(&p.pp("norm"), c.groups, channels, 1e-6),
            proj_in: Proj::load(&p.pp("proj_in"), channels, inner, c.linear_projection),
            blocks: (0..c.layers).map(|i| BasicTransformerBlock::load(&p.pp("transformer_blocks").pp(i), inner, c.heads, head_dim, c.context_dim)).collect(),
            proj_out: Proj::load(&p.pp("proj_out"), inner, channels, c.linear_projection),
        }
    }

    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Tensor {
        let _span = tracing::trace_span!("transformer2d").entered();
        let (b, _, h, w) = xs.size4().expect("4-D input");
        let norm = self.norm.forward(xs);
        let to_tokens = |t: Tensor| t.permute([0, 2, 3, 1]).reshape([b, h * w, -1]);
        let mut tokens = match &self.proj_in {
            Proj::Conv(conv) => to_tokens(conv.forward(&norm)),
            Proj::Linear(lin) => lin.forward(&to_tokens(norm)),
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context);
        }
        let to_image = |t: Tensor| t.reshape([b, h, w, -1]).permute([0, 3, 1, 2]).contiguous();
        let out = match &self.proj_out {
            Proj::Conv(conv) => conv.forward(&to_image(tokens)),
            Proj::Linear(lin) => to_image(lin.forward(&tokens)),
        };
        out + xs
    }
}

/// The VAE's middle-block attention: one head over all pixels, with a group norm and a residual.
/// Current checkpoints name its projections `to_q/to_k/to_v/to_out.0`; older ones
/// `query/key/value/proj_attn` (sometimes stored as 1x1 convolutions, which load as linears).
#[derive(Debug)]
pub struct VaeAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl VaeAttention {
    pub fn load(p: &VarPath, channels: i64, groups: i64) -> Self {
        let legacy = !p.contains("to_q.weight") && p.contains("query.weight");
        let (q, k, v, o) = if legacy { ("query", "key", "value", p.pp("proj_attn")) } else { ("to_q", "to_k", "to_v", p.pp("to_out").pp(0)) };
        VaeAttention {
            group_norm: GroupNorm::load(&p.pp("group_norm"), groups, channels, 1e-6),
            to_q: Linear::load(&p.pp(q), channels, channels, true),
            to_k: Linear::load(&p.pp(k), channels, channels, true),
            to_v: Linear::load(&p.pp(v), channels, channels, true),
            to_out: Linear::load(&o, channels, channels, true),
        }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let (b, c, h, w) = xs.size4().expect("4-D input");
        let tokens = self.group_norm.forward(xs).view([b, c, h * w]).transpose(1, 2);
        let (q, k, v) = (self.to_q.forward(&tokens), self.to_k.forward(&tokens), self.to_v.forward(&tokens));
        let out = self.to_out.forward(&attention(&q, &k, &v, 1, false));
        out.transpose(1, 2).reshape([b, c, h, w]) + xs
    }
}
