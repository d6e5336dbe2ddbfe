//! HeunDiscreteScheduler: Heun's second-order method in sigma space (Karras et al. 2022,
//! algorithm 1 without churn). Every timestep but the first appears twice: the UNet is asked
//! once for the Euler step and once for the correction, so a run of n steps calls it 2n - 1 times.
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing, HEUN};
use super::schedule::{karras_schedule, np_interp, sigma_init_noise, spaced_timesteps, TorchF32, TrainSchedule};
use super::{cached_step_index, check_step_inputs, check_steps, not_ready, sigma_scaled_input, Scheduler, SchedulerKind};
use anyhow::{anyhow, bail, Result};
use tch::Tensor;

const NAME: &str = "HeunDiscreteScheduler";

pub struct HeunScheduler {
    kind: SchedulerKind,
    train: i64,
    spacing: TimestepSpacing,
    steps_offset: i64,
    prediction_type: PredictionType,
    clip: Option<f64>,
    karras: bool,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    train_sigmas: Vec<f32>,
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    step_index: Option<usize>,
    /// The first-order half of a step: its derivative, dt and sample, until the correction.
    first: Option<(Tensor, f32, Tensor)>,
}

impl HeunScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let c = config.common(&HEUN)?;
        config.reject_other_sigmas(NAME, &[])?;
        let karras = config.use_karras_sigmas.unwrap_or(false);
        if karras {
            config.check_karras_range(NAME)?;
        }
        let clip_sample = config.clip_sample.unwrap_or(false);
        let range = config.clip_sample_range.unwrap_or(1.0);
        if clip_sample && (range.is_nan() || range <= 0.0) {
            bail!("clip_sample_range {range} must be positive when clip_sample is true ({NAME})");
        }
        let schedule = TrainSchedule::new(&c, true)?;
        Ok(HeunScheduler {
            kind: SchedulerKind::Heun,
            train: c.num_train_timesteps,
            spacing: c.timestep_spacing,
            steps_offset: c.steps_offset,
            prediction_type: c.prediction_type,
            clip: clip_sample.then_some(range),
            karras,
            sigma_min: config.sigma_min,
            sigma_max: config.sigma_max,
            train_sigmas: schedule.sigmas(),
            sigmas: vec![],
            timesteps: vec![],
            step_index: None,
            first: None,
        })
    }

    /// Reports itself as `kind` (the `-karras` name it was built for).
    pub(crate) fn with_kind(self, kind: SchedulerKind) -> Self {
        Self { kind, ..self }
    }
}

impl Scheduler for HeunScheduler {
    fn kind(&self) -> SchedulerKind {
        self.kind
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(NAME, n, self.train)?;
        // float32 timesteps first (numpy), then sigmas interpolated at them.
        let mut timesteps: Vec<f64> = spaced_timesteps(self.spacing, self.train, n, self.steps_offset, false).into_iter().map(|t| t as f32 as f64).collect();
        let train_sigmas: Vec<f64> = self.train_sigmas.iter().map(|&s| s as f64).collect();
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| np_interp(t, &train_sigmas)).collect();
        if self.karras {
            (sigmas, timesteps) = karras_schedule(&sigmas, self.sigma_min, self.sigma_max, &self.train_sigmas, n);
        }
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(0.0);
        // [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0] and [t0, t1, t1, ..., t_{n-1}, t_{n-1}].
        let mut doubled_sigmas = vec![sigmas[0]];
        for &s in &sigmas[1..sigmas.len() - 1] {
            doubled_sigmas.extend([s, s]);
        }
        doubled_sigmas.push(0.0);
        let mut doubled_t = vec![timesteps[0]];
        for &t in &timesteps[1..] {
            doubled_t.extend([t, t]);
        }
        self.sigmas = doubled_sigmas;
        self.timesteps = doubled_t;
        self.step_index = None;
        self.first = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        sigma_init_noise(&self.sigmas, &self.train_sigmas, self.spacing)
    }

    fn scale_model_input(&mut self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        sigma_scaled_input(&self.sigmas, &mut self.step_index, &self.timesteps, sample, timestep, NAME)
    }

    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor> {
        check_step_inputs(NAME, model_output, sample)?;
        if self.sigmas.is_empty() {
            return Err(not_ready(NAME));
        }
        let i = cached_step_index(&mut self.step_index, &self.timesteps, timestep, NAME)?;
        if i + 1 >= self.sigmas.len() {
            return Err(anyhow!("{NAME}: stepped past the last timestep"));
        }
        let first_order = self.first.is_none();
        let (sigma, sigma_next) = if first_order { (self.sigmas[i], self.sigmas[i + 1]) } else { (self.sigmas[i - 1], self.sigmas[i]) };
        let sigma_hat = sigma * 1.0;
        let sigma_input = if first_order { sigma_hat } else { sigma_next };
        let pred_original = match self.prediction_type {
            PredictionType::Epsilon => sample - model_output * sigma_input as f64,
            PredictionType::VPrediction => {
                let s2 = sigma_input * sigma_input + 1.0;
                model_output * (-sigma_input / s2.t_sqrt()) as f64 + sample / s2 as f64
            }
            PredictionType::Sample => model_output.shallow_clone(),
        };
        let pred_original = match self.clip {
            Some(r) => pred_original.clamp(-r, r),
            None => pred_original,
        };
        let prev = match self.first.take() {
            None => {
                let derivative = (sample - pred_original) / sigma_hat as f64;
                let dt = sigma_next - sigma_hat;
                let prev = sample + &derivative * dt as f64;
                self.first = Some((derivative, dt, sample.shallow_clone()));
                prev
            }
            Some((prev_derivative, dt, first_sample)) => {
                let derivative = (sample - pred_original) / sigma_next as f64;
                let derivative = (prev_derivative + derivative) / 2.0;
                first_sample + derivative * dt as f64
            }
        };
        self.step_index = Some(i + 1);
        Ok(prev)
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}
