//! DPMSolverMultistepScheduler, DPM-Solver++ (2M by default; orders 1 to 3, midpoint or Heun,
//! and the SDE variant `sde-dpmsolver++`, which draws noise each step like Euler ancestral).
//!
//! The coefficients are 0-d f32 tensor arithmetic in diffusers; here they are f32 scalars with
//! the same operations in the same order, with libtorch's own `sqrt`/`log`/`exp` (see `TorchF32`).
use super::config::{
    choose, AlgorithmType, BetaSchedule, FinalSigmasType, PredictionType, SchedulerConfig, SolverTypeName, TimestepSpacing, VarianceType, DPM,
};
use super::schedule::{karras_sigmas, log_f32, np_arange, np_interp, np_linspace, np_round, sigma_to_t, TorchF32, TrainSchedule};
use super::{check_steps, multistep_index, randn, Scheduler, SchedulerKind};
use crate::models::config::Named;
use anyhow::{anyhow, bail, Result};
use tch::{Kind, Tensor};

const NAME: &str = "DPMSolverMultistepScheduler";

#[derive(Clone, Copy, PartialEq)]
enum SolverType {
    Midpoint,
    Heun,
}

pub struct DpmSolverMultistepScheduler {
    /// The plain or the Karras kind (the sigmas come from the config either way).
    kind: SchedulerKind,
    train: i64,
    spacing: TimestepSpacing,
    steps_offset: i64,
    prediction_type: PredictionType,
    solver_order: usize,
    sde: bool,
    solver_type: SolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    karras: bool,
    /// `sigma_min`, `sigma_max` of the Karras schedule where the config has them (diffusers
    /// reads them from the config although DPM-Solver has no such parameters: a config written
    /// by EulerDiscreteScheduler carries them).
    karras_range: (Option<f64>, Option<f64>),
    round_karras_timesteps: bool,
    final_sigma_min: bool,
    /// Where `lambda_min_clipped` cuts the schedule: timesteps come from 0..last_timestep.
    last_timestep: i64,
    train_sigmas: Vec<f32>,
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    step_index: Option<usize>,
    /// The last `solver_order` converted model outputs (x0 predictions), oldest first.
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
}

/// alpha_t and sigma_t of a Karras sigma: 1 / sqrt(sigma^2 + 1) and sigma * alpha_t.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).t_sqrt();
    (alpha, sigma * alpha)
}

/// lambda = log(alpha) - log(sigma) (+inf at sigma = 0, as in torch).
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.t_log() - sigma.t_log()
}

