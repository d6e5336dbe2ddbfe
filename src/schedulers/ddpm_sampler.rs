//! DDPMScheduler as a sampler (ancestral DDPM steps, Ho et al. 2020 formula 7), for models whose
//! own scheduler_config.json names DDPMScheduler: diffusers' pipelines sample with it then. Each
//! step but the last draws noise with [`super::randn`] (libtorch's global CPU generator, in the
//! model output's dtype), as diffusers does with a CPU `torch.Generator`.
use super::config::{choose, PredictionType, SchedulerConfig, TimestepSpacing, VarianceType, DDPM_SAMPLING};
use super::schedule::{integer_timestep, spaced_timesteps, train_index, TorchF32, TrainSchedule};
use super::{check_step_inputs, check_steps, not_ready, randn, Scheduler, SchedulerKind};
use anyhow::{anyhow, bail, Result};
use tch::Tensor;

const NAME: &str = "DDPMScheduler";

/// The variances diffusers' DDPM step can add (the learned ones need a UNet that predicts them,
/// which Stable Diffusion's does not; "fixed_large_log" gives NaN latents in diffusers).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variance {
    Small,
    SmallLog,
    Large,
}

pub struct DdpmSampler {
    train: i64,
    spacing: TimestepSpacing,
    steps_offset: i64,
    prediction_type: PredictionType,
    clip: Option<f64>,
    variance: Variance,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
}

impl DdpmSampler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let c = config.common(&DDPM_SAMPLING)?;
        config.reject_thresholding(NAME)?;
        let variance = choose(
            NAME,
            "variance_type",
            config.variance_type.as_ref(),
            VarianceType::FixedSmall,
            &[(VarianceType::FixedSmall, Variance::Small), (VarianceType::FixedSmallLog, Variance::SmallLog), (VarianceType::FixedLarge, Variance::Large)],
        )?;
        let clip_sample = config.clip_sample.unwrap_or(true);
        let range = config.clip_sample_range.unwrap_or(1.0);
        if clip_sample && (range.is_nan() || range <= 0.0) {
            bail!("clip_sample_range {range} must be positive when clip_sample is true ({NAME})");
        }
        let schedule = TrainSchedule::new(&c, false)?;
        Ok(DdpmSampler {
            train: c.num_train_timesteps,
            spacing: c.timestep_spacing,
            steps_offset: c.steps_offset,
            prediction_type: c.prediction_type,
            clip: clip_sample.then_some(range),
            variance,
            alphas_cumprod: schedule.alphas_cumprod_vec(),
            timesteps: vec![],
        })
    }
}

impl Scheduler for DdpmSampler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Ddpm
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(NAME, n, self.train)?;
        self.timesteps = spaced_timesteps(self.spacing, self.train, n, self.steps_offset, true);
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor> {
        check_step_inputs(NAME, model_output, sample)?;
        if self.timesteps.is_empty() {
            return Err(not_ready(NAME));
        }
        let t = integer_timestep(timestep)?;
        // The next timestep of this run (diffusers' previous_timestep: the first position of t).
        let index = self.timesteps.iter().position(|&v| v == timestep).ok_or_else(|| anyhow!("{NAME}: timestep {t} is not one of this run's timesteps"))?;
        let prev_t = self.timesteps.get(index + 1).map_or(-1, |&v| v as i64);
        let a_t = self.alphas_cumprod[train_index(t, self.train)?];
        let a_prev = if prev_t >= 0 { self.alphas_cumprod[train_index(prev_t, self.train)?] } else { 1.0 };
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let current_alpha = a_t / a_prev;
        let current_beta = 1.0 - current_alpha;
        let pred_original = match self.prediction_type {
            PredictionType::Epsilon => (sample - model_output * b_t.t_sqrt() as f64) / a_t.t_sqrt() as f64,
            PredictionType::Sample => model_output.shallow_clone(),
            PredictionType::VPrediction => sample * a_t.t_sqrt() as f64 - model_output * b_t.t_sqrt() as f64,
        };
        let pred_original = match self.clip {
            Some(r) => pred_original.clamp(-r, r),
            None => pred_original,
        };
        let original_coeff = (a_prev.t_sqrt() * current_beta) / b_t;
        let sample_coeff = current_alpha.t_sqrt() * b_prev / b_t;
        let prev = pred_original * original_coeff as f64 + sample * sample_coeff as f64;
        if t <= 0 {
            return Ok(prev);
        }
        let noise = randn(&model_output.size(), model_output.kind(), model_output.device());
        let variance = (b_prev / b_t * current_beta).max(1e-20);
        let std = match self.variance {
            Variance::Small => variance.t_sqrt(),
            // log, exp(0.5 * log), used as the standard deviation itself.
            Variance::SmallLog => (0.5 * variance.t_log()).t_exp(),
            Variance::Large => current_beta.t_sqrt(),
        };
        Ok(prev + noise * std as f64)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        super::alphas_add_noise(&self.alphas_cumprod, self.train, original, noise, timestep)
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}
