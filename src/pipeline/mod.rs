//! Text to image, as diffusers' `StableDiffusionPipeline.__call__` and
//! `StableDiffusionXLPipeline.__call__`: the prompt's conditioning ([`conditioning`]: one text
//! encoder, or SDXL's two with the pooled embedding and time ids), classifier-free guidance,
//! seeded initial latents, the scheduler loop, VAE decode; with an init image, diffusers'
//! img2img pipelines ([`img2img`]). [`generate`] is the command around it (configuration,
//! images to files).
pub mod conditioning;
pub mod generate;
pub mod img2img;
pub mod prompt_file;

use crate::models::repo::ModelRepo;
use crate::models::stable_diffusion::{self as sd, Family, LoadOptions};
use crate::models::unet::{AddedConditioning, UNet2DConditionModel};
use crate::models::vae::AutoencoderKL;
use crate::schedulers::{Scheduler, SchedulerConfig};
use crate::text::TextStack;
use anyhow::{bail, Result};
use conditioning::Conditioning;
use tch::{Device, Kind, Tensor};

/// The loaded parts of a model, placed where they run.
pub struct Models {
    pub family: Family,
    pub text: TextStack,
    /// SDXL's second tokenizer and text encoder (with projection).
    pub text_2: Option<TextStack>,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    /// The model's `scheduler_config.json`, which every scheduler is built from.
    pub scheduler_config: SchedulerConfig,
    /// Device of the UNet and VAE (the text encoder's may differ).
    pub device: Device,
    /// Precision of the UNet (and the VAE, unless `vae_kind` says otherwise).
    pub kind: Kind,
    /// The VAE's precision: fp32 for SDXL's `force_upcast` VAEs when the UNet runs in fp16.
    pub vae_kind: Kind,
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub prompt: String,
    /// SDXL: the second encoder's prompt (default: `prompt`).
    pub prompt_2: Option<String>,
    pub negative_prompt: Option<String>,
    /// SDXL: the second encoder's negative prompt (default: `negative_prompt`).
    pub negative_prompt_2: Option<String>,
    pub height: Option<i64>,
    pub width: Option<i64>,
    pub steps: usize,
    /// None: the pipeline's default (7.5; SDXL 5.0).
    pub guidance_scale: Option<f64>,
    pub num_images_per_prompt: usize,
    pub seed: u64,
    pub clip_skip: Option<usize>,
    /// How the prompts are read (`--prompt_syntax`).
    pub prompt_syntax: crate::text::a1111::PromptSyntax,
    /// SDXL's size conditioning, `(height, width)`: default the image's size.
    pub original_size: Option<(i64, i64)>,
    /// SDXL: `(top, left)`, default `(0, 0)`.
    pub crops_coords_top_left: (i64, i64),
    pub target_size: Option<(i64, i64)>,
    /// img2img (`--init_image`): the image to start from; the output has its size.
    pub init_image: Option<std::path::PathBuf>,
    /// img2img: the share of the steps run from the noised image; None: the pipeline's
    /// default (0.8; SDXL 0.3).
    pub strength: Option<f64>,
    /// The most images of the batch in one UNet call and one VAE decode (`--batch_size`);
    /// None: all of them. The images do not depend on it: the random draws are made for the
    /// whole batch and each scheduler step runs on the whole batch.
    pub batch_size: Option<usize>,
}

/// The largest image side `generate` makes. The A1111 web UI stops at 2048; past 4096 the
/// VAE's decode of one SD 1.5 image alone needs tens of GB, and the UNet's attention grows
/// with the fourth power of the side.
pub const MAX_SIDE: i64 = 4096;
/// The most images one run makes: they are denoised as one batch (as diffusers' pipeline does,
/// so that a seed gives the same pictures), whose memory grows with the count.
pub const MAX_IMAGES: usize = 64;
/// The most denoising steps: diffusers' schedulers refuse more steps than the 1000 training
/// timesteps the models use.
pub const MAX_STEPS: usize = 1000;

impl GenerateOptions {
    /// What no model can make, refused before any model loads, with the reason.
    pub fn check(&self) -> Result<()> {
        for (flag, v) in [("--height", self.height), ("--width", self.width)] {
            if let Some(v) = v {
                if !(1..=MAX_SIDE).contains(&v) {
                    bail!("{flag} {v} is outside 1..={MAX_SIDE}: larger images need more memory than any GPU has (the VAE alone needs tens of GB past {MAX_SIDE} px); SD 1.5 is made for 512, SDXL for 1024");
                }
            }
        }
        if !(1..=MAX_IMAGES).contains(&self.num_images_per_prompt) {
            bail!(
                "--num_images_per_prompt {} is outside 1..={MAX_IMAGES}: the images of a run are denoised as one batch (as diffusers does), so memory grows with the count; run again with other seeds for more",
                self.num_images_per_prompt
            );
        }
        if !(1..=MAX_STEPS).contains(&self.steps) {
            bail!("--num_inference_steps {} is outside 1..={MAX_STEPS} (the models' training timesteps)", self.steps);
        }
        if self.guidance_scale.is_some_and(|g| !g.is_finite()) {
            bail!("--guidance_scale must be a finite number");
        }
        if self.batch_size == Some(0) {
            bail!("--batch_size must be at least 1");
        }
        if let Some(s) = self.strength {
            if self.init_image.is_none() {
                bail!("--strength is for img2img: give --init_image too");
            }
            img2img::check_strength(s)?;
        }
        if self.init_image.is_some() && (self.height.is_some() || self.width.is_some()) {
            bail!("--init_image makes an image of the init image's own size (rounded down to a multiple of 8), as diffusers' img2img pipelines: leave out --height/--width, or resize the image");
        }
        Ok(())
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            prompt: String::new(),
            prompt_2: None,
            negative_prompt: None,
            negative_prompt_2: None,
            height: None,
            width: None,
            steps: 50,
            guidance_scale: None,
            num_images_per_prompt: 1,
            seed: 0,
            clip_skip: None,
            prompt_syntax: Default::default(),
            original_size: None,
            crops_coords_top_left: (0, 0),
            target_size: None,
            init_image: None,
            strength: None,
            batch_size: None,
        }
    }
}

