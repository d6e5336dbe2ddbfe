//! The UNet's conditioning for a prompt, as diffusers' `encode_prompt` builds it.
//!
//! - SD 1.x/2.x: the text encoder's last hidden state (with `clip_skip`, an earlier one through
//!   the final norm); the negative prompt (`""` when none) without clip_skip.
//! - SDXL: both encoders' hidden state before the last (`hidden_states[-(clip_skip + 2)]`, no
//!   final norm) concatenated, the second encoder's pooled and projected output, and the time
//!   ids `[original h, w, crop top, left, target h, w]`. Negatives are zeros when no negative
//!   prompt is given and the model says `force_zeros_for_empty_prompt`; otherwise encoded from
//!   `negative_prompt(_2)` with `hidden_states[-2]` (clip_skip never applies to them).
//! - `--prompt_syntax a1111` (SD 1.x/2.x): both prompts read as the web UI reads them
//!   (`text::a1111`), clip_skip applied to both as the web UI's global setting is; when their
//!   chunk counts differ, the negative prompt's states stay apart for a UNet pass of their own.
use super::{GenerateOptions, Models};
use crate::models::stable_diffusion::Family;
use crate::models::unet::AddedConditioning;
use crate::text::a1111::PromptSyntax;
use crate::text::learned_tokens::expand_prompt;
use crate::text::TextStack;
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// What the UNet is conditioned on, for the whole batch (negatives first under guidance).
pub struct Conditioning {
    /// `[batch, 77, cross_attention_dim]`, in the UNet's dtype on its device.
    pub context: Tensor,
    /// The negative prompt's states `[batch, L, D]` when their length `L` differs from the
    /// prompt's (`--prompt_syntax a1111`): `context` then holds the prompt's rows only and the
    /// UNet runs each in a pass of its own, as the web UI does by default.
    pub uncond_context: Option<Tensor>,
    /// SDXL's pooled embedding and time ids.
    pub added: Option<AddedConditioning>,
}

/// One prompt through the encoders: per-token states `[1, 77, D]` and (SDXL) the pooled
/// embedding `[1, P]`.
pub struct PromptEmbeds {
    pub hidden: Tensor,
    pub pooled: Option<Tensor>,
}

/// A stack's 77 ids for `prompt` (multi-vector tokens expanded, longer prompts cut with a
/// warning), on its encoder's device.
fn ids(stack: &TextStack, prompt: &str) -> Result<Tensor> {
    let text = expand_prompt(prompt, &stack.tokenizer, &stack.tokens)?;
    let ids = stack.tokenizer.encode(&text)?;
    let full = stack.tokenizer.encode_unpadded(&text)?;
    if full.len() > ids.len() {
        tracing::warn!("the prompt is {} tokens long; CLIP takes {}, so {} token(s) at its end are ignored", full.len(), ids.len(), full.len() - ids.len());
    }
    Ok(Tensor::from_slice(&ids).unsqueeze(0).to_device(stack.encoder.device()))
}

/// SDXL's per-token states of one encoder: the hidden state `skip + 2` from the end, before
/// the final norm; and the output, for the pooled embedding.
fn xl_states(stack: &TextStack, ids: &Tensor, skip: usize) -> Result<(Tensor, Tensor)> {
    let out = stack.encoder.forward(ids);
    let n = out.hidden_states.len();
    if skip + 2 > n {
        bail!("clip_skip {skip} is larger than the text encoder's {} layers", n - 1);
    }
    Ok((out.hidden_states[n - 2 - skip].shallow_clone(), out.last_hidden_state))
}

impl Models {
    /// diffusers' `encode_prompt` for one prompt (the first encoder's conditioning for SD 1.x
    /// and 2.x; see [`Models::prompt_embeds`] for SDXL).
    pub fn encode_prompt(&self, prompt: &str, clip_skip: Option<usize>) -> Result<Tensor> {
        Ok(self.prompt_embeds(prompt, None, clip_skip)?.hidden)
    }

    /// One prompt's embeddings (`prompt_2` for SDXL's second encoder, default `prompt`).
    pub fn prompt_embeds(&self, prompt: &str, prompt_2: Option<&str>, clip_skip: Option<usize>) -> Result<PromptEmbeds> {
        self.prompt_embeds_as(PromptSyntax::Diffusers, prompt, prompt_2, clip_skip)
    }

