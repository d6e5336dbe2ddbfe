//! diffusers' `AutoencoderKL`: the encoder to a diagonal Gaussian posterior over latents, and
//! the decoder back to pixels.
use super::attention::VaeAttention;
use super::config::VaeConfig;
use super::nn::{Conv2d, GroupNorm};
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use super::weights::{VarPath, Weights};
use anyhow::{bail, Result};
use tch::Tensor;

/// `UNetMidBlock2D` without timestep: resnet, attention, resnet.
#[derive(Debug)]
struct VaeMidBlock {
    resnets: Vec<ResnetBlock2D>,
    attention: Option<VaeAttention>,
}

impl VaeMidBlock {
    fn load(p: &VarPath, channels: i64, resnet: ResnetConfig, attention: bool) -> Self {
        VaeMidBlock {
            resnets: (0..2).map(|i| ResnetBlock2D::load(&p.pp("resnets").pp(i), channels, channels, resnet)).collect(),
            attention: attention.then(|| VaeAttention::load(&p.pp("attentions").pp(0), channels, resnet.groups)),
        }
    }
    fn forward(&self, xs: &Tensor) -> Tensor {
        let mut xs = self.resnets[0].forward(xs, None);
        if let Some(a) = &self.attention {
            xs = a.forward(&xs);
        }
        self.resnets[1].forward(&xs, None)
    }
}

#[derive(Debug)]
struct EncoderBlock {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

#[derive(Debug)]
struct DecoderBlock {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

#[derive(Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<EncoderBlock>,
    mid_block: VaeMidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn load(p: &VarPath, c: &VaeConfig, resnet: ResnetConfig) -> Self {
        let ch = &c.block_out_channels;
        let n = ch.len();
        let down_blocks = (0..n)
            .map(|i| {
                let b = p.pp("down_blocks").pp(i);
                let input = if i == 0 { ch[0] } else { ch[i - 1] };
                EncoderBlock {
                    resnets: (0..c.layers_per_block)
                        .map(|j| ResnetBlock2D::load(&b.pp("resnets").pp(j), if j == 0 { input } else { ch[i] }, ch[i], resnet))
                        .collect(),
                    downsampler: (i + 1 < n).then(|| Downsample2D::load(&b.pp("downsamplers").pp(0), ch[i], 0)),
                }
            })
            .collect();
        Encoder {
            conv_in: Conv2d::load(&p.pp("conv_in"), c.in_channels, ch[0], 3, 1, 1),
            down_blocks,
            mid_block: VaeMidBlock::load(&p.pp("mid_block"), ch[n - 1], resnet, c.mid_attention()),
            conv_norm_out: GroupNorm::load(&p.pp("conv_norm_out"), c.norm_num_groups, ch[n - 1], 1e-6),
            conv_out: Conv2d::load(&p.pp("conv_out"), ch[n - 1], 2 * c.latent_channels, 3, 1, 1),
        }
    }
    fn forward(&self, xs: &Tensor) -> Tensor {
        let mut xs = self.conv_in.forward(xs);
        for b in &self.down_blocks {
            for r in &b.resnets {
                xs = r.forward(&xs, None);
            }
            if let Some(d) = &b.downsampler {
                xs = d.forward(&xs);
            }
        }
        let xs = self.mid_block.forward(&xs);
        self.conv_out.forward(&self.conv_norm_out.forward(&xs).silu())
    }
}

#[derive(Debug)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: VaeMidBlock,
    up_blocks: Vec<DecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn load(p: &VarPath, c: &VaeConfig, resnet: ResnetConfig) -> Self {
        let ch = &c.block_out_channels;
        let n = ch.len();
        let mut out = ch[n - 1];
        let up_blocks = (0..n)
            .map(|i| {
                let b = p.pp("up_blocks").pp(i);
                let prev = out;
                out = ch[n - 1 - i];
                DecoderBlock {
                    resnets: (0..c.layers_per_block + 1)
                        .map(|j| ResnetBlock2D::load(&b.pp("resnets").pp(j), if j == 0 { prev } else { out }, out, resnet))
                        .collect(),
                    upsampler: (i + 1 < n).then(|| Upsample2D::load(&b.pp("upsamplers").pp(0), out)),
                }
            })
            .collect();
        Decoder {
            conv_in: Conv2d::load(&p.pp("conv_in"), c.latent_channels, ch[n - 1], 3, 1, 1),
            mid_block: VaeMidBlock::load(&p.pp("mid_block"), ch[n - 1], resnet, c.mid_attention()),
            up_blocks,
            conv_norm_out: GroupNorm::load(&p.pp("conv_norm_out"), c.norm_num_groups, ch[0], 1e-6),
            conv_out: Conv2d::load(&p.pp("conv_out"), ch[0], c.out_channels, 3, 1, 1),
        }
    }
    fn forward(&self, z: &Tensor) -> Tensor {
        let mut xs = self.mid_block.forward(&self.conv_in.forward(z));
        for b in &self.up_blocks {
            for r in &b.resnets {
                xs = r.forward(&xs, None);
            }
            if let Some(u) = &b.upsampler {
                xs = u.forward(&xs, None);
            }
        }
        self.conv_out.forward(&self.conv_norm_out.forward(&xs).silu())
    }
}

