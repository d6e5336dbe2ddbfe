//! `textual-inversion evaluate`: CLIP scores of a folder of images against the training images
//! and a prompt (docs/evaluating.md).
use crate::device::parse_device;
use crate::eval::scorer::{similarities, ClipScorer, DEFAULT_BATCH_SIZE};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// The CLIP model: a transformers CLIPModel folder or Hub id (e.g.
    /// openai/clip-vit-large-patch14), with its preprocessor_config.json and tokenizer.
    #[arg(long = "clip_model")]
    pub clip_model: String,
    /// Branch, tag or commit of a --clip_model Hub id (default main).
    #[arg(long = "clip_revision")]
    pub clip_revision: Option<String>,
    /// The images to compare with: usually the training images (--train_data_dir).
    #[arg(long = "reference_dir")]
    pub reference_dir: PathBuf,
    /// The images to score (e.g. generated with the learned token).
    #[arg(long)]
    pub images: PathBuf,
    /// The text to score the images against (e.g. the prompt without the learned token).
    #[arg(long)]
    pub text: String,
    /// Also write the scores as JSON to this file (replaced atomically).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// cpu, cuda, cuda:N, mps.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: tch::Device,
    /// Images per forward pass of CLIP's vision tower.
    #[arg(long = "batch_size", default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
}

/// What `--json` holds: the two scores, and what they were computed from.
#[derive(serde::Serialize)]
struct Report<'a> {
    image_similarity: f64,
    text_similarity: f64,
    images: usize,
    references: usize,
    text: &'a str,
    clip_model: &'a str,
}

pub fn run(a: EvaluateArgs) -> Result<()> {
    // The folders are checked before the model is loaded: a wrong path fails in a second.
    for (flag, dir) in [("--reference_dir", &a.reference_dir), ("--images", &a.images)] {
        if !dir.is_dir() {
            anyhow::bail!("{flag} {} is not a folder", dir.display());
        }
    }
    let scorer = ClipScorer::load(&a.clip_model, a.clip_revision.as_deref(), a.device)?.with_batch_size(a.batch_size)?;
    let references = scorer.folder_embeds(&a.reference_dir, "--reference_dir")?;
    let images = scorer.folder_embeds(&a.images, "--images")?;
    let text = scorer.text_embeds(&[a.text.as_str()])?;
    let scores = similarities(&images.embeds, &references.embeds, &text)?;
    println!("image_similarity {:.6}", scores.image_similarity);
    println!("text_similarity {:.6}", scores.text_similarity);
    if let Some(path) = &a.json {
        let report = Report {
            image_similarity: scores.image_similarity,
            text_similarity: scores.text_similarity,
            images: images.files.len(),
            references: references.files.len(),
            text: &a.text,
            clip_model: &a.clip_model,
        };
        let mut bytes = serde_json::to_vec_pretty(&report)?;
        bytes.push(b'\n');
        crate::formats::atomic::write(path, &bytes).with_context(|| format!("writing --json {}", path.display()))?;
    }
    Ok(())
}
