//! transformers' `CLIPTextModel`: the text encoder Textual Inversion trains new words for.
//!
//! The token embedding is the frozen vocabulary matrix plus an optional separate block of new
//! rows (the placeholder tokens): only that block can require gradient, so training touches
//! nothing else and its optimizer state is `[n, D]`, not `[vocab, D]`.
use super::config::ClipTextConfig;
use super::nn::{attention, Activation, LayerNorm, Linear};
use super::weights::{VarPath, Weights};
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// The widths of one CLIP transformer encoder (the text tower's or the vision tower's).
#[derive(Debug, Clone, Copy)]
pub(super) struct EncoderDims {
    pub hidden: i64,
    pub intermediate: i64,
    pub heads: i64,
    pub eps: f64,
}

impl From<&ClipTextConfig> for EncoderDims {
    fn from(c: &ClipTextConfig) -> Self {
        EncoderDims { hidden: c.hidden_size, intermediate: c.intermediate_size, heads: c.num_attention_heads, eps: c.layer_norm_eps }
    }
}

#[derive(Debug)]
struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: i64,
}

impl ClipAttention {
    fn load(p: &VarPath, c: EncoderDims) -> Self {
        let d = c.hidden;
        ClipAttention {
            q_proj: Linear::load(&p.pp("q_proj"), d, d, true),
            k_proj: Linear::load(&p.pp("k_proj"), d, d, true),
            v_proj: Linear::load(&p.pp("v_proj"), d, d, true),
            out_proj: Linear::load(&p.pp("out_proj"), d, d, true),
            heads: c.heads,
        }
    }
    fn forward(&self, xs: &Tensor, causal: bool) -> Tensor {
        let (q, k, v) = (self.q_proj.forward(xs), self.k_proj.forward(xs), self.v_proj.forward(xs));
        self.out_proj.forward(&attention(&q, &k, &v, self.heads, causal))
    }
}

/// transformers' `CLIPEncoderLayer`, shared by the text tower (causal attention) and the vision
/// tower (full attention).
#[derive(Debug)]
pub(super) struct ClipLayer {
    self_attn: ClipAttention,
    layer_norm1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    layer_norm2: LayerNorm,
    act: Activation,
}

impl ClipLayer {
    pub(super) fn load(p: &VarPath, c: EncoderDims, act: Activation) -> Self {
        let (d, i) = (c.hidden, c.intermediate);
        ClipLayer {
            self_attn: ClipAttention::load(&p.pp("self_attn"), c),
            layer_norm1: LayerNorm::load(&p.pp("layer_norm1"), d, c.eps),
            fc1: Linear::load(&p.pp("mlp").pp("fc1"), d, i, true),
            fc2: Linear::load(&p.pp("mlp").pp("fc2"), i, d, true),
            layer_norm2: LayerNorm::load(&p.pp("layer_norm2"), d, c.eps),
            act,
        }
    }
    pub(super) fn forward(&self, xs: &Tensor, causal: bool) -> Tensor {
        let xs = xs + self.self_attn.forward(&self.layer_norm1.forward(xs), causal);
        let h = self.fc2.forward(&self.act.forward(&self.fc1.forward(&self.layer_norm2.forward(&xs))));
        xs + h
    }
}

/// What one forward pass returns.
pub struct ClipOutput {
    /// After the final layer norm: what Stable Diffusion conditions on.
    pub last_hidden_state: Tensor,
    /// The embeddings' output and each layer's output (`num_hidden_layers + 1` entries), as
    /// transformers' `output_hidden_states=True`, for `clip_skip`.
    pub hidden_states: Vec<Tensor>,
}

#[derive(Debug)]
pub struct ClipTextModel {
    /// `[vocab, D]`, frozen.
    token_embedding: Tensor,
    /// `[n, D]` rows for ids `vocab..vocab+n` (new tokens); may require gradient.
    new_rows: Option<Tensor>,
    position_embedding: Tensor,
    layers: Vec<ClipLayer>,
    final_layer_norm: LayerNorm,
    /// `CLIPTextModelWithProjection`'s `text_projection` (SDXL's second encoder): the pooled
    /// output's projection.
    text_projection: Option<Linear>,
    pub config: ClipTextConfig,
    /// The mapped weight files some tensors point into.
    _backing: super::weights::Backing,
}