impl DpmSolverMultistepScheduler {
    /// Reports itself as `kind` (the `-karras` name it was built for).
    pub(crate) fn with_kind(self, kind: SchedulerKind) -> Self {
        Self { kind, ..self }
    }

    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let c = config.common(&DPM)?;
        config.reject_thresholding(NAME)?;
        let karras = config.use_karras_sigmas.unwrap_or(false);
        // Karras comes first in diffusers' set_timesteps: with it, use_lu_lambdas is not read.
        // use_flow_sigmas also changes alpha_t and sigma_t, so it counts either way.
        let lu = if karras { None } else { config.use_lu_lambdas };
        config.reject_other_sigmas(NAME, &[("use_lu_lambdas", lu), ("use_flow_sigmas", config.use_flow_sigmas)])?;
        if karras {
            config.check_karras_range(NAME)?;
        }
        // use_dynamic_shifting (with time_shift_type) only acts on a `mu` passed to
        // set_timesteps, which Stable Diffusion's pipelines never pass; flow_shift only with
        // use_flow_sigmas (rejected above).
        if config.use_dynamic_shifting == Some(true) {
            tracing::debug!("{NAME}: use_dynamic_shifting true has no effect without a mu (ignored, as by diffusers' SD pipelines)");
        }
        // variance_type: only a learned variance changes anything (diffusers then keeps the first
        // 3 channels of an epsilon prediction, which fails on 4-channel latents); the
        // "fixed_small" every DDPMScheduler config carries, and any other value, is not read.
        match &config.variance_type {
            Some(v @ Named::Known(VarianceType::Learned | VarianceType::LearnedRange)) if c.prediction_type == PredictionType::Epsilon => {
                bail!("variance_type {:?} is not supported by {NAME} (a learned variance is for models that predict it in extra channels)", v.name())
            }
            Some(v) => tracing::debug!("{NAME}: variance_type {:?} does not change its steps (ignored, as in diffusers)", v.name()),
            None => {}
        }
        // diffusers maps DEIS's algorithm and UniPC's solver types onto DPM-Solver++ midpoint.
        let sde = choose(
            NAME,
            "algorithm_type",
            config.algorithm_type.as_ref(),
            AlgorithmType::DpmSolverPlusPlus,
            &[(AlgorithmType::DpmSolverPlusPlus, false), (AlgorithmType::Deis, false), (AlgorithmType::SdeDpmSolverPlusPlus, true)],
        )
        .map_err(|e| anyhow!("{e}; the deprecated dpmsolver and sde-dpmsolver are not"))?;
        let solver_type = choose(
            NAME,
            "solver_type",
            config.solver_type.as_ref(),
            SolverTypeName::Midpoint,
            &[
                (SolverTypeName::Midpoint, SolverType::Midpoint),
                (SolverTypeName::Heun, SolverType::Heun),
                (SolverTypeName::Logrho, SolverType::Midpoint),
                (SolverTypeName::Bh1, SolverType::Midpoint),
                (SolverTypeName::Bh2, SolverType::Midpoint),
            ],
        )?;
        // diffusers runs every solver_order above 3 exactly as 3 (it keeps that many outputs,
        // but its highest update, the third-order one, reads 3 of them); below 1 it fails.
        let solver_order = config.solver_order.unwrap_or(2);
        if solver_order < 1 {
            bail!("solver_order {solver_order} is not supported by {NAME} (1 or more; above 3 it steps as 3)");
        }
        let solver_order = solver_order.min(3);
        let final_sigma_min = choose(
            NAME,
            "final_sigmas_type",
            config.final_sigmas_type.as_ref(),
            FinalSigmasType::Zero,
            &[(FinalSigmasType::Zero, false), (FinalSigmasType::SigmaMin, true)],
        )?;
        let schedule = TrainSchedule::new(&c, true)?;
        let last_timestep = schedule.last_unclipped_timestep(config.lambda_min_clipped, c.num_train_timesteps)?;
        Ok(DpmSolverMultistepScheduler {
            kind: SchedulerKind::DpmSolverMultistep,
            train: c.num_train_timesteps,
            spacing: c.timestep_spacing,
            steps_offset: c.steps_offset,
            prediction_type: c.prediction_type,
            solver_order: solver_order as usize,
            sde,
            solver_type,
            lower_order_final: config.lower_order_final.unwrap_or(true),
            euler_at_final: config.euler_at_final.unwrap_or(false),
            karras,
            karras_range: (config.sigma_min, config.sigma_max),
            round_karras_timesteps: c.beta_schedule != BetaSchedule::SquaredcosCapV2,
            final_sigma_min,
            last_timestep,
            train_sigmas: schedule.sigmas(),
            sigmas: vec![],
            timesteps: vec![],
            step_index: None,
            model_outputs: (0..solver_order).map(|_| None).collect(),
            lower_order_nums: 0,
        })
    }

    /// The sigma schedule of this run, one more than the timesteps.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The model output as a data prediction x0 (DPM-Solver++ works on x0).
    fn convert_model_output(&self, model_output: &Tensor, sample: &Tensor, i: usize) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i]);
        match self.prediction_type {
            PredictionType::Epsilon => (sample - model_output * sigma_t as f64) / alpha_t as f64,
            PredictionType::Sample => model_output.shallow_clone(),
            PredictionType::VPrediction => sample * alpha_t as f64 - model_output * sigma_t as f64,
        }
    }

    fn first_order(&self, m0: &Tensor, sample: &Tensor, noise: Option<&Tensor>, i: usize) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s, sigma_s) = alpha_sigma(self.sigmas[i]);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
        match noise {
            None => sample * (sigma_t / sigma_s) as f64 - m0 * (alpha_t * ((-h).t_exp() - 1.0)) as f64,
            Some(noise) => {
                sample * (sigma_t / sigma_s * (-h).t_exp()) as f64
                    + m0 * (alpha_t * (1.0 - (-2.0 * h).t_exp())) as f64
                    + noise * (sigma_t * (1.0 - (-2.0 * h).t_exp()).t_sqrt()) as f64
            }
        }
    }

    fn second_order(&self, m: &[Tensor], sample: &Tensor, noise: Option<&Tensor>, i: usize) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let (lambda_t, lambda_s0, lambda_s1) = (lambda(alpha_t, sigma_t), lambda(alpha_s0, sigma_s0), lambda(alpha_s1, sigma_s1));
        let (m0, m1) = (&m[m.len() - 1], &m[m.len() - 2]);
        let (h, h_0) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1);
        let r0 = h_0 / h;
        let d0 = m0;
        let d1 = (m0 - m1) * (1.0 / r0) as f64;
        match (noise, self.solver_type) {
            (None, SolverType::Midpoint) => {
                sample * (sigma_t / sigma_s0) as f64 - d0 * (alpha_t * ((-h).t_exp() - 1.0)) as f64 - d1 * (0.5 * (alpha_t * ((-h).t_exp() - 1.0))) as f64
            }
            (None, SolverType::Heun) => {
                sample * (sigma_t / sigma_s0) as f64 - d0 * (alpha_t * ((-h).t_exp() - 1.0)) as f64 + d1 * (alpha_t * (((-h).t_exp() - 1.0) / h + 1.0)) as f64
            }
            (Some(noise), solver) => {
                let e2 = (-2.0 * h).t_exp();
                let d1_coeff = match solver {
                    SolverType::Midpoint => 0.5 * (alpha_t * (1.0 - e2)),
                    SolverType::Heun => alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0),
                };
                sample * (sigma_t / sigma_s0 * (-h).t_exp()) as f64
                    + d0 * (alpha_t * (1.0 - e2)) as f64
                    + d1 * d1_coeff as f64
                    + noise * (sigma_t * (1.0 - e2).t_sqrt()) as f64
            }
        }
    }

    fn third_order(&self, m: &[Tensor], sample: &Tensor, noise: Option<&Tensor>, i: usize) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let (alpha_s2, sigma_s2) = alpha_sigma(self.sigmas[i - 2]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let (lambda_s0, lambda_s1, lambda_s2) = (lambda(alpha_s0, sigma_s0), lambda(alpha_s1, sigma_s1), lambda(alpha_s2, sigma_s2));
        let k = m.len();
        let (m0, m1, m2) = (&m[k - 1], &m[k - 2], &m[k - 3]);
        let (h, h_0, h_1) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2);
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d0 = m0;
        let d1_0 = (m0 - m1) * (1.0 / r0) as f64;
        let d1_1 = (m1 - m2) * (1.0 / r1) as f64;
        let d1 = &d1_0 + (&d1_0 - &d1_1) * (r0 / (r0 + r1)) as f64;
        let d2 = (&d1_0 - &d1_1) * (1.0 / (r0 + r1)) as f64;
        match noise {
            None => {
                let e = (-h).t_exp();
                sample * (sigma_t / sigma_s0) as f64 - d0 * (alpha_t * (e - 1.0)) as f64 + d1 * (alpha_t * ((e - 1.0) / h + 1.0)) as f64
                    - d2 * (alpha_t * ((e - 1.0 + h) / (h * h) - 0.5)) as f64
            }
            Some(noise) => {
                let e2 = (-2.0 * h).t_exp();
                sample * (sigma_t / sigma_s0 * (-h).t_exp()) as f64
                    + d0 * (alpha_t * (1.0 - e2)) as f64
                    + d1 * (alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0)) as f64
                    + d2 * (alpha_t * ((1.0 - e2 - 2.0 * h) / ((2.0 * h) * (2.0 * h)) - 0.5)) as f64
                    + noise * (sigma_t * (1.0 - e2).t_sqrt()) as f64
            }
        }
    }
}

