//! DDIMScheduler with eta = 0 (deterministic), as diffusers' pipelines call it.
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing, DDIM};
use super::schedule::{integer_timestep, spaced_timesteps, train_index, TorchF32, TrainSchedule};
use super::{check_step_inputs, check_steps, not_ready, Scheduler, SchedulerKind};
use anyhow::{bail, Result};
use tch::Tensor;

pub struct DdimScheduler {
    train: i64,
    spacing: TimestepSpacing,
    steps_offset: i64,
    prediction_type: PredictionType,
    /// `clip_sample` (diffusers' default: on) with its range.
    clip: Option<f64>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    num_inference_steps: Option<usize>,
    timesteps: Vec<f64>,
}

impl DdimScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let c = config.common(&DDIM)?;
        config.reject_thresholding(DDIM.name)?;
        // clip_sample_range is read only when clipping (thresholding, which would replace it, is
        // rejected above).
        let clip_sample = config.clip_sample.unwrap_or(true);
        let range = config.clip_sample_range.unwrap_or(1.0);
        if clip_sample && (range.is_nan() || range <= 0.0) {
            bail!("clip_sample_range {range} must be positive when clip_sample is true ({})", DDIM.name);
        }
        let schedule = TrainSchedule::new(&c, false)?;
        let alphas_cumprod = schedule.alphas_cumprod_vec();
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) { 1.0 } else { alphas_cumprod[0] };
        Ok(DdimScheduler {
            train: c.num_train_timesteps,
            spacing: c.timestep_spacing,
            steps_offset: c.steps_offset,
            prediction_type: c.prediction_type,
            clip: clip_sample.then_some(range),
            alphas_cumprod,
            final_alpha_cumprod,
            num_inference_steps: None,
            timesteps: vec![],
        })
    }
}

impl Scheduler for DdimScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Ddim
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps("DDIMScheduler", n, self.train)?;
        self.timesteps = spaced_timesteps(self.spacing, self.train, n, self.steps_offset, true);
        self.num_inference_steps = Some(n);
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor> {
        check_step_inputs("DDIMScheduler", model_output, sample)?;
        let n = self.num_inference_steps.ok_or_else(|| not_ready("DDIMScheduler"))?;
        let t = integer_timestep(timestep)?;
        // diffusers steps by the fixed ratio, whatever the spacing.
        let prev_t = t - self.train / n as i64;
        let a_t = self.alphas_cumprod[train_index(t, self.train)?];
        let a_prev = if prev_t >= 0 { self.alphas_cumprod[train_index(prev_t, self.train)?] } else { self.final_alpha_cumprod };
        let b_t = 1.0 - a_t;
        let (sa, sb) = (a_t.t_sqrt() as f64, b_t.t_sqrt() as f64);
        let (pred_original, pred_epsilon) = match self.prediction_type {
            PredictionType::Epsilon => ((sample - model_output * sb) / sa, model_output.shallow_clone()),
            PredictionType::Sample => (model_output.shallow_clone(), (sample - model_output * sa) / sb),
            PredictionType::VPrediction => (sample * sa - model_output * sb, model_output * sa + sample * sb),
        };
        let pred_original = match self.clip {
            Some(r) => pred_original.clamp(-r, r),
            None => pred_original,
        };
        // eta = 0: std_dev_t = 0 * variance^0.5, kept for diffusers' exact arithmetic.
        let b_prev = 1.0 - a_prev;
        let variance = b_prev / b_t * (1.0 - a_t / a_prev);
        let std_dev_t = 0.0f32 * variance.t_sqrt();
        let direction = &pred_epsilon * (1.0 - a_prev - std_dev_t * std_dev_t).t_sqrt() as f64;
        Ok(pred_original * a_prev.t_sqrt() as f64 + direction)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        super::alphas_add_noise(&self.alphas_cumprod, self.train, original, noise, timestep)
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}