impl ClipTextModel {
    /// Builds the model from `w`, accepting keys with the `text_model.` prefix (every real
    /// checkpoint, transformers 4) and without it (transformers 5).
    /// Like [`super::unet::UNet2DConditionModel::load`], the config is checked against the
    /// weights' keys and headers before anything is allocated.
    pub fn load(w: &Weights, config: &ClipTextConfig) -> Result<Self> {
        config.validate(std::path::Path::new("the text encoder config"))?;
        let prefixed = w.contains("text_model.embeddings.token_embedding.weight");
        let layers = if prefixed { "text_model.encoder.layers" } else { "encoder.layers" };
        w.expect_count(layers, config.num_hidden_layers, "num_hidden_layers")?;
        // position_ids is a buffer.
        w.check(&["position_ids"], || Self::build(w, config, prefixed))?;
        let model = Self::build(w, config, prefixed)?;
        w.finish(&["position_ids"])?;
        Ok(model)
    }

    /// Builds the model from `w` without checking for unused tensors: for a caller whose
    /// weights hold more than the text tower (a whole `CLIPModel`), which runs
    /// [`Weights::check`] and [`Weights::finish`] over all of it.
    pub(super) fn build(w: &Weights, config: &ClipTextConfig, prefixed: bool) -> Result<Self> {
        let root = w.root();
        let p = if prefixed { root.pp("text_model") } else { root };
        let act = config.activation()?;
        let d = config.hidden_size;
        let e = p.pp("embeddings");
        // The projection sits beside `text_model`, at the root, in every layout.
        let text_projection = w.contains("text_projection.weight").then(|| {
            let out = w.shape_of("text_projection.weight").and_then(|s| s.first().copied()).unwrap_or(d);
            Linear::load(&w.root().pp("text_projection"), d, out, false)
        });
        let model = ClipTextModel {
            token_embedding: e.pp("token_embedding").get("weight", &[config.vocab_size, d]),
            new_rows: None,
            position_embedding: e.pp("position_embedding").get("weight", &[config.max_position_embeddings, d]),
            layers: (0..config.num_hidden_layers).map(|i| ClipLayer::load(&p.pp("encoder").pp("layers").pp(i), config.into(), act)).collect(),
            final_layer_norm: LayerNorm::load(&p.pp("final_layer_norm"), d, config.layer_norm_eps),
            text_projection,
            config: config.clone(),
            _backing: w.backing(),
        };
        Ok(model)
    }

    pub fn device(&self) -> tch::Device {
        self.token_embedding.device()
    }

    pub fn hidden_size(&self) -> i64 {
        self.config.hidden_size
    }

    /// Rows in the vocabulary matrix (without new rows).
    pub fn base_vocab(&self) -> i64 {
        self.token_embedding.size()[0]
    }

    /// The embedding row of existing token `id` (e.g. the initializer token).
    pub fn token_row(&self, id: i64) -> Result<Tensor> {
        let v = self.base_vocab() + self.new_rows.as_ref().map_or(0, |r| r.size()[0]);
        if id < 0 || id >= v {
            bail!("token id {id} outside the text encoder's {v} rows");
        }
        Ok(match &self.new_rows {
            Some(r) if id >= self.base_vocab() => r.get(id - self.base_vocab()),
            _ => self.token_embedding.get(id),
        })
    }

    /// Sets the rows of ids `base_vocab()..` (the tokenizer's added tokens, in order).
    pub fn set_new_rows(&mut self, rows: Tensor) -> Result<()> {
        let d = self.hidden_size();
        match rows.size().as_slice() {
            [_, w] if *w == d => {}
            s => bail!("new embedding rows have shape {s:?}; expected [n, {d}]"),
        }
        self.new_rows = Some(rows.to_kind(self.token_embedding.kind()).to_device(self.token_embedding.device()));
        Ok(())
    }

