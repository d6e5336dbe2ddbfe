//! Text to image, as diffusers' `StableDiffusionPipeline.__call__`: prompt and negative prompt
//! through the text encoder (multi-vector tokens expanded), classifier-free guidance, seeded
//! initial latents, the scheduler loop, VAE decode. [`generate`] is the command around it
//! (configuration, images to files).
//!
//! Where a second model family slots in (SDXL): [`Models`] gains the second [`TextStack`];
//! the conditioning built in [`Models::generate_from`] (`context` today) becomes the two
//! encoders' hidden states plus the pooled embedding and the time ids, which the UNet's added
//! conditioning reads; the loop, guidance and decoding stay as they are.
pub mod generate;

use crate::models::repo::ModelRepo;
use crate::models::stable_diffusion::{self as sd, LoadOptions};
use crate::models::unet::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::schedulers::{Scheduler, SchedulerConfig};
use crate::text::TextStack;
use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

/// The loaded parts of a model, placed where they run.
pub struct Models {
    pub text: TextStack,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    /// The model's `scheduler_config.json`, which every scheduler is built from.
    pub scheduler_config: SchedulerConfig,
    /// Device of the UNet and VAE (the text encoder's may differ).
    pub device: Device,
    /// Precision of the UNet and VAE.
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub height: Option<i64>,
    pub width: Option<i64>,
    pub steps: usize,
    pub guidance_scale: f64,
    pub num_images_per_prompt: usize,
    pub seed: u64,
    pub clip_skip: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            prompt: String::new(),
            negative_prompt: None,
            height: None,
            width: None,
            steps: 50,
            guidance_scale: 7.5,
            num_images_per_prompt: 1,
            seed: 0,
            clip_skip: None,
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
            text: TextStack::new(parts.tokenizer, parts.text_encoder),
            unet: parts.unet,
            vae: parts.vae,
            scheduler_config: parts.scheduler_config,
            device: options.device,
            kind: options.precision.kind(),
        })
    }

    /// The prompt's conditioning (see [`TextStack::encode_prompt`]).
    pub fn encode_prompt(&self, prompt: &str, clip_skip: Option<usize>) -> Result<Tensor> {
        self.text.encode_prompt(prompt, clip_skip)
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
        let scale = self.vae_scale_factor();
        let (height, width) = (options.height.unwrap_or(self.default_size()), options.width.unwrap_or(self.default_size()));
        if height <= 0 || width <= 0 || height % scale != 0 || width % scale != 0 {
            bail!("height and width must be positive multiples of {scale}, got {height}x{width}");
        }
        if options.num_images_per_prompt == 0 || options.steps == 0 {
            bail!("num_images_per_prompt and num_inference_steps must be at least 1");
        }
        let n = options.num_images_per_prompt as i64;
        let cfg = options.guidance_scale > 1.0;
        let positive = self.encode_prompt(&options.prompt, options.clip_skip)?;
        let mut context = positive.repeat([n, 1, 1]);
        if cfg {
            // diffusers applies clip_skip to the prompt only, never to the negative prompt.
            let negative = self.encode_prompt(options.negative_prompt.as_deref().unwrap_or(""), None)?.repeat([n, 1, 1]);
            context = Tensor::cat(&[negative, context], 0);
        }
        let context = context.to_device(self.device).to_kind(self.kind);

        scheduler.set_timesteps(options.steps)?;
        let shape = [n, self.unet.config.in_channels, height / scale, width / scale];
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
        let mut latents = latents.to_device(self.device).to_kind(self.kind) * scheduler.init_noise_sigma();
        let timesteps = scheduler.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            let input = if cfg { Tensor::cat(&[&latents, &latents], 0) } else { latents.shallow_clone() };
            let input = scheduler.scale_model_input(&input, t)?;
            // Made on the device (no host-to-device copy, which would wait for the GPU).
            let t_tensor = Tensor::full([], t, (Kind::Float, self.device));
            let noise = self.unet.forward(&input, &t_tensor, &context, None)?;
            let noise = if cfg {
                let parts = noise.chunk(2, 0);
                &parts[0] + (&parts[1] - &parts[0]) * options.guidance_scale
            } else {
                noise
            };
            latents = scheduler.step(&noise, t, &latents)?;
            on_step(i + 1, timesteps.len());
        }
        let decoded = self.vae.decode(&(&latents / self.vae.config.scaling_factor))?;
        Ok(Generated { latents, decoded })
    }
}
