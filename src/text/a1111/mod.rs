//! `--prompt_syntax a1111`: prompts as the AUTOMATIC1111 web UI reads them — weights in
//! brackets ([`parser`]), any length in chunks of 75 tokens ([`chunks`]), each chunk through the
//! text encoder on its own with the weights applied to its hidden states (the web UI's default
//! "Original" emphasis: multiplied, then scaled back to the chunk's mean), the chunks
//! concatenated along the sequence. Compared with the web UI's own code in tests/prompt_syntax.rs.
pub mod chunks;
pub mod parser;

use super::learned_tokens::{expand_prompt, vector_tokens};
use super::TextStack;
use anyhow::{Context, Result};
use chunks::{Chunk, TokenPiece, Vocab};
use tch::{Kind, Tensor};

/// How `generate` reads a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PromptSyntax {
    /// Plain text, as diffusers: 77 tokens, longer prompts cut.
    #[default]
    Diffusers,
    /// The A1111 web UI's: `(word:1.2)`, `[word]`, `BREAK`, prompts of any length.
    A1111,
}

impl TextStack {
    /// The chunks of `prompt` in this stack's tokenizer (the embeddings' placeholders expanded to
    /// `P P_1 ...` in each piece, as `encode_prompt` does).
    pub fn a1111_chunks(&self, prompt: &str) -> Result<Vec<Chunk>> {
        let pieces = parser::parse(prompt)?;
        let mut tokens = Vec::with_capacity(pieces.len());
        for p in &pieces {
            if p.is_break() {
                tokens.push(TokenPiece::Break);
                continue;
            }
            let text = expand_prompt(&p.text, &self.tokenizer, &self.tokens)?;
            let ids = self.tokenizer.encode_unpadded(&text)?;
            // Without the BOS and EOS `encode_unpadded` puts around the text.
            let inner = ids.get(1..ids.len().saturating_sub(1)).unwrap_or_default().to_vec();
            tokens.push(TokenPiece::Tokens(inner, p.weight));
        }
        chunks::chunk(&tokens, &self.vocab()?)
    }

    fn vocab(&self) -> Result<Vocab> {
        let mut embeddings = Vec::with_capacity(self.tokens.len());
        for t in &self.tokens {
            let ids = vector_tokens(&t.token, t.vectors)
                .iter()
                .map(|v| self.tokenizer.token_id(v).with_context(|| format!("the embedding token {v} is not in the tokenizer")))
                .collect::<Result<Vec<_>>>()?;
            embeddings.push(ids);
        }
        Ok(Vocab { bos: self.tokenizer.bos_id(), eos: self.tokenizer.eos_id(), comma: self.tokenizer.token_id(",</w>"), embeddings })
    }

    /// A chunk's ids as the encoder takes them, `[1, 77]`: where the padding token differs from
    /// EOS (SD 2's OpenCLIP tokenizer), everything after the first EOS becomes padding.
    pub fn a1111_ids(&self, chunk: &Chunk) -> Tensor {
        let (eos, pad) = (self.tokenizer.eos_id(), self.tokenizer.pad_id());
        let mut ids = chunk.ids.clone();
        if pad != eos {
            if let Some(first) = ids.iter().position(|&i| i == eos) {
                ids[first + 1..].iter_mut().for_each(|i| *i = pad);
            }
        }
        Tensor::from_slice(&ids).unsqueeze(0).to_device(self.encoder.device())
    }

    /// The conditioning of `prompt` `[1, 77 * chunks, D]`: each chunk's hidden states (the last,
    /// or with `clip_skip` an earlier one through the final norm, as [`TextStack::encode_prompt`])
    /// with its weights applied.
    pub fn encode_a1111(&self, prompt: &str, clip_skip: Option<usize>) -> Result<Tensor> {
        let mut zs = Vec::new();
        for chunk in self.a1111_chunks(prompt)? {
            let z = self.encoder.encode(&self.a1111_ids(&chunk), clip_skip)?;
            zs.push(emphasis(&z, &chunk.multipliers));
        }
        Ok(Tensor::cat(&zs, 1))
    }
}

/// The web UI's "Original" emphasis: each token's states times its weight, then the whole
/// chunk scaled so that its mean is what it was.
pub fn emphasis(z: &Tensor, multipliers: &[f64]) -> Tensor {
    let before = z.mean(z.kind());
    let w = Tensor::from_slice(multipliers).to_kind(Kind::Float).to_device(z.device()).to_kind(z.kind()).view([1, -1, 1]);
    let weighted = z * w;
    let after = weighted.mean(z.kind());
    weighted * (before / after)
}
