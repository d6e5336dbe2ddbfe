//! KDPM2DiscreteScheduler: k-diffusion's DPM-Solver-2 (Karras et al. 2022's "DPM2"), a midpoint
//! method in sigma space. Each step is an Euler half-step to the geometric mean of this sigma and
//! the next (where the UNet is asked again, at that interpolated sigma's timestep), then a full
//! step with the midpoint's derivative: a run of n steps calls the UNet 2n - 1 times.
//!
//! The schedule is computed as diffusers does, in f32 tensor operations (`log`, `lerp`, `exp`),
//! and the interpolated timesteps with its `_sigma_to_t`, which there runs on f32 tensors: see
//! `sigma_to_t_f32`. `Kdpm2Base` is shared with the ancestral variant.
use super::config::ClassInfo;
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing, KDPM2};
use super::schedule::{karras_sigmas, log_f32, np_interp, np_round, sigma_init_noise, sigma_to_t, spaced_timesteps, TorchF32, TrainSchedule};
use super::{cached_step_index, check_step_inputs, check_steps, not_ready, Scheduler, SchedulerKind};
use anyhow::{anyhow, bail, Result};
use tch::{Device, Kind, Tensor};

const NAME: &str = "KDPM2DiscreteScheduler";

/// What both KDPM2 classes read from the config.
pub(crate) struct Kdpm2Base {
    pub train: i64,
    pub spacing: TimestepSpacing,
    pub steps_offset: i64,
    pub prediction_type: PredictionType,
    pub karras: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    /// Training sigmas, ascending, f32.
    pub train_sigmas: Vec<f32>,
}

impl Kdpm2Base {
    pub fn new(config: &SchedulerConfig, class: &ClassInfo) -> Result<Self> {
        let config = config.with_sd_betas();
        let c = config.common(class)?;
        config.reject_other_sigmas(class.name, &[])?;
        let karras = config.use_karras_sigmas.unwrap_or(false);
        if karras {
            config.check_karras_range(class.name)?;
        }
        if c.prediction_type == PredictionType::Sample {
            // diffusers builds it, then raises NotImplementedError at the first step.
            bail!("prediction_type \"sample\" is not supported by {} (supported: epsilon, v_prediction)", class.name);
        }
        let schedule = TrainSchedule::new(&c, false)?;
        Ok(Kdpm2Base {
            train: c.num_train_timesteps,
            spacing: c.timestep_spacing,
            steps_offset: c.steps_offset,
            prediction_type: c.prediction_type,
            karras,
            sigma_min: config.sigma_min,
            sigma_max: config.sigma_max,
            train_sigmas: schedule.sigmas(),
        })
    }

    /// The n + 1 sigmas (f32, ending at 0) and n timesteps of a run: float32 spaced timesteps
    /// with their interpolated sigmas, or Karras sigmas with their rounded float64 timesteps.
    pub fn base_schedule(&self, name: &str, n: usize) -> Result<(Tensor, Vec<f64>)> {
        check_steps(name, n, self.train)?;
        let mut timesteps: Vec<f64> = spaced_timesteps(self.spacing, self.train, n, self.steps_offset, false).into_iter().map(|t| t as f32 as f64).collect();
        let train_sigmas: Vec<f64> = self.train_sigmas.iter().map(|&s| s as f64).collect();
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| np_interp(t, &train_sigmas)).collect();
        if self.karras {
            let lo = self.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let hi = self.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(lo, hi, n);
            let log_sigmas = log_f32(&self.train_sigmas);
            timesteps = sigmas.iter().map(|&s| np_round(sigma_to_t(s, &log_sigmas))).collect();
        }
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(0.0);
        Ok((Tensor::from_slice(&sigmas), timesteps))
    }

    /// The timestep of each interpolated sigma: an f32 value, which diffusers then casts to the
    /// timesteps' dtype (float32, or float64 for Karras sigmas) without changing it.
    pub fn interpolated_timesteps(&self, sigmas_interpol: &[f32]) -> Vec<f64> {
        let log_sigmas = log_f32(&self.train_sigmas);
        sigmas_interpol.iter().map(|&s| sigma_to_t_f32(s, &log_sigmas) as f64).collect()
    }

    /// x0 from the model output at `sigma_input`, as both KDPM2 classes compute it.
    pub fn pred_original(&self, model_output: &Tensor, sample: &Tensor, sigma_input: f32) -> Tensor {
        match self.prediction_type {
            PredictionType::VPrediction => {
                let s2 = sigma_input * sigma_input + 1.0;
                model_output * (-sigma_input / s2.t_sqrt()) as f64 + sample / s2 as f64
            }
            _ => sample - model_output * sigma_input as f64,
        }
    }
}