/// The encoder's output distribution over latents (before `scaling_factor`).
pub struct Posterior {
    pub mean: Tensor,
    /// Clamped to [-30, 20] as diffusers' `DiagonalGaussianDistribution`.
    pub logvar: Tensor,
    pub std: Tensor,
}

impl Posterior {
    /// `mean + std * noise`: a draw given the caller's noise (so callers control the RNG).
    pub fn sample_with(&self, noise: &Tensor) -> Tensor {
        &self.mean + &self.std * noise
    }
}

#[derive(Debug)]
pub struct AutoencoderKL {
    /// None once released ([`AutoencoderKL::release_encoder`]).
    encoder: Option<(Encoder, Option<Conv2d>)>,
    decoder: Option<(Decoder, Option<Conv2d>)>,
    pub config: VaeConfig,
    /// The mapped weight files some tensors point into; unmapped when both halves are gone.
    backing: Option<super::weights::Backing>,
}

impl AutoencoderKL {
    /// Builds the VAE; like [`super::unet::UNet2DConditionModel::load`], the config is checked
    /// against the weights' keys and headers before anything is allocated.
    pub fn load(w: &Weights, config: &VaeConfig) -> Result<Self> {
        config.validate(std::path::Path::new("the VAE config"))?;
        let n = config.block_out_channels.len() as i64;
        let layers = config.layers_per_block;
        for (coder, blocks, resnets) in [("encoder.down_blocks", n, layers), ("decoder.up_blocks", n, layers + 1)] {
            w.expect_count(coder, blocks, "block_out_channels")?;
            for i in 0..blocks {
                w.expect_count(&format!("{coder}.{i}.resnets"), resnets, "layers_per_block")?;
            }
        }
        w.check(&[], || Self::build(w, config))?;
        let vae = Self::build(w, config);
        w.finish(&[])?;
        Ok(vae)
    }

    fn build(w: &Weights, config: &VaeConfig) -> Self {
        let p = w.root();
        let resnet = ResnetConfig { groups: config.norm_num_groups, eps: 1e-6, temb_channels: None, output_scale_factor: 1.0 };
        let l = config.latent_channels;
        let quant_conv = config.use_quant_conv.then(|| Conv2d::load(&p.pp("quant_conv"), 2 * l, 2 * l, 1, 1, 0));
        let post_quant_conv = config.use_post_quant_conv.then(|| Conv2d::load(&p.pp("post_quant_conv"), l, l, 1, 1, 0));
        AutoencoderKL {
            encoder: Some((Encoder::load(&p.pp("encoder"), config, resnet), quant_conv)),
            decoder: Some((Decoder::load(&p.pp("decoder"), config, resnet), post_quant_conv)),
            config: config.clone(),
            backing: Some(w.backing()),
        }
    }

    /// Pixels in [-1, 1] `[batch, 3, H, W]` → posterior over `[batch, latent, H/8, W/8]`.
    pub fn encode(&self, pixels: &Tensor) -> Result<Posterior> {
        let _span = tracing::trace_span!("vae_encode").entered();
        let Some((encoder, quant_conv)) = &self.encoder else { bail!("the VAE's encoder was released (training cached every latent)") };
        let mut moments = encoder.forward(pixels);
        if let Some(q) = quant_conv {
            moments = q.forward(&moments);
        }
        let parts = moments.chunk(2, 1);
        let logvar = parts[1].clamp(-30.0, 20.0);
        let std = (&logvar * 0.5).exp();
        Ok(Posterior { mean: parts[0].shallow_clone(), logvar, std })
    }

    /// Latents (unscaled: divide by `scaling_factor` first) → pixels in about [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("vae_decode").entered();
        let Some((decoder, post_quant_conv)) = &self.decoder else { bail!("the VAE's decoder was released (training without validation)") };
        let z = match post_quant_conv {
            Some(q) => q.forward(latents),
            None => latents.shallow_clone(),
        };
        Ok(decoder.forward(&z))
    }

    /// Frees the encoder's weights (device memory; on the CPU, the mapped file once the decoder
    /// is released too): training with cached latents never encodes again.
    pub fn release_encoder(&mut self) {
        self.encoder = None;
        self.unmap_if_empty();
    }

    /// Frees the decoder's weights: training without validation never decodes.
    pub fn release_decoder(&mut self) {
        self.decoder = None;
        self.unmap_if_empty();
    }

    fn unmap_if_empty(&mut self) {
        if self.encoder.is_none() && self.decoder.is_none() {
            self.backing = None;
        }
    }
}
