//! Textual Inversion embedding files in every layout people publish, detected by content
//! (never by extension or folder):
//!
//! | layout | where it comes from | keys |
//! |---|---|---|
//! | diffusers | `textual_inversion.py`, sd-concepts-library | `{token: [D] or [n, D]}` (.safetensors or .bin) |
//! | a1111 | AUTOMATIC1111 web UI, original TI code | `string_to_param["*"]`, `name`, `step`, `sd_checkpoint`, ... |
//! | kohya | kohya-ss, A1111 safetensors | `{"emb_params": [n, D]}` |
//! | sdxl | kohya, A1111 SDXL | `{"clip_l": [n, 768], "clip_g": [n, 1280]}` (or `text_encoders_0/1`) |
//! | bare | `torch.save(tensor)` | a tensor |
//!
//! plus A1111 embeddings inside a PNG (the `sd-ti-embedding` text chunk, or the copy encoded in
//! the pixels).
mod png_embed;
mod write;

pub use write::{write, OutFormat};

use crate::error::{Error, Result};
use crate::pickle::Value;
use crate::safetensors_io::{self, SafetensorsFile};
use crate::tensor::RawTensor;
use crate::torch_file::{self, Container, TorchFile, LFS_POINTER};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// Tensors in an embedding file add up to far less; more means a model checkpoint was passed.
pub const MAX_EMBEDDING_BYTES: usize = 256 << 20;

/// How the tensors are arranged (what tool wrote the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Diffusers,
    A1111,
    Kohya,
    Sdxl,
    Bare,
}

/// The file container the layout was found in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    Safetensors,
    /// `torch.save` zip, with its record folder name.
    TorchZip(String),
    TorchLegacy,
    /// PNG `sd-ti-embedding` text chunk.
    PngText,
    /// Data hidden in the pixels of an A1111 embedding PNG.
    PngPixels,
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileKind::Safetensors => write!(f, "safetensors"),
            FileKind::TorchZip(p) => write!(f, "torch.save zip (folder `{p}`)"),
            FileKind::TorchLegacy => write!(f, "torch.save legacy (pre-1.6)"),
            FileKind::PngText => write!(f, "PNG text chunk sd-ti-embedding"),
            FileKind::PngPixels => write!(f, "PNG pixel-encoded data"),
        }
    }
}

/// Which text encoder a block of vectors belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoder {
    /// The one text encoder of SD 1.x / 2.x (or the first of SDXL, for single-encoder files).
    TextEncoder,
    /// SDXL's CLIP ViT-L (768 wide).
    ClipL,
    /// SDXL's OpenCLIP ViT-bigG (1280 wide).
    ClipG,
}

impl Encoder {
    pub fn key(self) -> &'static str {
        match self {
            Encoder::TextEncoder => "text_encoder",
            Encoder::ClipL => "clip_l",
            Encoder::ClipG => "clip_g",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub encoder: Encoder,
    /// As stored: `[D]` or `[n, D]`.
    pub tensor: RawTensor,
}

impl Part {
    pub fn vectors(&self) -> usize {
        if self.tensor.shape.len() == 2 {
            self.tensor.shape[0]
        } else {
            1
        }
    }
    pub fn width(&self) -> usize {
        self.tensor.shape.last().copied().unwrap_or(0)
    }
    /// The vectors as `[n, D]` float32 rows.
    pub fn rows_f32(&self) -> Vec<Vec<f32>> {
        let w = self.width().max(1);
        self.tensor.to_f32_vec().chunks(w).map(|c| c.to_vec()).collect()
    }
}

/// One learned word: its vectors for each text encoder it targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// The token stored in the file: the diffusers key, or A1111's `name`. None for layouts
    /// that store none (kohya, sdxl, bare tensors).
    pub stored_token: Option<String>,
    pub parts: Vec<Part>,
}

impl Embedding {
    pub fn vectors(&self) -> usize {
        self.parts.first().map(Part::vectors).unwrap_or(0)
    }
    pub fn part(&self, encoder: Encoder) -> Option<&Part> {
        self.parts.iter().find(|p| p.encoder == encoder)
    }
}

/// An embedding file as read.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingFile {
    pub kind: FileKind,
    pub layout: Layout,
    /// safetensors `__metadata__`, or A1111's scalar fields (`name`, `step`, `sd_checkpoint`, ...).
    pub metadata: BTreeMap<String, String>,
    pub embeddings: Vec<Embedding>,
}

