//! The CLIP tokenizer of SD 1.x/2.x, built the way transformers 5's `CLIPTokenizer` builds it, so
//! that prompts become the ids the text encoder was trained (and textual-inversion embeddings were
//! learned) with. Checked id for id against transformers in tests/tokenizer.rs.
//!
//! Pipeline (all from the `tokenizers` crate): NFC, runs of whitespace -> " ", lowercase; split by
//! CLIP's regex, byte-level; BPE with the `</w>` end-of-word suffix; `<|startoftext|> … <|endoftext|>`
//! around the ids; right truncation to `model_max_length` (77) keeping the end token; right padding
//! with the pad token (`<|endoftext|>` for SD 1.x, `!` for SD 2.x).
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use crate::formats::regular;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormSeq, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::utils::padding::{pad_encodings, PaddingDirection, PaddingParams, PaddingStrategy};
use tokenizers::utils::truncation::{truncate_encodings, TruncationParams};
use tokenizers::{AddedToken, Encoding, SplitDelimiterBehavior, Tokenizer};

/// CLIP's pre-tokenizer regex (transformers' `CLIPTokenizer`), run on the normalized text.
const SPLIT_REGEX: &str = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// The named special tokens, in transformers' order (bos, eos, unk, pad), with CLIP's defaults.
const SPECIALS: [(&str, &str); 4] =
    [("bos_token", "<|startoftext|>"), ("eos_token", "<|endoftext|>"), ("unk_token", "<|endoftext|>"), ("pad_token", "<|endoftext|>")];
/// CLIP's context length, used when tokenizer_config.json does not give a usable one.
const DEFAULT_MAX_LEN: usize = 77;

/// A special token as a config file gives it: a bare string, or a token with its matching flags.
/// transformers treats the two differently (a bare string is never matched case-insensitively).
#[derive(Clone, PartialEq)]
enum Spec {
    Str(String),
    Token(AddedToken),
}

impl Spec {
    fn content(&self) -> &str {
        match self {
            Spec::Str(s) => s,
            Spec::Token(t) => &t.content,
        }
    }
}

/// A CLIP BPE tokenizer loaded from a diffusers `tokenizer/` folder, with transformers 5's
/// padding, truncation and added-token (placeholder) behaviour.
pub struct ClipTokenizer {
    /// The folder it was read from, for messages.
    dir: std::path::PathBuf,
    tok: Tokenizer,
    max_len: usize,
    bos: u32,
    eos: u32,
    pad: (u32, String),
}

impl ClipTokenizer {
    /// Loads `dir`: vocabulary and merges from `tokenizer.json` (what transformers 5 saves) or else
    /// `vocab.json` + `merges.txt` (the SD folders on the Hub); special tokens and placeholders
    /// from `tokenizer_config.json` (`added_tokens_decoder`), else `special_tokens_map.json`,
    /// `added_tokens.json` and tokenizer.json's `added_tokens` — transformers' precedence.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let config = read_object(&config_path)?.unwrap_or_default();
        let json_path = dir.join("tokenizer.json");
        let json = read_object(&json_path)?;
        let (vocab, merges) = match &json {
            Some(j) => bpe_from_tokenizer_json(j).with_context(|| json_path.display().to_string())?,
            None => {
                let (v, m) = (dir.join("vocab.json"), dir.join("merges.txt"));
                if let Some(f) = [&v, &m].into_iter().find(|f| !f.exists()) {
                    bail!("{}: no tokenizer.json, and {} is missing", dir.display(), f.display());
                }
                (read_vocab(&v)?, read_merges(&m)?)
            }
        };
        let (specials, decoder) = saved_tokens(dir, &config, json.as_ref())?;
        let unk = specials[2].content().to_string();
        let model = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token(unk.clone())
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".into())
            .fuse_unk(false)
            .build()
            .map_err(|e| anyhow!("{}: building the BPE model: {e}", dir.display()))?;
        let mut tok = Tokenizer::new(model);
        let ws = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(|e| anyhow!("{e}"))?;
        tok.with_normalizer(Some(NormSeq::new(vec![NFC.into(), ws.into(), Lowercase.into()])));
        let split = Split::new(SplitPattern::Regex(SPLIT_REGEX.into()), SplitDelimiterBehavior::Removed, true).map_err(|e| anyhow!("{e}"))?;
        let byte_level = ByteLevel::new(false, true, true);
        tok.with_pre_tokenizer(Some(PreSeq::new(vec![split.into(), byte_level.into()])));

