//! The script's `log_validation`: DPM-Solver++ from the model's scheduler config, 25 steps,
//! guidance 7.5, the default size; one generator seeded with the run's seed for all images of a
//! call (on CPU the global generator, whose training state the caller puts back; on CUDA the
//! device's, which training does not use); images saved as `validation/step-N-I.png`.
use super::config::ValidationConfig;
use crate::pipeline::{GenerateOptions, Models};
use crate::schedulers::{self, SchedulerKind};
use anyhow::Result;
use std::path::Path;
use tch::{Device, Tensor};

/// Makes and saves the validation images of update `step`; returns them as `[n, H, W, 3]` u8.
pub fn validate(models: &Models, v: &ValidationConfig, output_dir: &Path, seed: u64, step: u64) -> Result<Tensor> {
    tracing::info!("Running validation... Generating {} images with prompt: {}.", v.num_images, v.prompt);
    let dir = crate::formats::atomic::ensure_dir(output_dir, Path::new("validation"))?;
    let size = models.default_size();
    let scale = models.vae_scale_factor();
    // The pipeline's default guidance (7.5; SDXL 5.0), as the script's `pipeline(prompt, ...)`.
    let o = GenerateOptions { prompt: v.prompt.clone(), steps: 25, seed, ..GenerateOptions::default() };
    // One generator seeded with the run's seed for all images, on the device, as the script's
    // `torch.Generator(device=accelerator.device).manual_seed(seed)`.
    let shape = [1, models.unet.config.in_channels, size / scale, size / scale];
    match models.device {
        Device::Cuda(_) => tch::Cuda::manual_seed(seed),
        _ => tch::manual_seed(seed as i64),
    }
    let mut all = Vec::new();
    for i in 0..v.num_images {
        let mut s = schedulers::load(&models.scheduler_config, Some(SchedulerKind::DpmSolverMultistep))?;
        let latents = match models.device {
            Device::Cuda(_) => Tensor::randn(shape, (models.kind, models.device)),
            _ => schedulers::randn(&shape, models.kind, models.device),
        };
        let out = models.generate_from(s.as_mut(), &o, Some(latents), &mut |_, _| {})?;
        let pixels = crate::image_out::to_pixels(&out.decoded);
        let path = dir.join(format!("step-{step}-{i}.png"));
        let text = vec![("prompt".to_string(), v.prompt.clone()), ("step".to_string(), step.to_string()), ("seed".to_string(), seed.to_string())];
        crate::image_out::save_png(&path, &pixels.get(0), &text)?;
        all.push(pixels);
    }
    Ok(Tensor::cat(&all, 0))
}