impl EmbeddingFile {
    /// The word a prompt uses for embedding `i`, the way the tool that made the file does it:
    /// diffusers files use their key; the A1111 web UI names `.pt`/`.safetensors` embeddings
    /// after the file (`stem`) and PNG embeddings after their stored `name`.
    pub fn trigger(&self, i: usize, stem: &str) -> String {
        let stored = self.embeddings.get(i).and_then(|e| e.stored_token.clone());
        match (self.layout, &self.kind) {
            (Layout::Diffusers, _) => stored.unwrap_or_else(|| stem.to_string()),
            (_, FileKind::PngText | FileKind::PngPixels) => stored.unwrap_or_else(|| stem.to_string()),
            _ => stem.to_string(),
        }
    }
}

/// The model family a vector width belongs to.
pub fn model_family(width: usize) -> &'static str {
    match width {
        768 => "SD 1.x / SDXL clip_l (CLIP ViT-L/14)",
        1024 => "SD 2.x (OpenCLIP ViT-H/14)",
        1280 => "SDXL clip_g (OpenCLIP ViT-bigG/14)",
        _ => "unknown model family",
    }
}

/// The file name without its last extension: the trigger word the A1111 web UI gives files
/// that store none (`bad-artist.pt` → `bad-artist`).
pub fn file_stem(path: &Path) -> String {
    path.file_stem().and_then(|s| s.to_str()).unwrap_or("embedding").to_string()
}

/// Reads an embedding file of any supported layout.
pub fn read(path: &Path) -> Result<EmbeddingFile> {
    let name = path.display().to_string();
    let mut head = [0u8; 32];
    let n = {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(Error::format(name, "is a folder, not an embedding file"));
        }
        read_up_to(&mut f, &mut head).map_err(|e| Error::io(path, e))?
    };
    let head = &head[..n];
    if head.starts_with(png_embed::SIGNATURE) {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        return png_embed::read(&name, &bytes);
    }
    if torch_file::sniff(head) || head.starts_with(b"PK") {
        let tf = match TorchFile::open(path) {
            Ok(tf) => tf,
            Err(e) => {
                // A training checkpoint's Lightning objects: say what the file is, if it is a model.
                let lightning = matches!(&e, Error::RefusedGlobal { module, name, .. } if crate::pickle::is_inert(module, name));
                return Err(if lightning && TorchFile::open_checkpoint(path).is_ok_and(|c| holds_model(&c)) { not_an_embedding(&name) } else { e });
            }
        };
        if holds_model(&tf) {
            return Err(not_an_embedding(&name));
        }
        return from_torch(&tf);
    }
    if head.len() >= 9 && head[8] == b'{' {
        let st = SafetensorsFile::open(path)?;
        if st.view().is_ok_and(|v| is_model_checkpoint(v.names().into_iter())) {
            return Err(not_an_embedding(&name));
        }
        return from_safetensors(&name, st.bytes());
    }
    if head.starts_with(LFS_POINTER) {
        return Err(Error::format(name, "this is a Git LFS pointer, not the file: fetch it with `git lfs pull`"));
    }
    if n == 0 {
        return Err(Error::format(name, "the file is empty"));
    }
    Err(Error::format(name, "not an embedding file: neither safetensors, torch.save (.bin/.pt) nor an A1111 PNG"))
}

/// Whether tensor names are a whole Stable Diffusion model in the original (LDM/SGM) layout.
fn is_model_checkpoint<'a>(mut keys: impl Iterator<Item = &'a str>) -> bool {
    keys.any(|k| k.starts_with("model.diffusion_model."))
}

fn holds_model(tf: &TorchFile) -> bool {
    is_model_checkpoint(tf.state_dict_tensors().iter().map(|(k, _)| k.as_str()))
}

fn not_an_embedding(name: &str) -> Error {
    Error::format(
        name,
        "is a Stable Diffusion model checkpoint (the original single-file layout), not an embedding: pass it as \
         --pretrained_model_name_or_path to generate or train, or write a diffusers folder with `textual-inversion convert-model`",
    )
}

