//! From text to the UNet's conditioning: a tokenizer and its text encoder, with the learned
//! tokens loaded into both (a [`TextStack`]), and prompts through them as diffusers'
//! `encode_prompt` does.
//!
//! SDXL has two stacks, CLIP ViT-L and OpenCLIP ViT-bigG (with a projection): `pipeline::Models`
//! holds the second beside the first; [`learned_tokens`] loads each embedding part into the stack
//! of its encoder (`clip_l`, `clip_g`); the pipeline's prompt encoding concatenates the stacks'
//! penultimate hidden states and takes the pooled embedding from the second. [`a1111`] reads
//! prompts as the AUTOMATIC1111 web UI does (`--prompt_syntax a1111`).
pub mod a1111;
pub mod learned_tokens;

use crate::models::clip::ClipTextModel;
use crate::models::tokenizer::ClipTokenizer;
use anyhow::Result;
use learned_tokens::{expand_prompt, EmbeddingSpec, LoadedToken};
use tch::Tensor;

/// A tokenizer, its text encoder, and the tokens loaded into them.
pub struct TextStack {
    pub tokenizer: ClipTokenizer,
    pub encoder: ClipTextModel,
    /// Embedding tokens loaded into the tokenizer and text encoder.
    pub tokens: Vec<LoadedToken>,
}

impl TextStack {
    pub fn new(tokenizer: ClipTokenizer, encoder: ClipTextModel) -> Self {
        TextStack { tokenizer, encoder, tokens: Vec::new() }
    }

    /// Loads embedding files (`--embedding`) into the tokenizer and the encoder.
    pub fn load_embeddings(&mut self, specs: &[EmbeddingSpec]) -> Result<()> {
        let loaded = learned_tokens::load(specs, &mut self.tokenizer, &mut self.encoder)?;
        self.tokens.extend(loaded);
        Ok(())
    }

    /// diffusers' `encode_prompt` for one prompt: multi-vector tokens expanded, 77 ids
    /// (longer prompts truncated with a warning), the text encoder's last hidden state (or the
    /// `clip_skip` layer through the final norm), `[1, 77, D]` on the encoder's device.
    pub fn encode_prompt(&self, prompt: &str, clip_skip: Option<usize>) -> Result<Tensor> {
        let text = expand_prompt(prompt, &self.tokenizer, &self.tokens)?;
        let ids = self.tokenizer.encode(&text)?;
        let full = self.tokenizer.encode_unpadded(&text)?;
        if full.len() > ids.len() {
            tracing::warn!("the prompt is {} tokens long; CLIP takes {}, so {} token(s) at its end are ignored", full.len(), ids.len(), full.len() - ids.len());
        }
        let ids = Tensor::from_slice(&ids).unsqueeze(0).to_device(self.encoder.device());
        self.encoder.encode(&ids, clip_skip)
    }
}