/// diffusers' `_sigma_to_t` on a 0-d float32 tensor: the same search as
/// [`super::schedule::sigma_to_t`], with every value in f32 (f32 weights and interpolation), as
/// it computes when given torch tensors. Its `np.log` there is numpy's f32 log, which is not
/// correctly rounded; ours is libtorch's, so a midpoint timestep can differ from diffusers' in
/// its last bit (about 1.5e-5 at t = 150), which the UNet's f32 timestep embedding does not show.
pub(crate) fn sigma_to_t_f32(sigma: f32, log_sigmas: &[f32]) -> f32 {
    if sigma.is_nan() {
        return f32::NAN;
    }
    let log_sigma = sigma.max(1e-10).t_log();
    let (mut count, mut best, mut low) = (0usize, 0usize, 0usize);
    for (i, &l) in log_sigmas.iter().enumerate() {
        if log_sigma - l >= 0.0 {
            count += 1;
        }
        if count > best {
            best = count;
            low = i;
        }
    }
    let low = low.min(log_sigmas.len() - 2);
    let high = low + 1;
    let (l, h) = (log_sigmas[low], log_sigmas[high]);
    let w = ((l - log_sigma) / (l - h)).clamp(0.0, 1.0);
    (1.0 - w) * low as f32 + w * high as f32
}

/// `[x0, x1, x1, x2, x2, ..., xn, xn, xn]`: diffusers' `cat([x[:1], x[1:].repeat_interleave(2), x[-1:]])`.
pub(crate) fn doubled(x: &[f32]) -> Vec<f32> {
    let mut out = vec![x[0]];
    for &v in &x[1..] {
        out.extend([v, v]);
    }
    out.push(x[x.len() - 1]);
    out
}

pub(crate) fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).to_device(Device::Cpu)).unwrap_or_default()
}

pub struct Kdpm2Scheduler {
    kind: SchedulerKind,
    base: Kdpm2Base,
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    timesteps: Vec<f64>,
    step_index: Option<usize>,
    /// The sample of the first half of a step, until its second half.
    first: Option<Tensor>,
}

impl Kdpm2Scheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        Ok(Kdpm2Scheduler {
            kind: SchedulerKind::Kdpm2,
            base: Kdpm2Base::new(config, &KDPM2)?,
            sigmas: vec![],
            sigmas_interpol: vec![],
            timesteps: vec![],
            step_index: None,
            first: None,
        })
    }

    /// Reports itself as `kind` (the `-karras` name it was built for).
    pub(crate) fn with_kind(self, kind: SchedulerKind) -> Self {
        Self { kind, ..self }
    }

    fn first_order(&self) -> bool {
        self.first.is_none()
    }
}

impl Scheduler for Kdpm2Scheduler {
    fn kind(&self) -> SchedulerKind {
        self.kind
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let (sigmas, timesteps) = self.base.base_schedule(NAME, n)?;
        // The geometric mean of each sigma and the one before it (the first is NaN, unused).
        let interpol = to_vec(&sigmas.log().lerp(&sigmas.roll([1], [0]).log(), 0.5).exp());
        let t_interpol = self.base.interpolated_timesteps(&interpol);
        let mut all = vec![timesteps[0]];
        for (ti, t) in t_interpol[1..interpol.len() - 1].iter().zip(&timesteps[1..]) {
            all.extend([*ti, *t]);
        }
        self.sigmas = doubled(&to_vec(&sigmas));
        self.sigmas_interpol = doubled(&interpol);
        self.timesteps = all;
        self.step_index = None;
        self.first = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        sigma_init_noise(&self.sigmas, &self.base.train_sigmas, self.base.spacing)
    }

    fn scale_model_input(&mut self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        if self.sigmas.is_empty() {
            return Err(not_ready(NAME));
        }
        let i = cached_step_index(&mut self.step_index, &self.timesteps, timestep, NAME)?;
        let sigmas = if self.first_order() { &self.sigmas } else { &self.sigmas_interpol };
        let sigma = *sigmas.get(i).ok_or_else(|| anyhow!("{NAME}: stepped past the last timestep"))?;
        Ok(sample / (sigma * sigma + 1.0).t_sqrt() as f64)
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
        let prev = match self.first.take() {
            None => {
                let (sigma, sigma_interpol) = (self.sigmas[i], self.sigmas_interpol[i + 1]);
                let pred_original = self.base.pred_original(model_output, sample, sigma);
                let derivative = (sample - pred_original) / sigma as f64;
                self.first = Some(sample.shallow_clone());
                sample + derivative * (sigma_interpol - sigma) as f64
            }
            Some(first_sample) => {
                let (sigma, sigma_interpol, sigma_next) = (self.sigmas[i - 1], self.sigmas_interpol[i], self.sigmas[i]);
                let pred_original = self.base.pred_original(model_output, sample, sigma_interpol);
                let derivative = (sample - pred_original) / sigma_interpol as f64;
                first_sample + derivative * (sigma_next - sigma) as f64
            }
        };
        self.step_index = Some(i + 1);
        Ok(prev)
    }

    fn prediction_type(&self) -> PredictionType {
        self.base.prediction_type
    }
}