impl Scheduler for DpmSolverMultistepScheduler {
    fn kind(&self) -> SchedulerKind {
        self.kind
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(NAME, n, self.train)?;
        let last = self.last_timestep;
        let mut timesteps: Vec<f64> = match self.spacing {
            TimestepSpacing::Linspace => {
                let mut t: Vec<f64> = np_linspace(0.0, (last - 1) as f64, n + 1).into_iter().map(np_round).collect();
                t.reverse();
                t.pop();
                t
            }
            TimestepSpacing::Leading => {
                let ratio = last / (n as i64 + 1);
                (1..=n as i64).rev().map(|i| (i * ratio + self.steps_offset) as f64).collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = self.train as f64 / n as f64;
                np_arange(last as f64, 0.0, -ratio).into_iter().map(|v| np_round(v) - 1.0).collect()
            }
        };
        let train_sigmas: Vec<f64> = self.train_sigmas.iter().map(|&s| s as f64).collect();
        let sigmas: Vec<f64> = if self.karras {
            let hi = self.karras_range.1.unwrap_or(train_sigmas[train_sigmas.len() - 1]);
            let lo = self.karras_range.0.unwrap_or(train_sigmas[0]);
            let sigmas = karras_sigmas(lo, hi, n);
            let log_sigmas = log_f32(&self.train_sigmas);
            timesteps = sigmas
                .iter()
                .map(|&s| {
                    let t = sigma_to_t(s, &log_sigmas);
                    // Rounded, except for the cosine schedule, where numpy's int64 cast truncates.
                    if self.round_karras_timesteps {
                        np_round(t)
                    } else {
                        t.trunc()
                    }
                })
                .collect();
            sigmas
        } else {
            timesteps.iter().map(|&t| np_interp(t, &train_sigmas)).collect()
        };
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(if self.final_sigma_min { self.train_sigmas[0] } else { 0.0 });
        // int64 timesteps.
        self.timesteps = timesteps.into_iter().map(|t| (t as i64) as f64).collect();
        self.sigmas = sigmas;
        self.step_index = None;
        self.model_outputs = (0..self.solver_order).map(|_| None).collect();
        self.lower_order_nums = 0;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor> {
        let i = multistep_index(NAME, model_output, sample, &mut self.step_index, &self.timesteps, self.sigmas.len(), timestep)?;
        let n = self.timesteps.len();
        let lower_order_final = i == n - 1 && (self.euler_at_final || (self.lower_order_final && n < 15) || !self.final_sigma_min);
        let lower_order_second = i + 2 == n && self.lower_order_final && n < 15;
        let converted = self.convert_model_output(model_output, sample, i);
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(converted.shallow_clone()));
        let sample = sample.to_kind(Kind::Float);
        let noise = self.sde.then(|| randn(&model_output.size(), Kind::Float, model_output.device()));
        // The newest `k` model outputs, oldest first.
        let history = |k: usize| -> Result<Vec<Tensor>> {
            let from = self.model_outputs.len().checked_sub(k).ok_or_else(|| anyhow!("{NAME}: missing history"))?;
            self.model_outputs[from..].iter().map(|m| m.as_ref().map(Tensor::shallow_clone).ok_or_else(|| anyhow!("{NAME}: missing history"))).collect()
        };
        let prev = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(&converted, &sample, noise.as_ref(), i)
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(&history(2)?, &sample, noise.as_ref(), i)
        } else {
            self.third_order(&history(3)?, &sample, noise.as_ref(), i)
        };
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(i + 1);
        Ok(prev.to_kind(model_output.kind()))
    }

    fn set_begin_index(&mut self, index: usize) {
        self.step_index = Some(index);
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        let sigma = super::add_noise_sigma(&self.sigmas, self.step_index, &self.timesteps, timestep, "DPMSolverMultistepScheduler")?;
        super::alpha_sigma_add_noise(sigma, original, noise)
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}
