//! `textual-inversion inspect FILE...`
use super::printable::line;
use crate::formats::embeddings::{self, EmbeddingFile};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Embedding files in any format (detected by content, not by extension).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print one JSON array (for scripts) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct FileReport {
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
}

#[derive(Debug, Serialize)]
pub struct Content {
    pub layout: embeddings::Layout,
    pub container: String,
    pub embeddings: Vec<EmbeddingReport>,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingReport {
    /// The word to use in prompts (see `EmbeddingFile::trigger`).
    pub token: String,
    pub stored_token: Option<String>,
    pub parts: Vec<PartReport>,
}

#[derive(Debug, Serialize)]
pub struct PartReport {
    pub encoder: embeddings::Encoder,
    pub vectors: usize,
    pub width: usize,
    pub shape: Vec<usize>,
    pub dtype: &'static str,
    pub model: &'static str,
    pub norms: Vec<f64>,
}

pub fn report(path: &Path, f: &EmbeddingFile) -> Content {
    let stem = embeddings::file_stem(path);
    Content {
        layout: f.layout,
        container: f.kind.to_string(),
        embeddings: f
            .embeddings
            .iter()
            .enumerate()
            .map(|(i, e)| EmbeddingReport {
                token: f.trigger(i, &stem),
                stored_token: e.stored_token.clone(),
                parts: e
                    .parts
                    .iter()
                    .map(|p| PartReport {
                        encoder: p.encoder,
                        vectors: p.vectors(),
                        width: p.width(),
                        shape: p.tensor.shape.clone(),
                        dtype: p.tensor.dtype.torch_name(),
                        model: embeddings::model_family(p.width()),
                        norms: p.tensor.row_norms(),
                    })
                    .collect(),
            })
            .collect(),
        metadata: f.metadata.clone(),
    }
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    let mut failed = 0;
    for path in &args.files {
        let file = path.display().to_string();
        match embeddings::read(path) {
            Ok(f) => reports.push(FileReport { file, error: None, content: Some(report(path, &f)) }),
            Err(e) => {
                failed += 1;
                if !args.json {
                    tracing::error!("{e}");
                }
                reports.push(FileReport { file, error: Some(e.to_string()), content: None });
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in reports.iter().filter(|r| r.content.is_some()) {
            print_text(r);
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} file(s) could not be read", args.files.len());
    }
    Ok(())
}

/// Text output: everything that comes from the file (its name, tokens, metadata, container
/// folder) is escaped by [`super::printable::line`].
fn print_text(r: &FileReport) {
    let Some(c) = &r.content else { return };
    println!("{}", line(&r.file));
    println!("  format    {} in {}", serde_json::to_value(c.layout).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(), line(&c.container));
    for e in &c.embeddings {
        match &e.stored_token {
            Some(s) if s != &e.token => {
                println!("  token     {}  (stored name: {})", line(&e.token), line(s))
            }
            _ => println!("  token     {}", line(&e.token)),
        }
        for p in &e.parts {
            let label = if p.encoder == embeddings::Encoder::TextEncoder { "vectors" } else { p.encoder.key() };
            let norms: Vec<String> = p.norms.iter().map(|n| format!("{n:.4}")).collect();
            println!("  {label:<9} {} x {} {}, {}", p.vectors, p.width, p.dtype, p.model);
            println!("  norms     {}", norms.join(", "));
        }
    }
    if !c.metadata.is_empty() {
        let m: Vec<String> = c.metadata.iter().map(|(k, v)| format!("{}={}", line(k), line(v))).collect();
        println!("  metadata  {}", m.join(", "));
    }
}
