//! The UNet's blocks: `CrossAttnDownBlock2D`/`DownBlock2D`, `UNetMidBlock2DCrossAttn` and
//! `CrossAttnUpBlock2D`/`UpBlock2D` (a block without attention is the same with none).
use super::attention::{Transformer2DModel, TransformerConfig};
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use super::weights::VarPath;
use tch::Tensor;

#[derive(Debug)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        p: &VarPath,
        in_ch: i64,
        out_ch: i64,
        layers: i64,
        resnet: ResnetConfig,
        attn: Option<TransformerConfig>,
        downsample: bool,
        padding: i64,
    ) -> Self {
        DownBlock {
            resnets: (0..layers).map(|i| ResnetBlock2D::load(&p.pp("resnets").pp(i), if i == 0 { in_ch } else { out_ch }, out_ch, resnet)).collect(),
            attentions: attn.map_or_else(Vec::new, |a| (0..layers).map(|i| Transformer2DModel::load(&p.pp("attentions").pp(i), out_ch, a)).collect()),
            downsampler: downsample.then(|| Downsample2D::load(&p.pp("downsamplers").pp(0), out_ch, padding)),
        }
    }

    /// Whether the block reads the text conditioning (has cross-attention).
    pub fn uses_context(&self) -> bool {
        !self.attentions.is_empty()
    }

    /// Returns the output and every intermediate state the up blocks skip-connect to.
    pub fn forward(&self, xs: &Tensor, temb: &Tensor, context: &Tensor) -> (Tensor, Vec<Tensor>) {
        let mut xs = xs.shallow_clone();
        let mut states = Vec::new();
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(&xs, Some(temb));
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context);
            }
            states.push(xs.shallow_clone());
        }
        if let Some(d) = &self.downsampler {
            xs = d.forward(&xs);
            states.push(xs.shallow_clone());
        }
        (xs, states)
    }
}

#[derive(Debug)]
pub struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl MidBlock {
    pub fn load(p: &VarPath, channels: i64, resnet: ResnetConfig, attn: TransformerConfig) -> Self {
        MidBlock {
            resnets: (0..2).map(|i| ResnetBlock2D::load(&p.pp("resnets").pp(i), channels, channels, resnet)).collect(),
            attentions: vec![Transformer2DModel::load(&p.pp("attentions").pp(0), channels, attn)],
        }
    }
    pub fn forward(&self, xs: &Tensor, temb: &Tensor, context: &Tensor) -> Tensor {
        let mut xs = self.resnets[0].forward(xs, Some(temb));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            xs = resnet.forward(&attn.forward(&xs, context), Some(temb));
        }
        xs
    }
}

#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

/// Channel counts of an up block: its input from below, its output, and the skip connections'.
#[derive(Debug, Clone, Copy)]
pub struct UpChannels {
    pub prev_out: i64,
    pub out: i64,
    /// Channels of the matching down block's input (the last skip connection's width).
    pub down_in: i64,
}

impl UpBlock {
    pub fn load(p: &VarPath, ch: UpChannels, layers: i64, resnet: ResnetConfig, attn: Option<TransformerConfig>, upsample: bool) -> Self {
        let resnets = (0..layers)
            .map(|i| {
                let skip = if i == layers - 1 { ch.down_in } else { ch.out };
                let input = if i == 0 { ch.prev_out } else { ch.out };
                ResnetBlock2D::load(&p.pp("resnets").pp(i), input + skip, ch.out, resnet)
            })
            .collect();
        UpBlock {
            resnets,
            attentions: attn.map_or_else(Vec::new, |a| (0..layers).map(|i| Transformer2DModel::load(&p.pp("attentions").pp(i), ch.out, a)).collect()),
            upsampler: upsample.then(|| Upsample2D::load(&p.pp("upsamplers").pp(0), ch.out)),
        }
    }

    pub fn layers(&self) -> usize {
        self.resnets.len()
    }

    /// Whether the block reads the text conditioning (has cross-attention).
    pub fn uses_context(&self) -> bool {
        !self.attentions.is_empty()
    }

    /// `skips` are this block's skip connections, last one first.
    pub fn forward(&self, xs: &Tensor, skips: &[Tensor], temb: &Tensor, context: &Tensor, upsample_size: Option<(i64, i64)>) -> Tensor {
        let mut xs = xs.shallow_clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(&Tensor::cat(&[&xs, &skips[i]], 1), Some(temb));
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context);
            }
        }
        match &self.upsampler {
            Some(u) => u.forward(&xs, upsample_size),
            None => xs,
        }
    }
}
