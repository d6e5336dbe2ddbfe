//! diffusers' timestep embedding (its `embeddings.py`): sinusoidal features (`Timesteps`)
//! through a two-layer MLP (`TimestepEmbedding`).
use super::nn::Linear;
use super::weights::VarPath;
use tch::{Kind, Tensor};

/// `get_timestep_embedding`: `[batch]` timesteps (one per sample) → `[batch, dim]` features.
pub fn timestep_features(timesteps: &Tensor, dim: i64, flip_sin_to_cos: bool, shift: f64) -> Tensor {
    let half = dim / 2;
    let device = timesteps.device();
    let exponent = Tensor::arange(half, (Kind::Float, device)) * (-(10000f64.ln())) / (half as f64 - shift);
    let emb = timesteps.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
    let (sin, cos) = (emb.sin(), emb.cos());
    let emb = if flip_sin_to_cos { Tensor::cat(&[cos, sin], -1) } else { Tensor::cat(&[sin, cos], -1) };
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1, 0, 0])
    } else {
        emb
    }
}

#[derive(Debug)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn load(p: &VarPath, in_dim: i64, dim: i64) -> Self {
        TimestepEmbedding { linear_1: Linear::load(&p.pp("linear_1"), in_dim, dim, true), linear_2: Linear::load(&p.pp("linear_2"), dim, dim, true) }
    }
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(xs).silu())
    }
}