        tok.add_tokens(&initial_added_tokens(&specials, &decoder));
        for (id, t) in &decoder {
            let got = tok.token_to_id(&t.content).unwrap_or(u32::MAX);
            if got != *id {
                bail!("{}: added token {:?} is saved with id {id} but gets id {got}", dir.display(), t.content);
            }
        }
        let id_of = |s: &Spec| {
            let id = tok.token_to_id(s.content()).or_else(|| tok.token_to_id(&unk));
            id.ok_or_else(|| anyhow!("{}: special token {:?} is not in the vocabulary", dir.display(), s.content()))
        };
        let (bos, eos, pad) = (id_of(&specials[0])?, id_of(&specials[1])?, id_of(&specials[3])?);
        let (bos_s, eos_s) = (specials[0].content().to_string(), specials[1].content().to_string());
        let post = RobertaProcessing::new((eos_s, eos), (bos_s, bos)).trim_offsets(false).add_prefix_space(false);
        tok.with_post_processor(Some(post));
        let max_len = model_max_length(&config).with_context(|| config_path.display().to_string())?;
        Ok(Self { dir: dir.to_path_buf(), tok, max_len, bos, eos, pad: (pad, specials[3].content().to_string()) })
    }

    /// The folder the tokenizer was read from.
    pub fn folder(&self) -> &Path {
        &self.dir
    }

    /// The highest id it can give (vocabulary and added tokens); the text encoder it feeds must
    /// have a row for it.
    pub fn max_id(&self) -> Option<u32> {
        self.tok.get_vocab(true).into_values().max()
    }

    /// Adds placeholder tokens like transformers' `tokenizer.add_tokens([...])` (matched anywhere
    /// in the text, case-insensitively), returning their ids. Unlike transformers, a token that
    /// already has an id is an error (diffusers' textual_inversion.py refuses those too), so a
    /// placeholder can never take over a real word's embedding.
    pub fn add_tokens(&mut self, tokens: &[&str]) -> Result<Vec<i64>> {
        let mut seen = HashSet::new();
        for t in tokens {
            if t.is_empty() {
                bail!("cannot add an empty token");
            }
            if let Some(id) = self.tok.token_to_id(t) {
                bail!("the tokenizer already contains the token {t:?} (id {id}); pick a different placeholder");
            }
            if !seen.insert(*t) {
                bail!("token {t:?} is listed twice");
            }
        }
        let added: Vec<AddedToken> = tokens.iter().map(|t| AddedToken::from(*t, false)).collect();
        self.tok.add_tokens(&added);
        tokens.iter().map(|t| self.token_id(t).ok_or_else(|| anyhow!("token {t:?} was not added"))).collect()
    }

    /// The id of a token string (vocabulary entry like `cat</w>`, or added token), if any.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.tok.token_to_id(token).map(i64::from)
    }

    /// Vocabulary size including added tokens, like `len(tokenizer)`: the embedding table's rows.
    pub fn len(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    /// Never true for a loaded tokenizer; here because `len` is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Length every `encode` result has (77 for CLIP): the text encoder's positions.
    pub fn model_max_length(&self) -> usize {
        self.max_len
    }

    /// Id used to pad to `model_max_length` (49407 for SD 1.x, 0 for SD 2.x).
    pub fn pad_id(&self) -> i64 {
        self.pad.0.into()
    }

    /// Id of `<|startoftext|>`, always first.
    pub fn bos_id(&self) -> i64 {
        self.bos.into()
    }

    /// Id of `<|endoftext|>`, always last before padding (SD 2.x pools the text at it).
    pub fn eos_id(&self) -> i64 {
        self.eos.into()
    }

    /// `tokenizer(text, padding="max_length", truncation=True, max_length=model_max_length)
    /// .input_ids`: exactly `model_max_length` ids, the end token kept when truncating.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self.raw(text, false)?;
        let n_special = 2; // RobertaProcessing adds BOS and EOS to a single sequence
        let trunc = TruncationParams { max_length: self.max_len - n_special, ..Default::default() };
        let (enc, _) = truncate_encodings(enc, None, &trunc).map_err(|e| anyhow!("truncating {text:?}: {e}"))?;
        let mut enc = [self.tok.post_process(enc, None, true).map_err(|e| anyhow!("encoding {text:?}: {e}"))?];
        let pad = PaddingParams {
            strategy: PaddingStrategy::Fixed(self.max_len),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: self.pad.0,
            pad_type_id: 0,
            pad_token: self.pad.1.clone(),
        };
        pad_encodings(&mut enc, &pad).map_err(|e| anyhow!("padding {text:?}: {e}"))?;
        Ok(ids(&enc[0]))
    }

    /// `encode` for several prompts (a training or generation batch).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<i64>>> {
        texts.iter().map(|t| self.encode(t)).collect()
    }

    /// `tokenizer(text).input_ids`: BOS, the text, EOS, neither truncated nor padded; longer
    /// than `model_max_length` means `encode` cut the prompt (pipelines warn about it).
    pub fn encode_unpadded(&self, text: &str) -> Result<Vec<i64>> {
        Ok(ids(&self.raw(text, true)?))
    }

    /// `tokenizer.tokenize(text)`: the token strings without BOS/EOS (`photo</w>`, `<cat-toy>`),
    /// which diffusers' `maybe_convert_prompt` uses to expand multi-vector placeholders.
    pub fn tokenize(&self, text: &str) -> Result<Vec<String>> {
        Ok(self.raw(text, false)?.get_tokens().to_vec())
    }

    fn raw(&self, text: &str, specials: bool) -> Result<Encoding> {
        self.tok.encode(text, specials).map_err(|e| anyhow!("tokenizing {text:?}: {e}"))
    }
}