    /// [`Models::prompt_embeds`] with the prompt read in `syntax`.
    pub fn prompt_embeds_as(&self, syntax: PromptSyntax, prompt: &str, prompt_2: Option<&str>, clip_skip: Option<usize>) -> Result<PromptEmbeds> {
        let Some(text_2) = &self.text_2 else {
            let hidden = match syntax {
                PromptSyntax::Diffusers => self.text.encode_prompt(prompt, clip_skip)?,
                PromptSyntax::A1111 => self.text.encode_a1111(prompt, clip_skip)?,
            };
            return Ok(PromptEmbeds { hidden, pooled: None });
        };
        if syntax == PromptSyntax::A1111 {
            bail!("--prompt_syntax a1111 is for SD 1.x and 2.x models (SDXL is not supported yet)");
        }
        let skip = clip_skip.unwrap_or(0);
        let (h1, _) = xl_states(&self.text, &ids(&self.text, prompt)?, skip)?;
        let ids_2 = ids(text_2, prompt_2.unwrap_or(prompt))?;
        let (h2, last) = xl_states(text_2, &ids_2, skip)?;
        let pooled = text_2.encoder.pooled(&last, &ids_2);
        Ok(PromptEmbeds { hidden: Tensor::cat(&[h1, h2.to_device(self.text.encoder.device())], -1), pooled: Some(pooled) })
    }

    /// The whole batch's conditioning for `options` at `size` `(height, width)`.
    pub fn conditioning(&self, options: &GenerateOptions, size: (i64, i64), guidance: bool) -> Result<Conditioning> {
        let n = options.num_images_per_prompt as i64;
        let xl = self.family.is_xl();
        if !xl
            && (options.prompt_2.is_some()
                || options.negative_prompt_2.is_some()
                || options.original_size.is_some()
                || options.target_size.is_some()
                || options.crops_coords_top_left != (0, 0))
        {
            bail!("--prompt_2, --negative_prompt_2, --original_size, --target_size and --crops_coords_top_left are for SDXL models");
        }
        let syntax = options.prompt_syntax;
        let positive = self.prompt_embeds_as(syntax, &options.prompt, options.prompt_2.as_deref(), options.clip_skip)?;
        let negative = if !guidance {
            None
        } else if let (Family::Xl { force_zeros_for_empty_prompt: true }, None) = (self.family, &options.negative_prompt) {
            Some(PromptEmbeds { hidden: positive.hidden.zeros_like(), pooled: positive.pooled.as_ref().map(Tensor::zeros_like) })
        } else {
            // diffusers applies clip_skip to the prompt only, never to the negative prompt; the
            // web UI's is a global setting.
            let neg = options.negative_prompt.as_deref().unwrap_or("");
            let neg_2 = options.negative_prompt_2.as_deref().or(options.negative_prompt.as_deref()).unwrap_or("");
            let skip = if syntax == PromptSyntax::A1111 { options.clip_skip } else { None };
            Some(self.prompt_embeds_as(syntax, neg, Some(neg_2), skip)?)
        };
        let batch = |pos: &Tensor, neg: Option<&Tensor>| -> Tensor {
            let dims: Vec<i64> = std::iter::once(n).chain(std::iter::repeat_n(1, pos.dim() - 1)).collect();
            let pos = pos.repeat(&dims);
            let t = match neg {
                Some(neg) => Tensor::cat(&[neg.repeat(&dims), pos], 0),
                None => pos,
            };
            t.to_device(self.device).to_kind(self.kind)
        };
        let (context, uncond_context) = match &negative {
            Some(neg) if neg.hidden.size()[1] != positive.hidden.size()[1] => (batch(&positive.hidden, None), Some(batch(&neg.hidden, None))),
            _ => (batch(&positive.hidden, negative.as_ref().map(|e| &e.hidden)), None),
        };
        let added = match &positive.pooled {
            None => None,
            Some(pooled) => {
                let text_embeds = batch(pooled, negative.as_ref().and_then(|e| e.pooled.as_ref()));
                let (h, w) = size;
                let (oh, ow) = options.original_size.unwrap_or((h, w));
                let (th, tw) = options.target_size.unwrap_or((h, w));
                let (ct, cl) = options.crops_coords_top_left;
                let row = Tensor::from_slice(&[oh, ow, ct, cl, th, tw]).to_kind(Kind::Float).unsqueeze(0);
                // The negative rows are the same ids (no negative_original_size & co. here).
                let rows = text_embeds.size()[0];
                let time_ids = row.repeat([rows, 1]).to_device(self.device).to_kind(self.kind);
                Some(AddedConditioning { text_embeds, time_ids })
            }
        };
        if xl && added.is_none() {
            bail!("SDXL conditioning without the pooled embedding");
        }
        Ok(Conditioning { context, uncond_context, added })
    }
}
