//! One step's evaluation, the one both `evaluate --run` (each saved embedding of a finished
//! run) and `train --eval_steps` (the embedding as it trains) call: the same prompts and seeds
//! generated with the text encoder as it is, each image saved, CLIP-embedded and scored.
//!
//! With several data-parallel ranks the `(prompt, seed)` pairs are dealt round-robin: each rank
//! generates and embeds its share, and the embeddings and pixels are gathered with the process
//! group's `all_gather` (padded to the same count on every rank, as it needs); rank 0 scores
//! and writes. Each image depends on its own seed only, so the images are the same whichever
//! rank makes them; the CLIP embeddings may differ in float32 rounding with the batch they are
//! embedded in.
use super::plot::rows_grid;
use super::prompts::{self, Property};
use super::scorer::{similarities, ClipScorer};
use crate::distributed::ProcessGroup;
use crate::formats::atomic;
use crate::image_out::{encode_png, to_pixels};
use crate::pipeline::{GenerateOptions, Models};
use crate::schedulers::{self, SchedulerKind};
use crate::train::metrics::Rgb8;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Where each step's images go: `images/step-N/prompt-K/IIII-SEED.png`.
pub const IMAGES_DIR: &str = "images";

/// One prompt of the evaluation: what is generated and what its images are scored against.
#[derive(Debug, Clone, Serialize)]
pub struct EvalPrompt {
    pub prompt: String,
    /// The prompt without the learned token (editing prompts' text_similarity is against it).
    pub text: String,
    pub role: &'static str,
}

/// The reconstruction prompt (first) and the editing prompts with `token` in them: the given
/// templates (`{}` for the token), or the defaults of `property` ([`prompts`]).
pub fn eval_prompts(property: Property, reconstruction: Option<&str>, editing: &[String], token: &str) -> Result<Vec<EvalPrompt>> {
    let reconstruction = reconstruction.unwrap_or_else(|| prompts::reconstruction(property)).to_string();
    let editing: Vec<String> = if editing.is_empty() { prompts::editing(property).iter().map(|s| s.to_string()).collect() } else { editing.to_vec() };
    let mut out = Vec::new();
    for (template, role) in std::iter::once((&reconstruction, "reconstruction")).chain(editing.iter().map(|e| (e, "editing"))) {
        let prompt = prompts::with_token(template, token)?;
        out.push(EvalPrompt { text: prompts::without_token(&prompt, token), prompt, role });
    }
    Ok(out)
}

/// What one step's evaluation found (on rank 0).
#[derive(Debug, Clone)]
pub struct StepResult {
    /// The reconstruction prompt's images against the references.
    pub image_similarity: f64,
    /// The mean over the editing prompts of each one's text similarity.
    pub text_similarity: f64,
    /// Each editing prompt's text similarity, in prompt order.
    pub text_similarity_per_prompt: Vec<f64>,
    /// The step's grid, `step-N.png` in the output folder.
    pub grid: String,
}

/// What every evaluated step shares: the prompts and their CLIP text embeddings, the seeds,
/// the generation settings, the references' embeddings and the output folder.
pub struct StepEval {
    pub prompts: Vec<EvalPrompt>,
    /// One image per prompt and seed.
    pub seeds: Vec<u64>,
    /// `prompt`, `seed` and `num_images_per_prompt` are set per image.
    pub options: GenerateOptions,
    pub scheduler: Option<SchedulerKind>,
    pub output_dir: PathBuf,
    /// `[references, D]`, f32 on the CPU.
    references: Tensor,
    /// `[prompts, D]`: each prompt's text without the token.
    text_embeds: Tensor,
}

impl StepEval {
    /// Embeds the prompts' texts with `scorer`, one text at a time, as the first form of
    /// `evaluate` embeds its --text: the same numbers to the last bit (a batch of texts differs
    /// in float32 rounding).
    pub fn new(
        scorer: &ClipScorer,
        references: Tensor,
        prompts: Vec<EvalPrompt>,
        seeds: Vec<u64>,
        options: GenerateOptions,
        scheduler: Option<SchedulerKind>,
        output_dir: PathBuf,
    ) -> Result<Self> {
        let each = prompts.iter().map(|p| scorer.text_embeds(&[p.text.as_str()])).collect::<Result<Vec<_>>>()?;
        let text_embeds = Tensor::f_cat(&each, 0)?;
        Ok(StepEval { prompts, seeds, options, scheduler, output_dir, references, text_embeds })
    }

    /// `(height, width)` of the images `models` makes with these options.
    pub fn size(&self, models: &Models) -> (i64, i64) {
        let size = models.default_size();
        (self.options.height.unwrap_or(size), self.options.width.unwrap_or(size))
    }

    /// How the images are made with `models` (for `eval.json`'s settings).
    pub fn generation(&self, models: &Models) -> Result<super::report::Generation> {
        let (height, width) = self.size(models);
        Ok(super::report::Generation {
            prompts: self.prompts.clone(),
            num_images: self.seeds.len(),
            seeds: self.seeds.clone(),
            num_inference_steps: self.options.steps,
            guidance_scale: models.guidance_scale(&self.options),
            height,
            width,
            scheduler: schedulers::load(&models.scheduler_config, self.scheduler)?.kind().cli_name().to_string(),
        })
    }

    /// Images per step (every prompt, every seed).
    pub fn num_images(&self) -> usize {
        self.prompts.len() * self.seeds.len()
    }