/// transformers' from_pretrained: the named special tokens (bos, eos, unk, pad; CLIP's defaults
/// where absent) and the saved added tokens by id, from `added_tokens_decoder` in
/// tokenizer_config.json, else special_tokens_map.json, added_tokens.json and tokenizer.json.
fn saved_tokens(dir: &Path, config: &Map<String, Value>, json: Option<&Map<String, Value>>) -> Result<(Vec<Spec>, BTreeMap<u32, AddedToken>)> {
    let present = |m: &Map<String, Value>, k: &str| m.get(k).filter(|v| !v.is_null()).cloned();
    let mut specials: Vec<Option<Spec>> = SPECIALS.iter().map(|(k, _)| present(config, k).map(|v| spec(&v, false)).transpose()).collect::<Result<_>>()?;
    let mut decoder = BTreeMap::new();
    let bad_id = |what: &str| anyhow!("{}: bad id for added token {what}", dir.display());
    if let Some(dec) = config.get("added_tokens_decoder") {
        let dec = dec.as_object().ok_or_else(|| bad_id("in added_tokens_decoder (not an object)"))?;
        for (id, t) in dec {
            decoder.insert(id.parse().map_err(|_| bad_id(id))?, added_token(t, false)?);
        }
    } else {
        if let Some(map) = read_object(&dir.join("special_tokens_map.json"))? {
            for ((key, _), slot) in SPECIALS.iter().zip(specials.iter_mut()) {
                if let Some(v) = present(&map, key) {
                    *slot = Some(spec(&v, true).with_context(|| format!("special_tokens_map.json: {key}"))?);
                }
            }
        }
        let named: HashSet<String> = specials.iter().flatten().map(|s| s.content().to_string()).collect();
        for (content, id) in read_object(&dir.join("added_tokens.json"))?.unwrap_or_default() {
            let id = id.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| bad_id(&content))?;
            decoder.insert(id, AddedToken::from(content.clone(), named.contains(&content)));
        }
        for t in json.and_then(|j| j.get("added_tokens")).and_then(Value::as_array).into_iter().flatten() {
            let id = t.get("id").and_then(Value::as_u64).and_then(|i| u32::try_from(i).ok());
            decoder.insert(id.ok_or_else(|| bad_id(&t.to_string()))?, added_token(t, false)?);
        }
    }
    for slot in specials.iter_mut().flatten() {
        if let Some(t) = decoder.values().rfind(|t: &&AddedToken| t.content == slot.content()) {
            *slot = Spec::Token(t.clone());
        }
    }
    let specials = specials.into_iter().zip(SPECIALS).map(|(s, (_, d))| s.unwrap_or(Spec::Str(d.into())));
    Ok((specials.collect(), decoder))
}