/// Reads an embedding from bytes in memory (same detection as [`read`]).
pub fn read_bytes(name: &str, bytes: &[u8]) -> Result<EmbeddingFile> {
    if bytes.starts_with(png_embed::SIGNATURE) {
        png_embed::read(name, bytes)
    } else if torch_file::sniff(bytes) || bytes.starts_with(b"PK") {
        from_torch(&TorchFile::from_bytes(name, bytes.to_vec())?)
    } else if safetensors_io::sniff(bytes) {
        from_safetensors(name, bytes)
    } else if bytes.starts_with(LFS_POINTER) {
        Err(Error::format(name, "this is a Git LFS pointer, not the file: fetch it with `git lfs pull`"))
    } else {
        Err(Error::format(name, "not an embedding file: neither safetensors, torch.save (.bin/.pt) nor an A1111 PNG"))
    }
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A source-independent view of a file's content, with tensors already read.
#[derive(Debug)]
enum Node {
    Tensor(RawTensor),
    Map(Vec<(String, Node)>),
    /// Strings and numbers, rendered as text (for metadata).
    Scalar(String),
    None,
    Other(&'static str),
}

impl Node {
    fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(items) => items.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn describe(&self) -> String {
        match self {
            Node::Tensor(_) => "a tensor".into(),
            Node::Map(_) => "a dict".into(),
            Node::Scalar(s) => format!("the value {s:?}"),
            Node::None => "None".into(),
            Node::Other(k) => format!("a {k}"),
        }
    }
    fn keys(&self) -> Vec<&str> {
        match self {
            Node::Map(items) => items.iter().map(|(k, _)| k.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

struct Budget(usize);

fn from_torch(tf: &TorchFile) -> Result<EmbeddingFile> {
    let mut budget = Budget(MAX_EMBEDDING_BYTES);
    let node = torch_node(tf, &tf.root, &mut budget, 0)?;
    let kind = match &tf.container {
        Container::Zip { prefix } => FileKind::TorchZip(prefix.clone()),
        Container::Legacy => FileKind::TorchLegacy,
    };
    classify(tf.name(), node, kind, BTreeMap::new())
}

fn torch_node(tf: &TorchFile, v: &Value, budget: &mut Budget, depth: usize) -> Result<Node> {
    Ok(match v {
        Value::Tensor(t) => {
            let bytes = crate::tensor::numel(&t.shape).and_then(|n| n.checked_mul(t.storage.dtype.size())).unwrap_or(usize::MAX);
            budget.0 = budget.0.checked_sub(bytes).ok_or_else(|| {
                Error::too_large(tf.name(), format!("holds more than {} MiB of tensors: a model checkpoint, not an embedding", MAX_EMBEDDING_BYTES >> 20))
            })?;
            Node::Tensor(tf.tensor(t)?)
        }
        // Only the top levels matter for embeddings; deeper structure is summarised.
        Value::Dict(_) if depth < 4 => {
            let mut items = Vec::new();
            for (k, x) in v.dict_entries().unwrap_or_default() {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                items.push((key, torch_node(tf, x, budget, depth + 1)?));
            }
            Node::Map(items)
        }
        // torch.nn.ParameterDict (original TI code): its parameters live in `_parameters`.
        Value::Object { state, .. } => match state.get("_parameters") {
            Some(params) => torch_node(tf, params, budget, depth)?,
            None => Node::Other("object"),
        },
        Value::Str(s) => Node::Scalar(s.clone()),
        Value::Int(i) => Node::Scalar(i.to_string()),
        Value::Float(f) => Node::Scalar(f.to_string()),
        Value::Bool(b) => Node::Scalar(b.to_string()),
        Value::None => Node::None,
        other => Node::Other(other.kind()),
    })
}

fn from_safetensors(name: &str, bytes: &[u8]) -> Result<EmbeddingFile> {
    let meta = safetensors_io::metadata(name, bytes)?;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| Error::format(name, format!("not a valid safetensors file: {e}")))?;
    let total: usize = st.tensors().iter().map(|(_, v)| v.data().len()).sum();
    if total > MAX_EMBEDDING_BYTES {
        return Err(Error::too_large(name, format!("holds {} MiB of tensors: a model checkpoint, not an embedding", total >> 20)));
    }
    let items = safetensors_io::read_view(name, &st)?.into_iter().map(|(k, t)| (k, Node::Tensor(t))).collect();
    classify(name, Node::Map(items), FileKind::Safetensors, meta)
}

fn tensor_part(file: &str, key: &str, node: Option<&Node>, encoder: Encoder) -> Result<Part> {
    match node {
        Some(Node::Tensor(t)) => {
            if !t.dtype.is_float() {
                return Err(Error::format(file, format!("`{key}` is a {} tensor; embeddings are floating point", t.dtype.torch_name())));
            }
            if t.shape.is_empty() || t.shape.len() > 2 || t.shape.contains(&0) {
                return Err(Error::format(file, format!("`{key}` has shape {:?}; an embedding is [D] or [n, D] with n, D > 0", t.shape)));
            }
            Ok(Part { encoder, tensor: t.clone() })
        }
        Some(other) => Err(Error::format(file, format!("`{key}` is {}, not a tensor", other.describe()))),
        None => Err(Error::format(file, format!("`{key}` is missing"))),
    }
}

fn scalar_metadata(node: &Node, out: &mut BTreeMap<String, String>) {
    if let Node::Map(items) = node {
        for (k, v) in items {
            match v {
                Node::Scalar(s) => {
                    out.insert(k.clone(), s.clone());
                }
                Node::None => {
                    out.insert(k.clone(), "None".into());
                }
                _ => {}
            }
        }
    }
}

fn classify(file: &str, node: Node, kind: FileKind, mut metadata: BTreeMap<String, String>) -> Result<EmbeddingFile> {
    let done = |layout, embeddings, metadata| Ok(EmbeddingFile { kind: kind.clone(), layout, metadata, embeddings });
    match &node {
        Node::Tensor(_) => {
            let part = tensor_part(file, "tensor", Some(&node), Encoder::TextEncoder)?;
            return done(Layout::Bare, vec![Embedding { stored_token: None, parts: vec![part] }], metadata);
        }
        Node::Map(items) if items.is_empty() => {
            return Err(Error::format(file, "holds no embedding: the file contains an empty dict"));
        }
        Node::Map(_) => {}
        other => return Err(Error::format(file, format!("holds no embedding: expected a dict of tensors or a tensor, found {}", other.describe()))),
    }
    let keys = node.keys();
    if let Some(params) = node.get("string_to_param") {
        let (key, tensor) = match params {
            Node::Map(p) => p
                .iter()
                .find(|(k, _)| k == "*")
                .or_else(|| p.first())
                .map(|(k, v)| (format!("string_to_param[{k:?}]"), v))
                .ok_or_else(|| Error::format(file, "`string_to_param` is empty"))?,
            other => (String::from("string_to_param"), other),
        };
        let part = tensor_part(file, &key, Some(tensor), Encoder::TextEncoder)?;
        scalar_metadata(&node, &mut metadata);
        let stored = match node.get("name") {
            Some(Node::Scalar(s)) => Some(s.clone()),
            _ => None,
        };
        return done(Layout::A1111, vec![Embedding { stored_token: stored, parts: vec![part] }], metadata);
    }
    let sdxl_keys = [("clip_l", "clip_g"), ("text_encoders_0", "text_encoders_1")];
    for (l, g) in sdxl_keys {
        if node.get(l).is_some() && node.get(g).is_some() {
            let pl = tensor_part(file, l, node.get(l), Encoder::ClipL)?;
            let pg = tensor_part(file, g, node.get(g), Encoder::ClipG)?;
            if pl.vectors() != pg.vectors() {
                return Err(Error::format(file, format!("`{l}` has {} vectors but `{g}` has {}", pl.vectors(), pg.vectors())));
            }
            scalar_metadata(&node, &mut metadata);
            return done(Layout::Sdxl, vec![Embedding { stored_token: None, parts: vec![pl, pg] }], metadata);
        }
    }
    if keys == ["emb_params"] {
        let part = tensor_part(file, "emb_params", node.get("emb_params"), Encoder::TextEncoder)?;
        return done(Layout::Kohya, vec![Embedding { stored_token: None, parts: vec![part] }], metadata);
    }
    let Node::Map(items) = &node else { unreachable!("checked above") };
    if items.iter().all(|(_, v)| matches!(v, Node::Tensor(_))) {
        // Each item's own value: looking each key up among all of them would be quadratic.
        let mut embeddings = Vec::with_capacity(items.len());
        for (k, v) in items {
            let part = tensor_part(file, k, Some(v), Encoder::TextEncoder)?;
            embeddings.push(Embedding { stored_token: Some(k.clone()), parts: vec![part] });
        }
        return done(Layout::Diffusers, embeddings, metadata);
    }
    let shown: Vec<String> = keys.iter().take(12).map(|k| format!("{k:?}")).collect();
    Err(Error::format(
        file,
        format!(
            "not a known embedding layout: top-level keys [{}{}]; expected {{token: tensor}} (diffusers), `string_to_param` (A1111), `emb_params` (kohya) or `clip_l` + `clip_g` (SDXL)",
            shown.join(", "),
            if keys.len() > 12 { ", ..." } else { "" }
        ),
    ))
}
