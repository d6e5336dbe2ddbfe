//! Learned tokens: embedding files put into a tokenizer and text encoder, as diffusers'
//! `load_textual_inversion` does, and multi-vector tokens expanded in prompts, as its
//! `maybe_convert_prompt` does.
//!
//! On SDXL each part of a file goes to its own encoder's stack: `clip_l` to the first (CLIP
//! ViT-L), `clip_g` to the second; a diffusers training folder holds the pair
//! `learned_embeds.safetensors` (first) and `learned_embeds_2.safetensors` (second). A
//! single-encoder file (an SD 1.x embedding) goes into one SDXL encoder only when the user names
//! it (`FILE:TOKEN:clip_l`), as diffusers needs `text_encoder=` for it.
use super::TextStack;
use crate::formats::embeddings::{self, Encoder, Layout, Part};
use crate::models::clip::ClipTextModel;
use crate::models::tokenizer::ClipTokenizer;
use crate::tensors::to_tch;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// `--embedding FILE[:TOKEN][:clip_l|:clip_g]`: a file (or a folder holding `learned_embeds.*`),
/// optionally the token to use instead of the file's own, and optionally which SDXL encoder a
/// part goes to.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingSpec {
    pub path: PathBuf,
    pub token: Option<String>,
    /// `clip_l` / `clip_g`: load only that part (of an SDXL file), or a single-encoder file into
    /// that SDXL encoder.
    pub encoder: Option<Encoder>,
}

impl std::str::FromStr for EmbeddingSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if Path::new(s).exists() {
            return Ok(EmbeddingSpec { path: s.into(), token: None, encoder: None });
        }
        let mut rest = s;
        let mut encoder = None;
        for (suffix, e) in [(":clip_l", Encoder::ClipL), (":clip_g", Encoder::ClipG)] {
            if let Some(r) = rest.strip_suffix(suffix) {
                rest = r;
                encoder = Some(e);
            }
        }
        // `path:token`, unless what is left is itself an existing path.
        if !Path::new(rest).exists() {
            if let Some((path, token)) = rest.rsplit_once(':') {
                if Path::new(path).exists() {
                    let token = (!token.is_empty()).then(|| token.to_string());
                    return Ok(EmbeddingSpec { path: path.into(), token, encoder });
                }
            }
        }
        Ok(EmbeddingSpec { path: rest.into(), token: None, encoder })
    }
}

/// The file to read for `path`: itself, or in a folder the training script's output
/// (`learned_embeds.safetensors`, else `learned_embeds.bin`), as diffusers resolves folders.
pub fn resolve_file(path: &Path) -> Result<PathBuf> {
    Ok(resolve_files(path)?.remove(0).0)
}

