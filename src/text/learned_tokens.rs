//! Learned tokens: embedding files put into a tokenizer and text encoder, as diffusers'
//! `load_textual_inversion` does, and multi-vector tokens expanded in prompts, as its
//! `maybe_convert_prompt` does.
use crate::formats::embeddings::{self, Encoder, Layout};
use crate::models::clip::ClipTextModel;
use crate::models::tokenizer::ClipTokenizer;
use crate::tensors::to_tch;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// `--embedding FILE[:TOKEN]`: a file (or a folder holding `learned_embeds.*`) and optionally
/// the token to use instead of the file's own.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingSpec {
    pub path: PathBuf,
    pub token: Option<String>,
}

impl std::str::FromStr for EmbeddingSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        // `path:token`, unless the whole string is itself an existing path.
        if !Path::new(s).exists() {
            if let Some((path, token)) = s.rsplit_once(':') {
                if !token.is_empty() && Path::new(path).exists() {
                    return Ok(EmbeddingSpec { path: path.into(), token: Some(token.to_string()) });
                }
            }
        }
        Ok(EmbeddingSpec { path: s.into(), token: None })
    }
}

/// The file to read for `path`: itself, or in a folder the training script's output
/// (`learned_embeds.safetensors`, else `learned_embeds.bin`), as diffusers resolves folders.
pub fn resolve_file(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        for name in ["learned_embeds.safetensors", "learned_embeds.bin"] {
            let f = path.join(name);
            if f.is_file() {
                return Ok(f);
            }
        }
        bail!("{}: a folder without learned_embeds.safetensors or learned_embeds.bin", path.display());
    }
    if !path.exists() {
        bail!("{}: no such embedding file", path.display());
    }
    Ok(path.to_path_buf())
}

/// A token made available to prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedToken {
    /// What prompts use.
    pub token: String,
    /// Vectors it stands for (tokens `token, token_1, ...`).
    pub vectors: usize,
    pub file: PathBuf,
}

/// The tokens `P, P_1, ..., P_{n-1}` a multi-vector embedding occupies.
pub fn vector_tokens(token: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| if i == 0 { token.to_string() } else { format!("{token}_{i}") }).collect()
}

/// Loads embedding files into the tokenizer (new tokens) and text encoder (new rows).
pub fn load(specs: &[EmbeddingSpec], tokenizer: &mut ClipTokenizer, text_encoder: &mut ClipTextModel) -> Result<Vec<LoadedToken>> {
    let mut loaded = Vec::new();
    for spec in specs {
        let file = resolve_file(&spec.path)?;
        let ef = embeddings::read(&file)?;
        let name = file.display().to_string();
        if ef.embeddings.len() > 1 && spec.token.is_some() {
            bail!("{name} holds {} embeddings; a single :TOKEN cannot name them all", ef.embeddings.len());
        }
        let stem = embeddings::file_stem(&file);
        for (i, e) in ef.embeddings.iter().enumerate() {
            let token = spec.token.clone().unwrap_or_else(|| ef.trigger(i, &stem));
            let width = text_encoder.hidden_size() as usize;
            let part = match (ef.layout, e.part(Encoder::TextEncoder)) {
                (Layout::Sdxl, _) | (_, None) => {
                    let widths: Vec<String> = e.parts.iter().map(|p| format!("{} {}", p.encoder.key(), p.width())).collect();
                    bail!("{name}: token {token} is an SDXL embedding ({}); this model's text encoder is {width} wide and takes one", widths.join(" + "));
                }
                (_, Some(p)) => p,
            };
            if part.width() != width {
                let family = embeddings::model_family(part.width());
                bail!("{name}: token {token} has {}-wide vectors ({family}) but this model's text encoder is {width} wide", part.width());
            }
            let tokens = vector_tokens(&token, part.vectors());
            if tokenizer.token_id(&token).is_some() {
                bail!("{name}: token {token} is already in the tokenizer's vocabulary; choose another with {}:OTHER", spec.path.display());
            }
            if tokens.len() > 1 && tokenizer.token_id(&tokens[1]).is_some() {
                bail!("{name}: multi-vector token [{}] is already in the tokenizer's vocabulary", tokens.join(", "));
            }
            let expected = text_encoder.base_vocab() + text_encoder.new_rows().map_or(0, |r| r.size()[0]);
            if tokenizer.len() as i64 != expected {
                bail!("the tokenizer has {} tokens but the text encoder {expected} rows: they do not belong together", tokenizer.len());
            }
            let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
            let ids = tokenizer.add_tokens(&refs).with_context(|| format!("adding the tokens of {name}"))?;
            if ids.first() != Some(&expected) {
                bail!("new tokens got ids {ids:?}, expected them to follow the vocabulary at {expected}");
            }
            let mut rows = to_tch(&part.tensor)?.reshape([part.vectors() as i64, width as i64]);
            if let Some(existing) = text_encoder.new_rows() {
                rows = Tensor::cat(&[existing.to_kind(rows.kind()), rows], 0);
            }
            text_encoder.set_new_rows(rows)?;
            tracing::info!("loaded textual inversion embedding {token} ({} vector{}) from {name}", tokens.len(), if tokens.len() == 1 { "" } else { "s" });
            loaded.push(LoadedToken { token, vectors: tokens.len(), file: file.clone() });
        }
    }
    Ok(loaded)
}

/// diffusers' `maybe_convert_prompt`: every multi-vector token `P` in the prompt becomes
/// `P P_1 ... P_{n-1}` (plain substring replacement, as diffusers does).
pub fn expand_prompt(prompt: &str, tokenizer: &ClipTokenizer, loaded: &[LoadedToken]) -> Result<String> {
    let tokens = tokenizer.tokenize(prompt)?;
    let mut out = prompt.to_string();
    let mut seen = std::collections::HashSet::new();
    for t in tokens {
        if !seen.insert(t.clone()) {
            continue;
        }
        if let Some(l) = loaded.iter().find(|l| l.token == t && l.vectors > 1) {
            out = out.replace(&l.token, &vector_tokens(&l.token, l.vectors).join(" "));
        }
    }
    Ok(out)
}