pub struct Generated {
    pub latents: Tensor,
    /// `[n, 3, H, W]` VAE output, about [-1, 1].
    pub decoded: Tensor,
}

impl Models {
    /// The VAE's downsampling factor (8 for every SD model).
    pub fn vae_scale_factor(&self) -> i64 {
        1 << (self.vae.config.block_out_channels.len() - 1)
    }

    /// Default output size: the UNet's `sample_size` in pixels, as diffusers.
    pub fn default_size(&self) -> i64 {
        self.unet.config.sample_size.unwrap_or(64) * self.vae_scale_factor()
    }

    /// Loads every part of the model (see [`sd::load`]), with no learned tokens yet.
    pub fn load(repo: &ModelRepo, options: &LoadOptions) -> Result<Self> {
        let parts = sd::load(repo, options)?;
        Ok(Models {
            family: parts.family,
            text: TextStack::new(parts.tokenizer, parts.text_encoder),
            text_2: parts.second.map(|(t, e)| TextStack::new(t, e)),
            unet: parts.unet,
            vae: parts.vae,
            scheduler_config: parts.scheduler_config,
            device: options.device,
            kind: options.precision.kind(),
            vae_kind: parts.vae_kind,
        })
    }

    /// The text stacks, the first encoder's first.
    pub fn stacks(&self) -> Vec<&TextStack> {
        std::iter::once(&self.text).chain(self.text_2.as_ref()).collect()
    }

    /// The same, to load embeddings into.
    pub fn stacks_mut(&mut self) -> Vec<&mut TextStack> {
        std::iter::once(&mut self.text).chain(self.text_2.as_mut()).collect()
    }

    /// Loads embedding files (`--embedding`) into the text stacks (see `learned_tokens`).
    pub fn load_embeddings(&mut self, specs: &[crate::text::learned_tokens::EmbeddingSpec]) -> Result<()> {
        crate::text::learned_tokens::load_into(specs, &mut self.stacks_mut())
    }

    /// The img2img strength asked for, or the pipeline's default (SDXL's is 0.3).
    pub fn strength(&self, options: &GenerateOptions) -> f64 {
        options.strength.unwrap_or(if self.family.is_xl() { img2img::DEFAULT_STRENGTH_XL } else { img2img::DEFAULT_STRENGTH })
    }

    /// The guidance scale asked for, or the pipeline's default (SDXL's is 5.0).
    pub fn guidance_scale(&self, options: &GenerateOptions) -> f64 {
        options.guidance_scale.unwrap_or(if self.family.is_xl() { 5.0 } else { 7.5 })
    }

    /// Runs the pipeline. `on_step(i, total)` is called after each denoising step.
    pub fn generate(&self, scheduler: &mut dyn Scheduler, options: &GenerateOptions, mut on_step: impl FnMut(usize, usize)) -> Result<Generated> {
        self.generate_from(scheduler, options, None, &mut on_step)
    }

