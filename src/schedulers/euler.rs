//! EulerDiscreteScheduler: Euler steps in sigma space (Karras et al. 2022, algorithm 2 without
//! churn, as diffusers' pipelines call it), with float timesteps interpolated between training
//! sigmas or placed by Karras' schedule.
use super::config::{choose, choose_among, FinalSigmasType, Interpolation, PredictionType, SchedulerConfig, TimestepSpacing, TimestepType, EULER};
use super::schedule::{karras_schedule, log_f32, np_interp, sigma_init_noise, spaced_timesteps, TorchF32, TrainSchedule};
use super::{cached_step_index, check_step_inputs, check_steps, not_ready, sigma_scaled_input, Scheduler, SchedulerKind};
use crate::models::config::{ConfigName, Named};
use anyhow::{anyhow, Result};
use tch::{Device, Kind, Tensor};

pub struct EulerDiscreteScheduler {
    /// The plain or the Karras kind (the sigmas come from the config either way).
    kind: SchedulerKind,
    train: i64,
    spacing: TimestepSpacing,
    steps_offset: i64,
    prediction_type: PredictionType,
    interpolation: Interpolation,
    karras: bool,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    /// `timestep_type="continuous"` with v-prediction: timesteps are 0.25 * ln(sigma).
    continuous: bool,
    /// `final_sigmas_type="sigma_min"`: end at the smallest training sigma instead of 0.
    final_sigma_min: bool,
    /// Training sigmas, ascending, f32.
    train_sigmas: Vec<f32>,
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    step_index: Option<usize>,
}

impl EulerDiscreteScheduler {
    /// Reports itself as `kind` (the `-karras` name it was built for).
    pub(crate) fn with_kind(self, kind: SchedulerKind) -> Self {
        Self { kind, ..self }
    }

    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let c = config.common(&EULER)?;
        config.reject_other_sigmas(EULER.name, &[])?;
        let interpolation = choose_among(EULER.name, "interpolation_type", config.interpolation_type.as_ref(), Interpolation::Linear, Interpolation::ALL)?;
        // diffusers tests `timestep_type == "continuous" and prediction_type == "v_prediction"`
        // and nothing else: any other value, or "continuous" with another prediction type, is
        // the discrete one.
        let continuous = match &config.timestep_type {
            Some(Named::Known(TimestepType::Continuous)) => true,
            Some(Named::Known(TimestepType::Discrete)) | None => false,
            Some(Named::Other(t)) => {
                tracing::debug!("{}: timestep_type {t:?} is treated as \"discrete\", as diffusers does", EULER.name);
                false
            }
        };
        let final_sigma_min = choose(
            EULER.name,
            "final_sigmas_type",
            config.final_sigmas_type.as_ref(),
            FinalSigmasType::Zero,
            &[(FinalSigmasType::Zero, false), (FinalSigmasType::SigmaMin, true)],
        )?;
        let karras = config.use_karras_sigmas.unwrap_or(false);
        if karras {
            config.check_karras_range(EULER.name)?;
        }
        let schedule = TrainSchedule::new(&c, true)?;
        Ok(EulerDiscreteScheduler {
            kind: SchedulerKind::Euler,
            train: c.num_train_timesteps,
            spacing: c.timestep_spacing,
            steps_offset: c.steps_offset,
            prediction_type: c.prediction_type,
            interpolation,
            karras,
            sigma_min: config.sigma_min,
            sigma_max: config.sigma_max,
            continuous: continuous && c.prediction_type == PredictionType::VPrediction,
            final_sigma_min,
            train_sigmas: schedule.sigmas(),
            sigmas: vec![],
            timesteps: vec![],
            step_index: None,
        })
    }

    /// The sigma schedule of this run, one more than the timesteps (ending at 0 or sigma_min).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn init_step_index(&mut self, timestep: f64) -> Result<usize> {
        cached_step_index(&mut self.step_index, &self.timesteps, timestep, "EulerDiscreteScheduler")
    }
}

impl Scheduler for EulerDiscreteScheduler {
    fn kind(&self) -> SchedulerKind {
        self.kind
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps("EulerDiscreteScheduler", n, self.train)?;
        // numpy computes in f64, then the timesteps become float32.
        let mut timesteps: Vec<f64> = spaced_timesteps(self.spacing, self.train, n, self.steps_offset, false).into_iter().map(|t| t as f32 as f64).collect();
        let train_sigmas: Vec<f64> = self.train_sigmas.iter().map(|&s| s as f64).collect();
        let mut sigmas: Vec<f64> = match self.interpolation {
            Interpolation::Linear => timesteps.iter().map(|&t| np_interp(t, &train_sigmas)).collect(),
            Interpolation::LogLinear => {
                // torch.linspace(log(sigma_max), log(sigma_min), n + 1).exp(), in f32: n + 1
                // sigmas, then the final one (diffusers' layout, kept).
                let logs = log_f32(&[self.train_sigmas[self.train_sigmas.len() - 1], self.train_sigmas[0]]);
                let s = Tensor::linspace(logs[0] as f64, logs[1] as f64, n as i64 + 1, (Kind::Float, Device::Cpu)).exp();
                Vec::<f32>::try_from(&s)?.into_iter().map(|v| v as f64).collect()
            }
        };
        if self.karras {
            (sigmas, timesteps) = karras_schedule(&sigmas, self.sigma_min, self.sigma_max, &self.train_sigmas, n);
        }
        // ((1 - alphas_cumprod[0]) / alphas_cumprod[0]) ** 0.5 is the first training sigma.
        let last = if self.final_sigma_min { self.train_sigmas[0] } else { 0.0 };
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(last);
        if self.continuous {
            timesteps = sigmas[..sigmas.len() - 1].iter().map(|&s| (0.25f32 * s.t_log()) as f64).collect();
        }
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
        sigma_scaled_input(&self.sigmas, &mut self.step_index, &self.timesteps, sample, timestep, "EulerDiscreteScheduler")
    }

    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor> {
        check_step_inputs("EulerDiscreteScheduler", model_output, sample)?;
        if self.sigmas.is_empty() {
            return Err(not_ready("EulerDiscreteScheduler"));
        }
        let i = self.init_step_index(timestep)?;
        if i + 1 >= self.sigmas.len() {
            return Err(anyhow!("EulerDiscreteScheduler: stepped past the last timestep"));
        }
        let sample = sample.to_kind(Kind::Float);
        let sigma = self.sigmas[i];
        // s_churn = 0: gamma = 0, sigma_hat = sigma * (0 + 1).
        let sigma_hat = sigma * 1.0;
        let pred_original = match self.prediction_type {
            PredictionType::Sample => model_output.shallow_clone(),
            PredictionType::Epsilon => &sample - model_output * sigma_hat as f64,
            PredictionType::VPrediction => model_output * (-sigma / (sigma * sigma + 1.0).t_sqrt()) as f64 + &sample / (sigma * sigma + 1.0) as f64,
        };
        let derivative = (&sample - pred_original) / sigma_hat as f64;
        let dt = self.sigmas[i + 1] - sigma_hat;
        let prev = sample + derivative * dt as f64;
        self.step_index = Some(i + 1);
        Ok(prev.to_kind(model_output.kind()))
    }

    fn set_begin_index(&mut self, index: usize) {
        self.step_index = Some(index);
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        let sigma = super::add_noise_sigma(&self.sigmas, self.step_index, &self.timesteps, timestep, "EulerDiscreteScheduler")?;
        super::sigma_add_noise(sigma, original, noise)
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}
