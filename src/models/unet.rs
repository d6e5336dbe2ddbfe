//! diffusers' `UNet2DConditionModel` (SD 1.x, 2.x and SDXL), built from its `config.json`.
use super::attention::TransformerConfig;
use super::config::UNetConfig;
use super::nn::{Conv2d, GroupNorm};
use super::resnet::ResnetConfig;
use super::timestep_embedding::{timestep_features, TimestepEmbedding};
use super::unet_blocks::{DownBlock, MidBlock, UpBlock, UpChannels};
use super::weights::Weights;
use anyhow::{bail, Context, Result};
use tch::Tensor;

mod checkpointing;
pub use checkpointing::{ConditioningGrads, Recomputable};

/// What enters the first block: the timestep's embedding, SDXL's added embedding (summed
/// with it), the input convolution's output.
struct Prepared {
    temb: Tensor,
    added: Option<Tensor>,
    conv_in: Tensor,
    forward_upsample_size: bool,
}

/// SDXL's added conditioning (`added_cond_kwargs`): the pooled text embedding and, per
/// sample, the six "time ids" `[original h, w, crop top, left, target h, w]`.
pub struct AddedConditioning {
    /// `[batch, pooled width]`.
    pub text_embeds: Tensor,
    /// `[batch, 6]`.
    pub time_ids: Tensor,
}

#[derive(Debug)]
pub struct UNet2DConditionModel {
    time_embedding: TimestepEmbedding,
    /// `text_time`: the time ids' feature width and the MLP from `[text_embeds, features]`.
    add_embedding: Option<(i64, TimestepEmbedding)>,
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    pub config: UNetConfig,
    /// The mapped weight files some tensors point into.
    _backing: super::weights::Backing,
}

impl UNet2DConditionModel {
    /// Builds the UNet; `config` must have passed [`UNetConfig::validate`]. The layer counts
    /// are checked against the weights' keys and every tensor's name and shape against their
    /// headers first, so a config that does not fit fails before anything is allocated.
    pub fn load(w: &Weights, config: &UNetConfig) -> Result<Self> {
        // Again here, for callers that built the config themselves: nothing below may see an
        // unchecked value.
        config.validate(std::path::Path::new("the UNet config"))?;
        Self::check_counts(w, config)?;
        w.check(&[], || Self::build(w, config))?;
        let unet = Self::build(w, config)?;
        w.finish(&[])?;
        Ok(unet)
    }

    /// Block and layer counts: the config's must be those of the weights (see
    /// [`Weights::expect_count`]), which bounds what the config can make [`Self::build`] build.
    fn check_counts(w: &Weights, c: &UNetConfig) -> Result<()> {
        let n = c.block_out_channels.len();
        w.expect_count("down_blocks", n as i64, "block_out_channels")?;
        w.expect_count("up_blocks", n as i64, "block_out_channels")?;
        let per = |v: &super::config::PerBlock<i64>, i: usize, what: &str| v.get(i).with_context(|| format!("unet config: {what} has no entry for block {i}"));
        let transformers = |prefix: String, layers: i64, want: i64| -> Result<()> {
            for j in 0..layers {
                w.expect_count(&format!("{prefix}.{j}.transformer_blocks"), want, "transformer_layers_per_block")?;
            }
            Ok(())
        };
        for i in 0..n {
            let layers = per(&c.layers_per_block, i, "layers_per_block")?;
            let t = per(&c.transformer_layers_per_block, i, "transformer_layers_per_block")?;
            let down = format!("down_blocks.{i}");
            w.expect_count(&format!("{down}.resnets"), layers, "layers_per_block")?;
            if c.down_block(i)?.has_attention() {
                w.expect_count(&format!("{down}.attentions"), layers, "layers_per_block")?;
                transformers(format!("{down}.attentions"), layers, t)?;
            }
            let r = n - 1 - i;
            let (layers, t) = (per(&c.layers_per_block, r, "layers_per_block")? + 1, per(&c.transformer_layers_per_block, r, "transformer_layers_per_block")?);
            let up = format!("up_blocks.{i}");
            w.expect_count(&format!("{up}.resnets"), layers, "layers_per_block (+1 in up blocks)")?;
            if c.up_block(i)?.has_attention() {
                w.expect_count(&format!("{up}.attentions"), layers, "layers_per_block (+1 in up blocks)")?;
                transformers(format!("{up}.attentions"), layers, t)?;
            }
        }
        transformers("mid_block.attentions".into(), 1, per(&c.transformer_layers_per_block, n - 1, "transformer_layers_per_block")?)
    }

