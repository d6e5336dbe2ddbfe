//! diffusers' `ResnetBlock2D`, `Downsample2D` and `Upsample2D` (shared by the UNet and the VAE).
use super::nn::{Conv2d, GroupNorm, Linear};
use super::weights::VarPath;
use tch::Tensor;

#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    /// Absent in the VAE (no timestep).
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

/// The settings a resnet takes from its block.
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub groups: i64,
    pub eps: f64,
    /// Width of the timestep embedding, None for the VAE.
    pub temb_channels: Option<i64>,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn load(p: &VarPath, in_ch: i64, out_ch: i64, c: ResnetConfig) -> Self {
        ResnetBlock2D {
            norm1: GroupNorm::load(&p.pp("norm1"), c.groups, in_ch, c.eps),
            conv1: Conv2d::load(&p.pp("conv1"), in_ch, out_ch, 3, 1, 1),
            time_emb_proj: c.temb_channels.map(|t| Linear::load(&p.pp("time_emb_proj"), t, out_ch, true)),
            norm2: GroupNorm::load(&p.pp("norm2"), c.groups, out_ch, c.eps),
            conv2: Conv2d::load(&p.pp("conv2"), out_ch, out_ch, 3, 1, 1),
            conv_shortcut: (in_ch != out_ch).then(|| Conv2d::load(&p.pp("conv_shortcut"), in_ch, out_ch, 1, 1, 0)),
            output_scale_factor: c.output_scale_factor,
        }
    }

    /// `temb` is the already-activated-free timestep embedding `[batch, temb_channels]`.
    pub fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Tensor {
        let _span = tracing::trace_span!("resnet").entered();
        let mut h = self.conv1.forward(&self.norm1.forward(xs).silu());
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            // Not `+=`: tch's AddAssign adds in place; this keeps the out-of-place add.
            h = &h + proj.forward(&temb.silu()).unsqueeze(-1).unsqueeze(-1);
        }
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(xs),
            None => xs.shallow_clone(),
        };
        let out = skip + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
}

/// Strided 3x3 convolution. The VAE encoder uses padding 0 after padding right and bottom by
/// one (diffusers' `padding=0` case); the UNet pads 1 all round.
#[derive(Debug)]
pub struct Downsample2D {
    conv: Conv2d,
    asymmetric: bool,
}

impl Downsample2D {
    pub fn load(p: &VarPath, channels: i64, padding: i64) -> Self {
        Downsample2D { conv: Conv2d::load(&p.pp("conv"), channels, channels, 3, 2, padding), asymmetric: padding == 0 }
    }
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        if self.asymmetric {
            self.conv.forward(&xs.constant_pad_nd([0, 1, 0, 1]))
        } else {
            self.conv.forward(xs)
        }
    }
}

/// Nearest-neighbour doubling (or to `size`, for odd skip connections), then a 3x3 conv.
#[derive(Debug)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn load(p: &VarPath, channels: i64) -> Self {
        Upsample2D { conv: Conv2d::load(&p.pp("conv"), channels, channels, 3, 1, 1) }
    }
    pub fn forward(&self, xs: &Tensor, size: Option<(i64, i64)>) -> Tensor {
        let (h, w) = match size {
            Some(s) => s,
            None => {
                let s = xs.size();
                (s[2] * 2, s[3] * 2)
            }
        };
        self.conv.forward(&xs.upsample_nearest2d([h, w], None, None))
    }
}
