//! transformers' `CLIPModel`: the text tower ([`ClipTextModel`] with its `text_projection`) and
//! the vision tower ([`ClipVisionModel`]) with its `visual_projection`, both projecting into one
//! space where cosine similarity compares images with images and images with text.
//!
//! Loaded from the folder layout of `openai/clip-vit-large-patch14` (a local folder or a Hub id):
//! `config.json`, `model.safetensors` (or `pytorch_model.bin`), `preprocessor_config.json` and
//! the tokenizer files, all at the top level.
use super::clip::ClipTextModel;
use super::clip_image_processor::ClipImageProcessor;
use super::clip_vision::ClipVisionModel;
use super::component::TOKENIZER_FILES;
use super::config::ClipModelConfig;
use super::files::{HubOptions, ModelFiles};
use super::nn::Linear;
use super::tokenizer::ClipTokenizer;
use super::weights::{Backing, Placement, Weights};
use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::Tensor;

/// Keys a checkpoint may hold that the towers do not use: buffers, and the contrastive loss's
/// temperature.
const UNUSED: &[&str] = &["position_ids", "logit_scale"];

#[derive(Debug)]
pub struct ClipModel {
    pub text: ClipTextModel,
    pub vision: ClipVisionModel,
    visual_projection: Linear,
    pub config: ClipModelConfig,
    _backing: Backing,
}

impl ClipModel {
    /// Builds the model from a whole `CLIPModel` checkpoint's weights, checking the config
    /// against them (every missing, mis-shaped or unexpected tensor at once) before anything
    /// is read.
    pub fn load(w: &Weights, config: &ClipModelConfig) -> Result<Self> {
        if !w.contains("vision_model.embeddings.patch_embedding.weight") {
            bail!("{}: no vision_model.* tensors: not a CLIPModel checkpoint with a vision tower", w.name());
        }
        if !w.contains("text_model.embeddings.token_embedding.weight") {
            bail!("{}: no text_model.* tensors: not a CLIPModel checkpoint with a text tower", w.name());
        }
        let (p, dt) = (config.projection_dim, config.text.hidden_size);
        match w.shape_of("text_projection.weight") {
            Some(s) if s == [p, dt] => {}
            Some(s) => bail!("{}: text_projection.weight has shape {s:?}, expected [{p}, {dt}] (projection_dim, text hidden_size)", w.name()),
            None => bail!("{}: no text_projection.weight: a CLIPModel projects both towers", w.name()),
        }
        w.expect_count("text_model.encoder.layers", config.text.num_hidden_layers, "text_config.num_hidden_layers")?;
        w.expect_count("vision_model.encoder.layers", config.vision.num_hidden_layers, "vision_config.num_hidden_layers")?;
        w.check(UNUSED, || Self::build(w, config))?;
        let model = Self::build(w, config)?;
        w.finish(UNUSED)?;
        Ok(model)
    }

    fn build(w: &Weights, config: &ClipModelConfig) -> Result<Self> {
        let root = w.root();
        Ok(ClipModel {
            text: ClipTextModel::build(w, &config.text, true)?,
            vision: ClipVisionModel::build(&root.pp("vision_model"), &config.vision)?,
            visual_projection: Linear::load(&root.pp("visual_projection"), config.vision.hidden_size, config.projection_dim, false),
            config: config.clone(),
            _backing: w.backing(),
        })
    }

    /// transformers' `get_image_features(...).pooler_output`: `[batch, projection_dim]` from
    /// `[batch, 3, image_size, image_size]` pixel values.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self.visual_projection.forward(&self.vision.pooled(pixel_values)?))
    }

    /// transformers' `get_text_features(...).pooler_output`: `[batch, projection_dim]` from
    /// `[batch, tokens]` ids, pooled at the end token as transformers pools (see
    /// [`ClipTextModel::pooled`]).
    pub fn text_features(&self, ids: &Tensor) -> Tensor {
        let out = self.text.forward(ids);
        self.text.pooled(&out.last_hidden_state, ids)
    }

    pub fn device(&self) -> tch::Device {
        self.text.device()
    }
}

/// A `CLIPModel` with what it reads images and text through.
pub struct ClipBundle {
    pub model: ClipModel,
    pub processor: ClipImageProcessor,
    pub tokenizer: ClipTokenizer,
}

/// Loads a `CLIPModel` folder or Hub id (the user's Hugging Face cache; offline with
/// `HF_HUB_OFFLINE=1`) onto `device` in f32.
pub fn load(name_or_path: &str, revision: Option<&str>, device: tch::Device) -> Result<ClipBundle> {
    let files = ModelFiles::resolve(name_or_path, revision, &HubOptions::from_env())?;
    let what = files.describe();
    let config_path = files.require("config.json")?;
    let config = ClipModelConfig::load(&config_path)?;
    let processor = ClipImageProcessor::load(&files.require("preprocessor_config.json")?, &config.vision)?;
    let weights = match files.get("model.safetensors")? {
        Some(p) => p,
        None => match files.get("pytorch_model.bin")? {
            Some(p) => p,
            None => bail!("{what} has no model.safetensors or pytorch_model.bin{}", files.offline_hint()),
        },
    };
    let mut tokenizer_dir = None;
    for f in TOKENIZER_FILES {
        if let Some(p) = files.get(f)? {
            tokenizer_dir = p.parent().map(Path::to_path_buf);
        }
    }
    let tokenizer_dir =
        tokenizer_dir.with_context(|| format!("{what} has no tokenizer files (vocab.json and merges.txt, or tokenizer.json){}", files.offline_hint()))?;
    let tokenizer = ClipTokenizer::from_folder(&tokenizer_dir).with_context(|| format!("loading the tokenizer of {what}"))?;
    let w = Weights::open(&[weights], Placement { device, kind: tch::Kind::Float })?;
    let model = ClipModel::load(&w, &config).with_context(|| format!("loading the CLIP model {what}"))?;
    Ok(ClipBundle { model, processor, tokenizer })
}
