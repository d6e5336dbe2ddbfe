//! Writing embeddings in the layouts other tools load unchanged.
use super::{Embedding, EmbeddingFile, Encoder};
use crate::error::{Error, Result};
use crate::pickle::Value;
use crate::tensor::RawTensor;
use crate::torch_file::TorchWriter;
use crate::{safetensors_io, DType};
use std::path::Path;

/// Output layouts of `convert` (and of training).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFormat {
    /// `{token: [n, D]}` safetensors with metadata `{"format": "pt"}`, as `textual_inversion.py`.
    Diffusers,
    /// The same dict through `torch.save` (`--no_safe_serialization`).
    DiffusersBin,
    /// The A1111 web UI's `.pt` dict.
    A1111,
    /// `{"clip_g": [n, 1280], "clip_l": [n, 768]}` safetensors, as A1111 and kohya read for SDXL.
    Sdxl,
    /// kohya-ss's `{"emb_params": [n, D]}` safetensors (SD 1.x/2.x).
    Kohya,
}

impl OutFormat {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "diffusers" | "safetensors" => OutFormat::Diffusers,
            "diffusers-bin" | "bin" => OutFormat::DiffusersBin,
            "a1111" | "pt" => OutFormat::A1111,
            "sdxl" => OutFormat::Sdxl,
            "kohya" => OutFormat::Kohya,
            _ => return None,
        })
    }
    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            OutFormat::Diffusers => "diffusers",
            OutFormat::DiffusersBin => "diffusers-bin",
            OutFormat::A1111 => "a1111",
            OutFormat::Sdxl => "sdxl",
            OutFormat::Kohya => "kohya",
        }
    }
    /// The format a file name suggests when none is given.
    pub fn from_extension(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "safetensors" => Some(OutFormat::Diffusers),
            "bin" => Some(OutFormat::DiffusersBin),
            "pt" => Some(OutFormat::A1111),
            _ => None,
        }
    }
}

/// The `*` placeholder's id in SD's CLIP vocabulary, which A1111 stores in `string_to_token`.
const A1111_STAR_TOKEN: i64 = 265;

/// Writes one embedding (all of its text encoders' vectors) atomically.
///
/// `token` is the key (diffusers) or `name` (A1111). `source` supplies A1111 fields (`step`,
/// `sd_checkpoint`, `sd_checkpoint_name`) when converting from an A1111 file.
pub fn write(path: &Path, format: OutFormat, token: &str, embedding: &Embedding, source: Option<&EmbeddingFile>, dtype: Option<DType>) -> Result<()> {
    let name = path.display().to_string();
    let cast = |t: &RawTensor| -> Result<RawTensor> {
        let t = match dtype {
            Some(d) => t.cast(d)?,
            None => t.clone(),
        };
        Ok(as_rows(t))
    };
    let single = || -> Result<RawTensor> {
        match embedding.parts.as_slice() {
            [p] => cast(&p.tensor),
            _ => Err(Error::format(
                &name,
                format!("this format holds one text encoder's vectors, but the embedding has {} (an SDXL embedding): use --format sdxl", embedding.parts.len()),
            )),
        }
    };
    match format {
        OutFormat::Diffusers => safetensors_io::save_pt(path, &[(token.to_string(), single()?)]),
        OutFormat::DiffusersBin => {
            let mut w = TorchWriter::new();
            let t = w.tensor(single()?);
            w.save(path, &Value::Dict(vec![(Value::Str(token.to_string()), t)]))
        }
        OutFormat::A1111 => {
            let mut w = TorchWriter::new();
            let t = w.tensor(single()?);
            let field = |k: &str| -> Value {
                match source.and_then(|s| s.metadata.get(k)) {
                    Some(v) if k == "step" => v.parse().map(Value::Int).unwrap_or(Value::None),
                    Some(v) if v != "None" => Value::Str(v.clone()),
                    _ => Value::None,
                }
            };
            let root = Value::Dict(vec![
                (s("string_to_token"), Value::Dict(vec![(s("*"), Value::Int(A1111_STAR_TOKEN))])),
                (s("string_to_param"), Value::Dict(vec![(s("*"), t)])),
                (s("name"), s(token)),
                (s("step"), field("step")),
                (s("sd_checkpoint"), field("sd_checkpoint")),
                (s("sd_checkpoint_name"), field("sd_checkpoint_name")),
            ]);
            w.save(path, &root)
        }
        OutFormat::Kohya => safetensors_io::save(path, &[("emb_params".into(), single()?)], None),
        OutFormat::Sdxl => {
            let (Some(l), Some(g)) = (embedding.part(Encoder::ClipL), embedding.part(Encoder::ClipG)) else {
                let widths: Vec<String> = embedding.parts.iter().map(|p| p.width().to_string()).collect();
                return Err(Error::format(
                    &name,
                    format!("the sdxl format needs clip_l (768 wide) and clip_g (1280 wide) vectors; this embedding has {} wide", widths.join(" + ")),
                ));
            };
            safetensors_io::save(path, &[("clip_g".into(), cast(&g.tensor)?), ("clip_l".into(), cast(&l.tensor)?)], None)
        }
    }
}

fn s(v: &str) -> Value {
    Value::Str(v.to_string())
}

/// `[D]` becomes `[1, D]`: every writer stores 2-D rows, as the training script does.
fn as_rows(mut t: RawTensor) -> RawTensor {
    if t.shape.len() == 1 {
        t.shape.insert(0, 1);
    }
    t
}
