//! EulerAncestralDiscreteScheduler: an Euler step down to sigma_down, then fresh noise up to the
//! next sigma. Each step draws noise with [`super::randn`] (libtorch's global CPU generator, in
//! the model output's dtype), as diffusers does with a CPU `torch.Generator`.
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing, EULER_ANCESTRAL};
use super::schedule::{np_interp, sigma_init_noise, spaced_timesteps, TorchF32, TrainSchedule};
use super::{cached_step_index, check_step_inputs, check_steps, not_ready, randn, sigma_scaled_input, Scheduler, SchedulerKind};
use anyhow::{anyhow, Result};
use tch::{Kind, Tensor};

const NAME: &str = "EulerAncestralDiscreteScheduler";

pub struct EulerAncestralDiscreteScheduler {
    train: i64,
    spacing: TimestepSpacing,
    steps_offset: i64,
    prediction_type: PredictionType,
    train_sigmas: Vec<f32>,
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    step_index: Option<usize>,
}

impl EulerAncestralDiscreteScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let c = config.common(&EULER_ANCESTRAL)?;
        let schedule = TrainSchedule::new(&c, true)?;
        Ok(EulerAncestralDiscreteScheduler {
            train: c.num_train_timesteps,
            spacing: c.timestep_spacing,
            steps_offset: c.steps_offset,
            prediction_type: c.prediction_type,
            train_sigmas: schedule.sigmas(),
            sigmas: vec![],
            timesteps: vec![],
            step_index: None,
        })
    }

    /// The sigma schedule of this run, one more than the timesteps (ending at 0).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn init_step_index(&mut self, timestep: f64) -> Result<usize> {
        cached_step_index(&mut self.step_index, &self.timesteps, timestep, NAME)
    }
}

impl Scheduler for EulerAncestralDiscreteScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::EulerAncestral
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(NAME, n, self.train)?;
        let timesteps: Vec<f64> = spaced_timesteps(self.spacing, self.train, n, self.steps_offset, false).into_iter().map(|t| t as f32 as f64).collect();
        let train_sigmas: Vec<f64> = self.train_sigmas.iter().map(|&s| s as f64).collect();
        let mut sigmas: Vec<f32> = timesteps.iter().map(|&t| np_interp(t, &train_sigmas) as f32).collect();
        sigmas.push(0.0);
        self.sigmas = sigmas;
        self.timesteps = timesteps;
        self.step_index = None;
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
        let i = self.init_step_index(timestep)?;
        if i + 1 >= self.sigmas.len() {
            return Err(anyhow!("{NAME}: stepped past the last timestep"));
        }
        let sigma = self.sigmas[i];
        let sample = sample.to_kind(Kind::Float);
        let pred_original = match self.prediction_type {
            PredictionType::VPrediction => model_output * (-sigma / (sigma * sigma + 1.0).t_sqrt()) as f64 + &sample / (sigma * sigma + 1.0) as f64,
            _ => &sample - model_output * sigma as f64,
        };
        let (from, to) = (sigma, self.sigmas[i + 1]);
        let sigma_up = (to * to * (from * from - to * to) / (from * from)).t_sqrt();
        let sigma_down = (to * to - sigma_up * sigma_up).t_sqrt();
        let derivative = (&sample - pred_original) / sigma as f64;
        let dt = sigma_down - sigma;
        let prev = sample + derivative * dt as f64;
        let noise = randn(&model_output.size(), model_output.kind(), model_output.device());
        let prev = prev + noise * sigma_up as f64;
        self.step_index = Some(i + 1);
        Ok(prev.to_kind(model_output.kind()))
    }

    fn set_begin_index(&mut self, index: usize) {
        self.step_index = Some(index);
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        let sigma = super::add_noise_sigma(&self.sigmas, self.step_index, &self.timesteps, timestep, NAME)?;
        super::sigma_add_noise(sigma, original, noise)
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}