    fn build(w: &Weights, config: &UNetConfig) -> Result<Self> {
        let c = config;
        let p = w.root();
        let n = c.block_out_channels.len();
        let ch = &c.block_out_channels;
        let groups = c.norm_num_groups.unwrap_or(32);
        let temb_dim = ch[0] * 4;
        let resnet = ResnetConfig { groups, eps: c.norm_eps, temb_channels: Some(temb_dim), output_scale_factor: 1.0 };
        let per = |v: Option<i64>, what: &str| -> Result<i64> {
            match v {
                Some(v) => Ok(v),
                None => bail!("unet config: {what} has no entry for every block"),
            }
        };
        let mut attn_cfg = Vec::with_capacity(n);
        for i in 0..n {
            attn_cfg.push(TransformerConfig {
                heads: per(c.heads(i), "attention_head_dim")?,
                layers: per(c.transformer_layers_per_block.get(i), "transformer_layers_per_block")?,
                context_dim: per(c.cross_attention_dim.get(i), "cross_attention_dim")?,
                groups,
                linear_projection: c.use_linear_projection,
            });
        }
        let layers: Vec<i64> = (0..n).map(|i| per(c.layers_per_block.get(i), "layers_per_block")).collect::<Result<_>>()?;

        let mut down_blocks = Vec::with_capacity(n);
        for i in 0..n {
            let input = if i == 0 { ch[0] } else { ch[i - 1] };
            let attn = c.down_block(i)?.has_attention().then_some(attn_cfg[i]);
            down_blocks.push(DownBlock::load(&p.pp("down_blocks").pp(i), input, ch[i], layers[i], resnet, attn, i + 1 < n, c.downsample_padding));
        }
        let mid_resnet = ResnetConfig { output_scale_factor: c.mid_block_scale_factor, ..resnet };
        let mid_block = MidBlock::load(&p.pp("mid_block"), ch[n - 1], mid_resnet, attn_cfg[n - 1]);
        let mut up_blocks = Vec::with_capacity(n);
        let mut out = ch[n - 1];
        for i in 0..n {
            let r = n - 1 - i; // the matching down block
            let prev_out = out;
            out = ch[r];
            let down_in = ch[r.saturating_sub(1)];
            let attn = c.up_block(i)?.has_attention().then_some(attn_cfg[r]);
            let channels = UpChannels { prev_out, out, down_in };
            up_blocks.push(UpBlock::load(&p.pp("up_blocks").pp(i), channels, layers[r] + 1, resnet, attn, i + 1 < n));
        }
        let add_embedding = c.text_time().map(|(dim, input)| (dim, TimestepEmbedding::load(&p.pp("add_embedding"), input, temb_dim)));
        let unet = UNet2DConditionModel {
            time_embedding: TimestepEmbedding::load(&p.pp("time_embedding"), ch[0], temb_dim),
            add_embedding,
            conv_in: Conv2d::load(&p.pp("conv_in"), c.in_channels, ch[0], c.conv_in_kernel, 1, (c.conv_in_kernel - 1) / 2),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(&p.pp("conv_norm_out"), groups, ch[0], c.norm_eps),
            conv_out: Conv2d::load(&p.pp("conv_out"), ch[0], c.out_channels, c.conv_out_kernel, 1, (c.conv_out_kernel - 1) / 2),
            config: c.clone(),
            _backing: w.backing(),
        };
        Ok(unet)
    }

    /// Predicts noise (or v) for `sample` `[batch, C, h, w]` at `timesteps` (a scalar or one
    /// per sample), conditioned on `context` `[batch, tokens, cross_attention_dim]` and, for
    /// SDXL, `added` (required exactly when the config has `addition_embed_type`).
    pub fn forward(&self, sample: &Tensor, timesteps: &Tensor, context: &Tensor, added: Option<&AddedConditioning>) -> Result<Tensor> {
        let _span = tracing::trace_span!("unet").entered();
        let (temb, mut xs, forward_upsample_size) = self.prepare(sample, timesteps, added)?;
        let mut skips = vec![xs.shallow_clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(&xs, &temb, context);
            xs = out;
            skips.extend(states);
        }
        xs = self.mid_block.forward(&xs, &temb, context);
        for (i, block) in self.up_blocks.iter().enumerate() {
            let mut mine: Vec<Tensor> = skips.split_off(skips.len() - block.layers());
            mine.reverse();
            let upsample_size = self.upsample_size(i, forward_upsample_size, skips.last());
            xs = block.forward(&xs, &mine, &temb, context, upsample_size);
        }
        Ok(self.out(&xs))
    }