    /// Generates and scores step `step` with `models` as they are, on every rank of `ranks`
    /// (each its share of the images); `on_image` after each image a rank makes. Rank 0 writes
    /// the images and the grid and returns the scores; the others return None.
    pub fn score(&self, models: &Models, scorer: &ClipScorer, step: u64, ranks: &ProcessGroup, on_image: &dyn Fn()) -> Result<Option<StepResult>> {
        let (world, rank) = (ranks.world_size(), ranks.rank());
        let total = self.num_images();
        let n = self.seeds.len();
        // Pair j is prompt j / n with seed j % n; rank r makes pairs r, r + world, ...
        let mine: Vec<usize> = (rank..total).step_by(world).collect();
        let mut images = Vec::new();
        let mut pixels = Vec::new();
        for &j in &mine {
            let (p, seed) = (&self.prompts[j / n], self.seeds[j % n]);
            let mut options = self.options.clone();
            options.prompt = p.prompt.clone();
            options.seed = seed;
            options.num_images_per_prompt = 1;
            // A scheduler of its own per image: nothing of one image's run reaches the next.
            let mut scheduler = schedulers::load(&models.scheduler_config, self.scheduler)?;
            let out =
                models.generate(scheduler.as_mut(), &options, |_, _| {}).with_context(|| format!("step {step}: generating {:?} seed {seed}", p.prompt))?;
            let px = to_pixels(&out.decoded).get(0);
            let rgb = Rgb8::from_tensor(&px.unsqueeze(0))?.remove(0);
            images.push(image::RgbImage::from_raw(rgb.width, rgb.height, rgb.data).context("pixel buffer of the wrong size")?);
            pixels.push(px);
            on_image();
        }
        let embeds = if images.is_empty() { None } else { Some(scorer.image_embeds(&images)?) };
        let (embeds, pixels) =
            if world == 1 { (embeds.context("no images to score")?, Tensor::f_stack(&pixels, 0)?) } else { self.gather(models, embeds, pixels, ranks)? };
        if rank != 0 {
            return Ok(None);
        }
        self.write_and_score(&embeds, &pixels, step).map(Some)
    }

    /// Every rank's share, padded to the same count (all_gather's rule), back in pair order.
    fn gather(&self, models: &Models, embeds: Option<Tensor>, pixels: Vec<Tensor>, ranks: &ProcessGroup) -> Result<(Tensor, Tensor)> {
        let (world, total) = (ranks.world_size(), self.num_images());
        let per = total.div_ceil(world) as i64;
        let width = self.text_embeds.size()[1];
        let (h, w) = self.size(models);
        let pad = |t: Tensor, shape: &[i64], kind: Kind| -> Result<Tensor> {
            let have = t.size()[0];
            if have == per {
                return Ok(t);
            }
            let mut full = shape.to_vec();
            full[0] = per - have;
            Ok(Tensor::f_cat(&[t, Tensor::zeros(full.as_slice(), (kind, Device::Cpu))], 0)?)
        };
        let embeds = embeds.unwrap_or_else(|| Tensor::zeros([0, width], (Kind::Float, Device::Cpu)));
        let pixels = if pixels.is_empty() { Tensor::zeros([0, h, w, 3], (Kind::Uint8, Device::Cpu)) } else { Tensor::f_stack(&pixels, 0)? };
        let embeds = pad(embeds.to_kind(Kind::Float).contiguous(), &[per, width], Kind::Float)?;
        let pixels = pad(pixels.contiguous(), &[per, h, w, 3], Kind::Uint8)?;
        let all_e = ranks.all_gather(&embeds).context("gathering the ranks' CLIP embeddings")?;
        let all_p = ranks.all_gather(&pixels).context("gathering the ranks' images")?;
        let order = |parts: &[Tensor]| -> Result<Tensor> {
            let each: Vec<Tensor> = (0..total).map(|j| parts[j % world].get((j / world) as i64)).collect();
            Ok(Tensor::f_stack(&each, 0)?)
        };
        Ok((order(&all_e)?, order(&all_p)?))
    }

    /// Rank 0: the images and the grid written, the scores from the embeddings (`[images, D]`,
    /// `pixels` `[images, H, W, 3]` u8, both in pair order).
    fn write_and_score(&self, embeds: &Tensor, pixels: &Tensor, step: u64) -> Result<StepResult> {
        let n = self.seeds.len();
        let step_dir = Path::new(IMAGES_DIR).join(format!("step-{step}"));
        let mut grid_rows = Vec::new();
        let (mut image_similarity, mut text_each) = (f64::NAN, Vec::new());
        for (k, p) in self.prompts.iter().enumerate() {
            let dir = atomic::ensure_dir(&self.output_dir, &step_dir.join(format!("prompt-{k}")))?;
            let rows = Rgb8::from_tensor(&pixels.narrow(0, (k * n) as i64, n as i64))?;
            for (i, (rgb, &seed)) in rows.iter().zip(&self.seeds).enumerate() {
                let text = [("prompt".to_string(), p.prompt.clone()), ("seed".to_string(), seed.to_string()), ("step".to_string(), step.to_string())];
                atomic::write(&dir.join(format!("{i:04}-{seed}.png")), &encode_png(rgb.width, rgb.height, &rgb.data, &text)?)?;
            }
            let s = similarities(&embeds.narrow(0, (k * n) as i64, n as i64), &self.references, &self.text_embeds.get(k as i64).unsqueeze(0))?;
            if k == 0 {
                image_similarity = s.image_similarity;
            } else {
                text_each.push(s.text_similarity);
            }
            grid_rows.push(rows);
        }
        // The mean over the editing prompts, each the mean over its images.
        let text_similarity = if text_each.is_empty() { f64::NAN } else { text_each.iter().sum::<f64>() / text_each.len() as f64 };
        let grid = format!("step-{step}.png");
        atomic::write(&self.output_dir.join(&grid), &rows_grid(&grid_rows)?.to_png()?)?;
        Ok(StepResult { image_similarity, text_similarity, text_similarity_per_prompt: text_each, grid })
    }
}
