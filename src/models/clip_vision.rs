//! transformers' `CLIPVisionTransformer`: the image tower of a `CLIPModel`. Patches (a strided
//! convolution without bias) after a learned class token, plus position embeddings; a layer
//! norm before the encoder (`pre_layrnorm`, spelled as in the checkpoints), the encoder with
//! full attention, and `post_layernorm` on the class token's output: the pooled image feature.
use super::clip::{ClipLayer, EncoderDims};
use super::config::ClipVisionConfig;
use super::nn::LayerNorm;
use super::weights::VarPath;
use anyhow::{bail, Result};
use tch::Tensor;

#[derive(Debug)]
pub struct ClipVisionModel {
    class_embedding: Tensor,
    patch_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<ClipLayer>,
    post_layernorm: LayerNorm,
    pub config: ClipVisionConfig,
}

impl ClipVisionModel {
    /// Builds the tower from `p` (`vision_model` of a `CLIPModel`); `config` must be validated.
    pub(super) fn build(p: &VarPath, config: &ClipVisionConfig) -> Result<Self> {
        let (d, c, k) = (config.hidden_size, config.num_channels, config.patch_size);
        let dims = EncoderDims { hidden: d, intermediate: config.intermediate_size, heads: config.num_attention_heads, eps: config.layer_norm_eps };
        let act = config.activation()?;
        let e = p.pp("embeddings");
        let positions = config.grid() * config.grid() + 1;
        Ok(ClipVisionModel {
            class_embedding: e.get("class_embedding", &[d]),
            patch_embedding: e.pp("patch_embedding").get("weight", &[d, c, k, k]),
            position_embedding: e.pp("position_embedding").get("weight", &[positions, d]),
            pre_layrnorm: LayerNorm::load(&p.pp("pre_layrnorm"), d, config.layer_norm_eps),
            layers: (0..config.num_hidden_layers).map(|i| ClipLayer::load(&p.pp("encoder").pp("layers").pp(i), dims, act)).collect(),
            post_layernorm: LayerNorm::load(&p.pp("post_layernorm"), d, config.layer_norm_eps),
            config: config.clone(),
        })
    }

    /// The pooled output (`pooler_output`) of `[batch, 3, image_size, image_size]` pixel values:
    /// `[batch, hidden_size]`.
    pub fn pooled(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let size = self.config.image_size;
        match pixel_values.size().as_slice() {
            [_, ch, h, w] if *ch == self.config.num_channels && *h == size && *w == size => {}
            s => bail!("pixel values of shape {s:?} for a vision tower of {size}x{size} images (expected [batch, 3, {size}, {size}])"),
        }
        let _span = tracing::trace_span!("clip_vision").entered();
        let b = pixel_values.size()[0];
        let k = self.config.patch_size;
        let patches = pixel_values.to_kind(self.patch_embedding.kind()).conv2d(&self.patch_embedding, None::<Tensor>, [k, k], [0, 0], [1, 1], 1);
        let patches = patches.flatten(2, -1).transpose(1, 2);
        let class = self.class_embedding.expand([b, 1, self.config.hidden_size], false);
        let mut xs = Tensor::cat(&[class, patches], 1) + self.position_embedding.unsqueeze(0);
        xs = self.pre_layrnorm.forward(&xs);
        for layer in &self.layers {
            xs = layer.forward(&xs, false);
        }
        Ok(self.post_layernorm.forward(&xs.select(1, 0)))
    }
}