/// The files to read for `path`, each with the text encoder (0 or 1) its parts go to when the
/// file says nothing: a file alone (None), or a training folder's `learned_embeds.*` (0) and
/// SDXL's `learned_embeds_2.safetensors` (1) when present.
pub fn resolve_files(path: &Path) -> Result<Vec<(PathBuf, Option<usize>)>> {
    if path.is_dir() {
        let first = ["learned_embeds.safetensors", "learned_embeds.bin"].iter().map(|n| path.join(n)).find(|f| f.is_file());
        let Some(first) = first else {
            bail!("{}: a folder without learned_embeds.safetensors or learned_embeds.bin", path.display());
        };
        let second = path.join("learned_embeds_2.safetensors");
        return Ok(if second.is_file() { vec![(first, Some(0)), (second, Some(1))] } else { vec![(first, None)] });
    }
    if !path.exists() {
        bail!("{}: no such embedding file", path.display());
    }
    Ok(vec![(path.to_path_buf(), None)])
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

/// Loads embedding files into one tokenizer and text encoder (SD 1.x/2.x).
pub fn load(specs: &[EmbeddingSpec], tokenizer: &mut ClipTokenizer, text_encoder: &mut ClipTextModel) -> Result<Vec<LoadedToken>> {
    let mut loaded = Vec::new();
    for spec in specs {
        for (file, _) in resolve_files(&spec.path)? {
            let parts = single_encoder_parts(spec, &file, text_encoder.hidden_size())?;
            loaded.extend(add_tokens(tokenizer, text_encoder, &parts, &file, spec)?);
        }
    }
    Ok(loaded)
}

/// Loads embedding files into the model's stacks: one (SD 1.x/2.x) or SDXL's two.
pub fn load_into(specs: &[EmbeddingSpec], stacks: &mut [&mut TextStack]) -> Result<()> {
    if stacks.len() == 1 {
        let stack = &mut stacks[0];
        let loaded = load(specs, &mut stack.tokenizer, &mut stack.encoder)?;
        stack.tokens.extend(loaded);
        return Ok(());
    }
    for spec in specs {
        for (file, folder_slot) in resolve_files(&spec.path)? {
            let parts = xl_parts(spec, &file, folder_slot)?;
            for (slot, stack) in stacks.iter_mut().enumerate() {
                let mine: Vec<(Part, String)> = parts.iter().filter(|(s, _, _)| *s == slot).map(|(_, p, t)| (p.clone(), t.clone())).collect();
                if !mine.is_empty() {
                    let loaded = add_tokens(&mut stack.tokenizer, &mut stack.encoder, &mine, &file, spec)?;
                    stack.tokens.extend(loaded);
                }
            }
        }
    }
    Ok(())
}

/// The token of embedding `i` of `ef`: `:TOKEN`, else the file's own (see `trigger`).
fn token_of(spec: &EmbeddingSpec, ef: &embeddings::EmbeddingFile, i: usize, file: &Path) -> Result<String> {
    if ef.embeddings.len() > 1 && spec.token.is_some() {
        bail!("{} holds {} embeddings; a single :TOKEN cannot name them all", file.display(), ef.embeddings.len());
    }
    Ok(spec.token.clone().unwrap_or_else(|| ef.trigger(i, &embeddings::file_stem(file))))
}

/// For a one-encoder model `width` wide: each embedding's part, with its token.
fn single_encoder_parts(spec: &EmbeddingSpec, file: &Path, width: i64) -> Result<Vec<(Part, String)>> {
    let ef = embeddings::read(file)?;
    let name = file.display().to_string();
    let mut out = Vec::new();
    for (i, e) in ef.embeddings.iter().enumerate() {
        let token = token_of(spec, &ef, i, file)?;
        let part = match (ef.layout, spec.encoder, e.part(Encoder::TextEncoder)) {
            // `FILE:TOKEN:clip_l` takes that part of an SDXL file (its clip_l fits SD 1.x).
            (Layout::Sdxl, Some(which), _) => e.part(which).with_context(|| format!("{name}: token {token} has no {} part", which.key()))?,
            (Layout::Sdxl, None, _) | (_, _, None) => {
                let widths: Vec<String> = e.parts.iter().map(|p| format!("{} {}", p.encoder.key(), p.width())).collect();
                bail!(
                    "{name}: token {token} is an SDXL embedding ({}); this model's text encoder is {width} wide and takes one (name it: {}:{token}:clip_l)",
                    widths.join(" + "),
                    spec.path.display()
                );
            }
            (_, _, Some(p)) => p,
        };
        out.push((part.clone(), token));
    }
    Ok(out)
}

/// For SDXL: each part of each embedding, with the stack (0: CLIP ViT-L, 1: OpenCLIP
/// ViT-bigG) it goes to, and its token.
fn xl_parts(spec: &EmbeddingSpec, file: &Path, folder_slot: Option<usize>) -> Result<Vec<(usize, Part, String)>> {
    let ef = embeddings::read(file)?;
    let name = file.display().to_string();
    let slot_of = |e: Encoder| match e {
        Encoder::ClipL => Some(0),
        Encoder::ClipG => Some(1),
        Encoder::TextEncoder => None,
    };
    let mut out = Vec::new();
    for (i, e) in ef.embeddings.iter().enumerate() {
        let token = token_of(spec, &ef, i, file)?;
        for part in &e.parts {
            let slot = match (part.encoder, spec.encoder, folder_slot) {
                // A part named by the file goes to its encoder (only the one asked for, if any).
                (Encoder::ClipL | Encoder::ClipG, Some(which), _) if which != part.encoder => continue,
                (Encoder::ClipL | Encoder::ClipG, _, _) => slot_of(part.encoder).unwrap_or(0),
                (Encoder::TextEncoder, Some(which), _) => slot_of(which).unwrap_or(0),
                (Encoder::TextEncoder, None, Some(slot)) => slot,
                (Encoder::TextEncoder, None, None) => bail!(
                    "{name}: token {token} is a single-encoder embedding ({} wide, {}); this SDXL model has two text encoders: \
                     name the one it is for, {}:{token}:clip_l (CLIP ViT-L, 768 wide) or :clip_g (OpenCLIP ViT-bigG, 1280 wide)",
                    part.width(),
                    embeddings::model_family(part.width()),
                    spec.path.display()
                ),
            };
            out.push((slot, part.clone(), token.clone()));
        }
    }
    Ok(out)
}

/// Adds each `(part, token)` of one file — `token` (and `token_1, ...` for several vectors) to
/// the tokenizer and its rows to the text encoder — refusing what would not fit. One file's
/// tokens are added in one call and its rows in one concatenation, so a file of many
/// embeddings loads in time linear in its size.
fn add_tokens(
    tokenizer: &mut ClipTokenizer,
    text_encoder: &mut ClipTextModel,
    parts: &[(Part, String)],
    file: &Path,
    spec: &EmbeddingSpec,
) -> Result<Vec<LoadedToken>> {
    let name = file.display().to_string();
    let width = text_encoder.hidden_size() as usize;
    let mut all_tokens: Vec<String> = Vec::new();
    let mut rows = Vec::with_capacity(parts.len());
    let mut loaded = Vec::with_capacity(parts.len());
    let mut seen = std::collections::HashSet::new();
    for (part, token) in parts {
        if part.width() != width {
            let family = embeddings::model_family(part.width());
            let which =
                if part.encoder == Encoder::TextEncoder { "this model's text encoder".to_string() } else { format!("the {} encoder", part.encoder.key()) };
            bail!("{name}: token {token} has {}-wide vectors ({family}) but {which} is {width} wide", part.width());
        }
        let tokens = vector_tokens(token, part.vectors());
        if tokenizer.token_id(token).is_some() || !seen.insert(token.clone()) {
            bail!("{name}: token {token} is already in the tokenizer's vocabulary; choose another with {}:OTHER", spec.path.display());
        }
        if tokens.len() > 1 && (tokenizer.token_id(&tokens[1]).is_some() || tokens[1..].iter().any(|t| seen.contains(t))) {
            bail!("{name}: multi-vector token [{}] is already in the tokenizer's vocabulary", tokens.join(", "));
        }
        seen.extend(tokens[1..].iter().cloned());
        rows.push(to_tch(&part.tensor)?.reshape([part.vectors() as i64, width as i64]));
        loaded.push(LoadedToken { token: token.to_string(), vectors: tokens.len(), file: file.to_path_buf() });
        all_tokens.extend(tokens);
    }
    if loaded.is_empty() {
        return Ok(loaded);
    }
    let expected = text_encoder.base_vocab() + text_encoder.new_rows().map_or(0, |r| r.size()[0]);
    if tokenizer.len() as i64 != expected {
        bail!("the tokenizer has {} tokens but the text encoder {expected} rows: they do not belong together", tokenizer.len());
    }
    let refs: Vec<&str> = all_tokens.iter().map(String::as_str).collect();
    let ids = tokenizer.add_tokens(&refs).with_context(|| format!("adding the tokens of {name}"))?;
    if ids.first() != Some(&expected) {
        bail!("new tokens got ids {:?}, expected them to follow the vocabulary at {expected}", &ids[..ids.len().min(8)]);
    }
    // As loading them one by one would leave them: in the last embedding's element type.
    let kind = rows[rows.len() - 1].kind();
    let mut all = Vec::with_capacity(rows.len() + 1);
    if let Some(existing) = text_encoder.new_rows() {
        all.push(existing.to_kind(kind));
    }
    all.extend(rows.iter().map(|r| r.to_kind(kind)));
    text_encoder.set_new_rows(Tensor::cat(&all, 0))?;
    for t in &loaded {
        tracing::info!("loaded textual inversion embedding {} ({} vector{}) from {name}", t.token, t.vectors, if t.vectors == 1 { "" } else { "s" });
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
