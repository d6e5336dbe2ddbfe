//! [`ClipScorer`]: CLIP image and text embeddings, and the two similarities built from them.
use super::folder::for_each_image;
use crate::models::clip_model::{self, ClipBundle};
use anyhow::{bail, Result};
use image::RgbImage;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Images through the vision tower at once, unless told otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 8;

/// How alike images are to the references and to the text (cosines, -1 to 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    /// Mean cosine similarity over every (image, reference) pair of image embeddings.
    pub image_similarity: f64,
    /// Mean cosine similarity of each image's embedding with the text's.
    pub text_similarity: f64,
}

/// The embeddings of one folder's images, in name order.
pub struct FolderEmbeds {
    /// `[images, projection_dim]`, f32 on the CPU.
    pub embeds: Tensor,
    pub files: Vec<PathBuf>,
}

pub struct ClipScorer {
    clip: ClipBundle,
    batch_size: usize,
}

impl ClipScorer {
    /// Loads a transformers `CLIPModel` (folder or Hub id, e.g. openai/clip-vit-large-patch14)
    /// onto `device`.
    pub fn load(name_or_path: &str, revision: Option<&str>, device: Device) -> Result<Self> {
        crate::device::ensure_available(device)?;
        Ok(ClipScorer { clip: clip_model::load(name_or_path, revision, device)?, batch_size: DEFAULT_BATCH_SIZE })
    }

    /// Images per forward pass of the vision tower (memory against speed).
    pub fn with_batch_size(mut self, batch_size: usize) -> Result<Self> {
        if batch_size == 0 {
            bail!("the batch size must be at least 1");
        }
        self.batch_size = batch_size;
        Ok(self)
    }

    pub fn bundle(&self) -> &ClipBundle {
        &self.clip
    }

    /// The processor's `pixel_values` of `images`: `[n, 3, S, S]` on the CPU.
    pub fn pixel_values(&self, images: &[RgbImage]) -> Result<Tensor> {
        let each = images.iter().map(|i| self.clip.processor.pixel_values(i)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::f_stack(&each, 0)?)
    }

    /// `get_image_features` of `images` (`[n, projection_dim]`, f32 on the CPU), in batches.
    pub fn image_embeds(&self, images: &[RgbImage]) -> Result<Tensor> {
        if images.is_empty() {
            bail!("no images to embed");
        }
        let parts = images.chunks(self.batch_size).map(|chunk| self.embed_pixels(&self.pixel_values(chunk)?)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::f_cat(&parts, 0)?)
    }

    fn embed_pixels(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        Ok(self.clip.model.image_features(&pixel_values.to_device(self.clip.model.device()))?.to_device(Device::Cpu))
    }

    /// The embeddings of every usable image in `dir` (see [`for_each_image`]), decoding and
    /// embedding one batch at a time: memory holds a batch of images, not the folder.
    pub fn folder_embeds(&self, dir: &Path, flag: &str) -> Result<FolderEmbeds> {
        let (mut parts, mut batch) = (Vec::new(), Vec::new());
        let files = for_each_image(dir, flag, |_, img| {
            batch.push(self.clip.processor.pixel_values(&img)?);
            if batch.len() == self.batch_size {
                parts.push(self.embed_pixels(&Tensor::f_stack(&batch, 0)?)?);
                batch.clear();
            }
            Ok(())
        })?;
        if !batch.is_empty() {
            parts.push(self.embed_pixels(&Tensor::f_stack(&batch, 0)?)?);
        }
        Ok(FolderEmbeds { embeds: Tensor::f_cat(&parts, 0)?, files })
    }

    /// `get_text_features` of `texts` (`[n, projection_dim]`, f32 on the CPU), each tokenized
    /// as the CLIP tokenizer does (padded to its 77 tokens, longer texts truncated).
    pub fn text_embeds(&self, texts: &[&str]) -> Result<Tensor> {
        if texts.is_empty() {
            bail!("no text to embed");
        }
        let ids = self.text_ids(texts)?;
        let _guard = tch::no_grad_guard();
        Ok(self.clip.model.text_features(&ids.to_device(self.clip.model.device())).to_device(Device::Cpu))
    }

    /// The token ids [`ClipScorer::text_embeds`] embeds: `[n, 77]`.
    pub fn text_ids(&self, texts: &[&str]) -> Result<Tensor> {
        let ids = self.clip.tokenizer.encode_batch(texts)?;
        let vocab = self.clip.model.text.base_vocab();
        if let Some(bad) = ids.iter().flatten().find(|&&i| i < 0 || i >= vocab) {
            bail!("the tokenizer gives id {bad}, outside the text tower's {vocab} rows: tokenizer and model do not belong together");
        }
        let width = ids.first().map_or(0, Vec::len);
        Ok(Tensor::f_from_slice(&ids.concat())?.view([texts.len() as i64, width as i64]))
    }

    /// [`Scores`] of `images` against `references` and `text`.
    pub fn score(&self, images: &[RgbImage], references: &[RgbImage], text: &str) -> Result<Scores> {
        similarities(&self.image_embeds(images)?, &self.image_embeds(references)?, &self.text_embeds(&[text])?)
    }
}

/// [`Scores`] from embeddings: `images` `[n, d]`, `references` `[m, d]`, `text` `[1, d]`. In
/// f64, each embedding divided by its norm (so a caller can keep the references' embeddings and
/// score many image sets against them).
pub fn similarities(images: &Tensor, references: &Tensor, text: &Tensor) -> Result<Scores> {
    let unit = |t: &Tensor| -> Result<Tensor> {
        let t = t.f_to_kind(Kind::Double)?;
        Ok(t.f_div(&t.f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?)?)
    };
    let ((n, a), (m, b), (k, c)) = (images.size2()?, references.size2()?, text.size2()?);
    if n == 0 || m == 0 || k != 1 || a != b || a != c {
        bail!("similarities of [{n}, {a}] images, [{m}, {b}] references and [{k}, {c}] texts: expected at least one image and reference, one text, one width");
    }
    let (i, r, t) = (unit(images)?, unit(references)?, unit(text)?);
    let image_similarity = i.f_matmul(&r.f_transpose(0, 1)?)?.f_mean(Kind::Double)?.f_double_value(&[])?;
    let text_similarity = i.f_matmul(&t.f_transpose(0, 1)?)?.f_mean(Kind::Double)?.f_double_value(&[])?;
    Ok(Scores { image_similarity, text_similarity })
}