    pub fn new_rows(&self) -> Option<&Tensor> {
        self.new_rows.as_ref()
    }

    /// Embeds `[batch, tokens]` ids: gathers from the frozen matrix and the new rows, so the
    /// gradient reaches only the new rows.
    pub fn embed(&self, ids: &Tensor) -> Tensor {
        let base = self.base_vocab();
        match &self.new_rows {
            None => self.token_embedding.embedding_for(ids),
            Some(rows) => {
                let is_new = ids.ge(base);
                let old = self.token_embedding.embedding_for(&ids.clamp_max(base - 1));
                let new = rows.embedding_for(&(ids - base).clamp_min(0));
                new.where_self(&is_new.unsqueeze(-1), &old)
            }
        }
    }

    /// Runs the encoder on `[batch, tokens]` ids (`tokens` ≤ max_position_embeddings).
    pub fn forward(&self, ids: &Tensor) -> ClipOutput {
        let _span = tracing::trace_span!("clip").entered();
        let n = ids.size()[1];
        let mut xs = self.embed(ids) + self.position_embedding.narrow(0, 0, n).unsqueeze(0);
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        for layer in &self.layers {
            hidden_states.push(xs.shallow_clone());
            xs = layer.forward(&xs, true);
        }
        hidden_states.push(xs.shallow_clone());
        ClipOutput { last_hidden_state: self.final_layer_norm.forward(&xs), hidden_states }
    }

    /// The conditioning diffusers' `encode_prompt` builds: `last_hidden_state`, or with
    /// `clip_skip` the hidden state `clip_skip` layers before the last, through the final norm.
    pub fn encode(&self, ids: &Tensor, clip_skip: Option<usize>) -> Result<Tensor> {
        let out = self.forward(ids);
        match clip_skip {
            None | Some(0) => Ok(out.last_hidden_state),
            Some(s) if s < out.hidden_states.len() => Ok(self.final_layer_norm.forward(&out.hidden_states[out.hidden_states.len() - 1 - s])),
            Some(s) => bail!("clip_skip {s} is larger than the text encoder's {} layers", self.layers.len()),
        }
    }

    pub fn final_layer_norm(&self, xs: &Tensor) -> Tensor {
        self.final_layer_norm.forward(xs)
    }

    /// Width of [`ClipTextModel::pooled`]: the projection's output, else the hidden size.
    pub fn pooled_width(&self) -> i64 {
        self.text_projection.as_ref().map_or(self.config.hidden_size, |p| p.weight.size()[0])
    }

    /// Whether this is a `CLIPTextModelWithProjection` (has `text_projection`).
    pub fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    /// The pooled output of `[batch, tokens]` `ids` from their `last_hidden_state`, projected
    /// when the model has a projection (transformers' `text_embeds`). The position pooled is
    /// transformers' rule: with the legacy `eos_token_id == 2` (both SDXL encoders) the argmax
    /// of the ids, so a placeholder token (ids above the vocabulary) wins over the end token —
    /// a quirk diffusers' SDXL pipeline and training script inherit, reproduced here; else the
    /// first end token.
    pub fn pooled(&self, last_hidden_state: &Tensor, ids: &Tensor) -> Tensor {
        let ids = ids.to_device(last_hidden_state.device());
        let position = if self.config.eos_token_id == 2 {
            ids.to_kind(Kind::Int).argmax(-1, false)
        } else {
            ids.eq(self.config.eos_token_id).to_kind(Kind::Int).argmax(-1, false)
        };
        let batch = Tensor::arange(ids.size()[0], (Kind::Int64, last_hidden_state.device()));
        let pooled = last_hidden_state.index(&[Some(batch), Some(position)]);
        match &self.text_projection {
            Some(p) => p.forward(&pooled),
            None => pooled,
        }
    }
}

trait EmbeddingFor {
    fn embedding_for(&self, ids: &Tensor) -> Tensor;
}

impl EmbeddingFor for Tensor {
    fn embedding_for(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(self, &ids.to_kind(Kind::Int64), -1, false, false)
    }
}
