//! Image to image, as diffusers' `StableDiffusionImg2ImgPipeline` and
//! `StableDiffusionXLImg2ImgPipeline`: the init image prepared as their `VaeImageProcessor`
//! does, the strength's share of the timesteps (`get_timesteps`), and the initial latents of
//! `prepare_latents` (the image's VAE posterior sampled, scaled, noised to the first timestep).
//!
//! The image is read as `diffusers.utils.load_image(path)` gives it (EXIF orientation applied,
//! `convert("RGB")`: alpha dropped, greyscale and palettes expanded; `crate::image_in::decode`
//! says how this equals Pillow), then `VaeImageProcessor.preprocess`: its size rounded down to a
//! multiple of the VAE's scale factor (8), resized there with Pillow's LANCZOS when that changes
//! it, scaled to [-1, 1].
//!
//! Random draws, from the one seeded generator in diffusers' order: the posterior sample (the
//! latents' shape of one image, in the VAE's dtype), then the noise (`[n, 4, h, w]`, in the
//! pipeline's dtype), then whatever the scheduler draws per step. So `--seed S` gives the images
//! of `pipe(..., generator=torch.Generator("cpu").manual_seed(S))`.
use super::Models;
use crate::image_in::{load_rgb, resize, Filter};
use crate::schedulers::{randn, Scheduler};
use anyhow::{bail, Context, Result};
use image::RgbImage;
use std::path::Path;
use tch::{Kind, Tensor};

/// diffusers' default `strength` of StableDiffusionImg2ImgPipeline.
pub const DEFAULT_STRENGTH: f64 = 0.8;
/// diffusers' default `strength` of StableDiffusionXLImg2ImgPipeline.
pub const DEFAULT_STRENGTH_XL: f64 = 0.3;

/// Refuses a strength outside (0, 1], as diffusers' `check_inputs` does ([0, 1] there; 0 would
/// leave no step to run).
pub fn check_strength(strength: f64) -> Result<()> {
    if !(strength > 0.0 && strength <= 1.0) {
        bail!("--strength {strength} must be in (0, 1]: the share of the denoising the init image goes through (1: all of it, the image only sets the start)");
    }
    Ok(())
}

/// The init image file as `[1, 3, H, W]` f32 in [-1, 1] (see the module doc); `scale` is the
/// VAE's scale factor. Errors name the file.
pub fn load(path: &Path, scale: i64) -> Result<Tensor> {
    let image = load_rgb(path).with_context(|| format!("reading the init image {} (--init_image)", path.display()))?;
    prepare(&image.rgb, scale).with_context(|| format!("the init image {} (--init_image)", path.display()))
}

/// `VaeImageProcessor.preprocess` of an RGB image: rounded down to multiples of `scale`
/// (LANCZOS), `[1, 3, H, W]` in [-1, 1].
pub fn prepare(rgb: &RgbImage, scale: i64) -> Result<Tensor> {
    let scale = scale.max(1) as u32;
    let (w, h) = rgb.dimensions();
    let (tw, th) = (w - w % scale, h - h % scale);
    if tw == 0 || th == 0 {
        bail!("{w}x{h} pixels is smaller than {scale} pixels on a side, the VAE's scale factor");
    }
    if i64::from(tw).max(i64::from(th)) > super::MAX_SIDE {
        bail!("{tw}x{th} pixels is larger than {} on a side: resize the image first", super::MAX_SIDE);
    }
    let resized;
    let rgb = if (tw, th) == (w, h) {
        rgb
    } else {
        resized = resize(rgb, tw, th, Filter::Lanczos)?;
        &resized
    };
    let pixels = Tensor::from_slice(rgb.as_raw()).view([i64::from(th), i64::from(tw), 3]).permute([2, 0, 1]).unsqueeze(0);
    // numpy's `astype(float32) / 255.0`, then `2 * x - 1`, each in f32.
    Ok((pixels.to_kind(Kind::Float) / 255.0) * 2.0 - 1.0)
}

/// The steps a strength leaves: diffusers' `get_timesteps` (`int(steps * strength)` of them,
/// the last ones). Returns the index of the first timestep run (already times the scheduler's
/// order), after telling the scheduler (`set_begin_index`); call after `set_timesteps`.
pub fn begin_index(scheduler: &mut dyn Scheduler, steps: usize, strength: f64) -> Result<usize> {
    check_strength(strength)?;
    let init = ((steps as f64 * strength) as usize).min(steps);
    if init == 0 {
        bail!("--strength {strength} with {steps} steps leaves no step to run (int(steps * strength) = 0): raise --strength or --num_inference_steps");
    }
    let begin = (steps - init) * scheduler.order();
    if begin >= scheduler.timesteps().len() {
        bail!("{}: {steps} steps at strength {strength} start past the last timestep", scheduler.kind().class_name());
    }
    scheduler.set_begin_index(begin);
    Ok(begin)
}

impl Models {
    /// img2img's initial latents (diffusers' `prepare_latents`): `image` (`[1, 3, H, W]` in
    /// [-1, 1]) encoded by the VAE, a sample of its posterior, scaled by `scaling_factor`,
    /// repeated `n` times and noised to `timestep` by the scheduler. Draws from the global
    /// generator, which the caller has seeded.
    pub fn img2img_latents(&self, scheduler: &dyn Scheduler, image: &Tensor, n: i64, timestep: f64) -> Result<Tensor> {
        // SDXL's force_upcast: the image and VAE in fp32 (vae_kind), the latents back in the
        // pipeline's dtype after the draw.
        let pixels = image.to_device(self.device).to_kind(self.vae_kind);
        let posterior = self.vae.encode(&pixels)?;
        let draw = randn(&posterior.mean.size(), self.vae_kind, self.device);
        let z = posterior.sample_with(&draw).to_kind(self.kind) * self.vae.config.scaling_factor;
        let z = z.repeat([n, 1, 1, 1]);
        let noise = randn(&z.size(), self.kind, self.device);
        scheduler.add_noise(&z, &noise, timestep)
    }
}