    /// Like [`Models::generate`] with given initial latents (unscaled by `init_noise_sigma`),
    /// as diffusers' `latents=` argument.
    pub fn generate_from(
        &self,
        scheduler: &mut dyn Scheduler,
        options: &GenerateOptions,
        latents: Option<Tensor>,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Generated> {
        let _guard = tch::no_grad_guard();
        options.check()?;
        let scale = self.vae_scale_factor();
        // img2img: the image sets the size (as `VaeImageProcessor.preprocess` without a size).
        let init = match &options.init_image {
            Some(path) => Some(img2img::load(path, scale)?),
            None => None,
        };
        let (height, width) = match &init {
            Some(image) => (image.size()[2], image.size()[3]),
            None => (options.height.unwrap_or(self.default_size()), options.width.unwrap_or(self.default_size())),
        };
        if height <= 0 || width <= 0 || height % scale != 0 || width % scale != 0 {
            bail!("height and width must be positive multiples of {scale}, got {height}x{width}");
        }
        if options.num_images_per_prompt == 0 || options.steps == 0 {
            bail!("num_images_per_prompt and num_inference_steps must be at least 1");
        }
        let n = options.num_images_per_prompt as i64;
        let chunk = options.batch_size.map_or(n, |b| (b as i64).clamp(1, n));
        let guidance = self.guidance_scale(options);
        let cfg = guidance > 1.0;
        let cond = self.conditioning(options, (height, width), cfg)?;
        scheduler.set_timesteps(options.steps)?;
        let shape = [n, self.unet.config.in_channels, height / scale, width / scale];
        let (mut latents, timesteps) = match (init, latents) {
            (Some(_), Some(_)) => bail!("img2img makes its initial latents from the init image: give no initial latents"),
            (Some(image), None) => {
                let begin = img2img::begin_index(scheduler, options.steps, self.strength(options))?;
                let timesteps = scheduler.timesteps()[begin..].to_vec();
                // One generator for the image's posterior sample, the noise and the scheduler's
                // draws, in diffusers' order.
                tch::manual_seed(options.seed as i64);
                (self.img2img_latents(scheduler, &image, n, timesteps[0])?, timesteps)
            }
            (None, latents) => {
                let latents = match latents {
                    Some(l) => {
                        if l.size() != shape {
                            bail!("initial latents have shape {:?}, expected {shape:?}", l.size());
                        }
                        l
                    }
                    None => {
                        // diffusers draws with a CPU generator seeded once, in the pipeline's dtype: the
                        // global CPU generator seeded here gives the same numbers, as long as nothing else
                        // draws in between (the scheduler's own draws follow, in diffusers' order).
                        tch::manual_seed(options.seed as i64);
                        crate::schedulers::randn(&shape, self.kind, self.device)
                    }
                };
                (latents.to_device(self.device).to_kind(self.kind) * scheduler.init_noise_sigma(), scheduler.timesteps().to_vec())
            }
        };
        for (i, &t) in timesteps.iter().enumerate() {
            // Made on the device (no host-to-device copy, which would wait for the GPU).
            let t_tensor = Tensor::full([], t, (Kind::Float, self.device));
            let noise = match &cond.uncond_context {
                // Prompt and negative prompt of different lengths: a pass for each.
                Some(uncond) => {
                    let input = scheduler.scale_model_input(&latents, t)?;
                    let cond_noise = self.unet.forward(&input, &t_tensor, &cond.context, cond.added.as_ref())?;
                    let uncond_noise = self.unet.forward(&input, &t_tensor, uncond, cond.added.as_ref())?;
                    &uncond_noise + (cond_noise - &uncond_noise) * guidance
                }
                None => {
                    let input = if cfg { Tensor::cat(&[&latents, &latents], 0) } else { latents.shallow_clone() };
                    let input = scheduler.scale_model_input(&input, t)?;
                    self.guided_noise(&input, &t_tensor, &cond, n, chunk, cfg.then_some(guidance))?
                }
            };
            latents = scheduler.step(&noise, t, &latents)?;
            on_step(i + 1, timesteps.len());
        }
        // SDXL's force_upcast: the latents go to the VAE's fp32 before the division, as diffusers.
        let z = if self.vae_kind != self.kind { latents.to_kind(self.vae_kind) } else { latents.shallow_clone() };
        let z = z / self.vae.config.scaling_factor;
        let decoded =
            if chunk >= n { self.vae.decode(&z)? } else { Tensor::cat(&z.split(chunk, 0).iter().map(|z| self.vae.decode(z)).collect::<Result<Vec<_>>>()?, 0) };
        Ok(Generated { latents, decoded })
    }
}

impl Models {
    /// The noise prediction for the whole batch (`input`: `[2n, ...]` under guidance, negatives
    /// first, else `[n, ...]`), guided when `guidance` is given, the UNet run on at most `chunk`
    /// images at a time (both halves of each image under guidance).
    fn guided_noise(&self, input: &Tensor, t: &Tensor, cond: &Conditioning, n: i64, chunk: i64, guidance: Option<f64>) -> Result<Tensor> {
        let guide = |noise: Tensor| match guidance {
            Some(g) => {
                let parts = noise.chunk(2, 0);
                &parts[0] + (&parts[1] - &parts[0]) * g
            }
            None => noise,
        };
        if chunk >= n {
            return Ok(guide(self.unet.forward(input, t, &cond.context, cond.added.as_ref())?));
        }
        let mut parts = Vec::new();
        for start in (0..n).step_by(chunk as usize) {
            let len = chunk.min(n - start);
            let rows = Tensor::arange_start(start, start + len, (Kind::Int64, input.device()));
            let rows = if guidance.is_some() { Tensor::cat(&[&rows, &(&rows + n)], 0) } else { rows };
            let pick = |t: &Tensor| t.index_select(0, &rows.to_device(t.device()));
            let added = cond.added.as_ref().map(|a| AddedConditioning { text_embeds: pick(&a.text_embeds), time_ids: pick(&a.time_ids) });
            parts.push(guide(self.unet.forward(&pick(input), t, &pick(&cond.context), added.as_ref())?));
        }
        Ok(Tensor::cat(&parts, 0))
    }
}