    /// Whether the model takes SDXL's added conditioning.
    pub fn takes_added_conditioning(&self) -> bool {
        self.add_embedding.is_some()
    }

    /// The time embedding (plus SDXL's added one), the input convolution, and whether the up
    /// blocks need explicit output sizes (latents not divisible by the UNet's total
    /// downsampling).
    fn prepare(&self, sample: &Tensor, timesteps: &Tensor, added: Option<&AddedConditioning>) -> Result<(Tensor, Tensor, bool)> {
        let p = self.prepare_parts(sample, timesteps, added)?;
        let temb = match p.added {
            Some(a) => p.temb + a,
            None => p.temb,
        };
        Ok((temb, p.conv_in, p.forward_upsample_size))
    }

    fn prepare_parts(&self, sample: &Tensor, timesteps: &Tensor, added: Option<&AddedConditioning>) -> Result<Prepared> {
        let size = sample.size();
        let (batch, h, w) = (size[0], size[2], size[3]);
        let up_factor = 1i64 << (self.up_blocks.len() - 1);
        let forward_upsample_size = h % up_factor != 0 || w % up_factor != 0;
        let sample = if self.config.center_input_sample { sample * 2.0 - 1.0 } else { sample.shallow_clone() };
        let timesteps = if timesteps.dim() == 0 { timesteps.expand([batch], false) } else { timesteps.shallow_clone() };
        let t =
            timestep_features(&timesteps.to_device(sample.device()), self.config.block_out_channels[0], self.config.flip_sin_to_cos, self.config.freq_shift)
                .to_kind(sample.kind());
        let temb = self.time_embedding.forward(&t);
        let added = match (&self.add_embedding, added) {
            (None, None) => None,
            (Some(_), Some(a)) => Some(self.added_embedding(a, batch, temb.kind())?),
            (Some(_), None) => bail!("this UNet (addition_embed_type text_time, SDXL) needs the pooled text embedding and time ids"),
            (None, Some(_)) => bail!("this UNet takes no added conditioning (text embeds, time ids): it is not an SDXL UNet"),
        };
        Ok(Prepared { temb, added, conv_in: self.conv_in.forward(&sample), forward_upsample_size })
    }

    /// diffusers' `text_time` embedding: sinusoidal features of each time id (in f32),
    /// concatenated after the pooled text embedding, through `add_embedding`.
    fn added_embedding(&self, a: &AddedConditioning, batch: i64, kind: tch::Kind) -> Result<Tensor> {
        let Some((dim, add_embedding)) = &self.add_embedding else { bail!("this UNet takes no added conditioning") };
        let dim = *dim;
        if a.text_embeds.size().first() != Some(&batch) || a.time_ids.numel() as i64 != batch * 6 {
            bail!(
                "added conditioning for a batch of {batch}: text_embeds {:?} and time_ids {:?} (expected [{batch}, pooled] and [{batch}, 6])",
                a.text_embeds.size(),
                a.time_ids.size()
            );
        }
        let device = a.text_embeds.device();
        let features =
            timestep_features(&a.time_ids.flatten(0, -1).to_device(device), dim, self.config.flip_sin_to_cos, self.config.freq_shift).reshape([batch, -1]);
        // concat promotes to f32 (the features), then the MLP runs in the UNet's dtype.
        let input = Tensor::cat(&[a.text_embeds.to_kind(tch::Kind::Float), features], -1).to_kind(kind);
        Ok(add_embedding.forward(&input))
    }

    /// Up block `i`'s explicit output size: that of the next skip connection, when needed.
    fn upsample_size(&self, i: usize, forward_upsample_size: bool, next_skip: Option<&Tensor>) -> Option<(i64, i64)> {
        (forward_upsample_size && i + 1 < self.up_blocks.len()).then(|| next_skip.map(|s| (s.size()[2], s.size()[3]))).flatten()
    }

    /// The output head: norm, SiLU, convolution.
    fn out(&self, xs: &Tensor) -> Tensor {
        self.conv_out.forward(&self.conv_norm_out.forward(xs).silu())
    }
}