/// TokenizersBackend.__init__: the saved added tokens by id, then the named special tokens not
/// among them (a bare string becomes a special, never-normalized token). One entry per content,
/// with the flags of the last: what the Python `tokenizers` (0.23) keeps when a token is added
/// twice (SD 1.x's eos, then its pad); the Rust crate (0.22) would keep the first.
fn initial_added_tokens(specials: &[Spec], decoder: &BTreeMap<u32, AddedToken>) -> Vec<AddedToken> {
    let mut pending: Vec<Spec> = decoder.values().cloned().map(Spec::Token).collect();
    for s in specials {
        if !decoder.values().any(|t| t.content == s.content()) && !pending.contains(s) {
            pending.push(s.clone());
        }
    }
    let mut tokens: Vec<AddedToken> = Vec::new();
    for s in pending {
        let t = match s {
            Spec::Str(c) => AddedToken::from(c, true),
            Spec::Token(t) => {
                let special = t.special || specials.iter().any(|n| n.content() == t.content);
                t.special(special)
            }
        };
        match tokens.iter_mut().find(|x| x.content == t.content) {
            Some(x) => *x = t,
            None => tokens.push(t),
        }
    }
    tokens
}

fn ids(enc: &Encoding) -> Vec<i64> {
    enc.get_ids().iter().map(|&i| i64::from(i)).collect()
}

/// A JSON object file, `None` when the file does not exist.
fn read_object(path: &Path) -> Result<Option<Map<String, Value>>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = read_text(path)?;
    match serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))? {
        Value::Object(m) => Ok(Some(m)),
        _ => bail!("{}: expected a JSON object", path.display()),
    }
}

/// A tokenizer file's text: only a regular file, of at most [`regular::CONFIG_MAX_BYTES`].
fn read_text(path: &Path) -> Result<String> {
    Ok(regular::read_to_string(path, regular::CONFIG_MAX_BYTES)?)
}

/// `vocab.json`, as the `tokenizers` crate's `BPE::read_file` reads it (entries whose value is
/// not a number are skipped), but from bytes read through [`read_text`] (that function opens
/// the path itself, which hangs on a FIFO) and refusing ids beyond u32 (it truncates them).
fn read_vocab(path: &Path) -> Result<Vocab> {
    let json: Value = serde_json::from_str(&read_text(path)?).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let Value::Object(map) = json else { bail!("{}: expected a JSON object of token ids", path.display()) };
    map.into_iter()
        .filter_map(|(token, id)| match id {
            Value::Number(n) => Some((token, n)),
            _ => None,
        })
        .map(|(token, id)| match id.as_u64().and_then(|i| u32::try_from(i).ok()) {
            Some(id) => Ok((token, id)),
            None => bail!("{}: token {token:?} has id {id}; expected 0 to {}", path.display(), u32::MAX),
        })
        .collect()
}

/// `merges.txt` as `BPE::read_file` reads it: one "a b" pair a line, `#version` lines skipped.
fn read_merges(path: &Path) -> Result<Merges> {
    read_text(path)?
        .lines()
        .filter(|l| !l.starts_with("#version"))
        .enumerate()
        .map(|(rank, line)| match line.split(' ').collect::<Vec<_>>()[..] {
            [a, b] => Ok((a.to_string(), b.to_string())),
            _ => bail!("{}: merge {} is not a pair \"a b\": {line:?}", path.display(), rank + 1),
        })
        .collect()
}

/// vocab and merges of tokenizer.json's BPE model (merges as "a b" strings or ["a", "b"] pairs).
fn bpe_from_tokenizer_json(j: &Map<String, Value>) -> Result<(Vocab, Merges)> {
    let model = j.get("model").ok_or_else(|| anyhow!("no \"model\""))?;
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        bail!("model.type is not \"BPE\" (not a CLIP tokenizer)");
    }
    let vocab = model.get("vocab").and_then(Value::as_object).ok_or_else(|| anyhow!("model.vocab is not an object"))?;
    let vocab = vocab
        .iter()
        .map(|(k, v)| {
            let id = v.as_u64().and_then(|i| u32::try_from(i).ok());
            Ok((k.clone(), id.ok_or_else(|| anyhow!("model.vocab: bad id for {k:?}"))?))
        })
        .collect::<Result<Vocab>>()?;
    let merges = model.get("merges").and_then(Value::as_array).ok_or_else(|| anyhow!("model.merges is not a list"))?;
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let parts: Vec<&str> = match m {
                Value::String(s) => s.split(' ').collect(),
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            match parts[..] {
                [a, b] => Ok((a.to_string(), b.to_string())),
                _ => bail!("model.merges[{i}] is not a pair: {m}"),
            }
        })
        .collect::<Result<Merges>>()?;
    Ok((vocab, merges))
}

/// A special token from a config value: a string, or an object with `content` and flags.
fn spec(v: &Value, special: bool) -> Result<Spec> {
    match v {
        Value::String(s) => Ok(Spec::Str(s.clone())),
        _ => Ok(Spec::Token(added_token(v, special)?)),
    }
}

/// transformers' `AddedToken(**dict)`: flags left out take `AddedToken`'s defaults
/// (`normalized` = not special).
fn added_token(v: &Value, special: bool) -> Result<AddedToken> {
    let o = v.as_object().ok_or_else(|| anyhow!("expected a token string or object, got {v}"))?;
    let content = o.get("content").and_then(Value::as_str).ok_or_else(|| anyhow!("token without \"content\": {v}"))?;
    let flag = |k: &str| o.get(k).and_then(Value::as_bool);
    let special = if special { true } else { flag("special").unwrap_or(false) };
    let mut t = AddedToken::from(content, special);
    t.single_word = flag("single_word").unwrap_or(t.single_word);
    t.lstrip = flag("lstrip").unwrap_or(t.lstrip);
    t.rstrip = flag("rstrip").unwrap_or(t.rstrip);
    t.normalized = flag("normalized").unwrap_or(t.normalized);
    Ok(t)
}

/// `model_max_length` from tokenizer_config.json; 77 when absent or transformers' "no limit" value.
/// At most [`crate::models::config::MAX_POSITIONS`]: every prompt is padded to it (and the text
/// encoder must have that many positions, which the model loader checks).
fn model_max_length(config: &Map<String, Value>) -> Result<usize> {
    let Some(v) = config.get("model_max_length") else {
        return Ok(DEFAULT_MAX_LEN);
    };
    let max = crate::models::config::MAX_POSITIONS as f64;
    match v.as_f64() {
        Some(x) if x > 1e6 => Ok(DEFAULT_MAX_LEN),
        Some(x) if (2.0..=max).contains(&x) && x.fract() == 0.0 => Ok(x as usize),
        _ => bail!("model_max_length {v} is not a length from 2 (BOS + EOS) to {max} (or above 1e6: no limit)"),
    }
}
