//! DEISMultistepScheduler: DEIS (Zhang & Chen 2022), an exponential integrator on the noise
//! prediction whose multistep coefficients integrate the Lagrange polynomial through the last
//! outputs in log(rho), rho = sigma / alpha ("logrho", the only solver type diffusers has).
//! Order 2 by default (1 to 3; diffusers steps any order above 3 as 3), lower orders at the start
//! and, for runs under 15 steps, at the end.
//!
//! The coefficients are 0-d f32 tensor arithmetic in diffusers (`np.log` of a 0-d tensor is
//! numpy's f32 log); here they are f32 scalars with the same operations in the same order.
//! Timesteps and sigmas are placed as DPM-Solver places them, except that the last sigma is the
//! smallest training sigma (or the last Karras sigma repeated), not 0.
use super::config::{choose_among, AlgorithmType, PredictionType, SchedulerConfig, SolverTypeName, TimestepSpacing, DEIS};
use super::schedule::{karras_sigmas, log_f32, np_arange, np_interp, np_linspace, np_round, sigma_to_t, TorchF32, TrainSchedule};
use super::{check_steps, multistep_index, Scheduler, SchedulerKind};
use crate::models::config::{ConfigName, Named};
use anyhow::{anyhow, bail, Result};
use tch::Tensor;

const NAME: &str = "DEISMultistepScheduler";

pub struct DeisScheduler {
    train: i64,
    spacing: TimestepSpacing,
    steps_offset: i64,
    prediction_type: PredictionType,
    solver_order: usize,
    lower_order_final: bool,
    karras: bool,
    karras_range: (Option<f64>, Option<f64>),
    train_sigmas: Vec<f32>,
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    step_index: Option<usize>,
    /// The last `solver_order` converted model outputs (noise predictions), oldest first.
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
}

/// alpha_t and sigma_t of a sigma: 1 / sqrt(sigma^2 + 1) and sigma * alpha_t.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).t_sqrt();
    (alpha, sigma * alpha)
}

/// numpy's log of an f32 value, as `np.log` of a 0-d f32 tensor computes it.
fn np_log(x: f32) -> f32 {
    log_f32(&[x])[0]
}

/// The integral, from `s0` to `t` in log(rho), of the Lagrange basis polynomial of `b` on (b, c).
fn ind2(t: f32, b: f32, c: f32) -> f32 {
    t * (-np_log(c) + np_log(t) - 1.0) / (np_log(b) - np_log(c))
}

/// The same for three nodes (b, c, d).
fn ind3(t: f32, b: f32, c: f32, d: f32) -> f32 {
    let (lt, lc, ld) = (np_log(t), np_log(c), np_log(d));
    let numerator = t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0);
    let denominator = (np_log(b) - lc) * (np_log(b) - ld);
    numerator / denominator
}

impl DeisScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let c = config.common(&DEIS)?;
        config.reject_thresholding(NAME)?;
        config.reject_other_sigmas(NAME, &[("use_flow_sigmas", config.use_flow_sigmas)])?;
        let karras = config.use_karras_sigmas.unwrap_or(false);
        if karras {
            config.check_karras_range(NAME)?;
        }
        // diffusers turns DPM-Solver's algorithm names into "deis" and the other solver types
        // into "logrho"; anything else fails there.
        match &config.algorithm_type {
            None | Some(Named::Known(AlgorithmType::Deis | AlgorithmType::DpmSolverPlusPlus)) => {}
            Some(Named::Other(name)) if name == "dpmsolver" => {}
            Some(other) => bail!("algorithm_type {:?} is not supported by {NAME} (deis, or dpmsolver/dpmsolver++ which it runs as deis)", other.name()),
        }
        choose_among(NAME, "solver_type", config.solver_type.as_ref(), SolverTypeName::Logrho, SolverTypeName::ALL)?;
        let solver_order = config.solver_order.unwrap_or(2);
        if solver_order < 1 {
            bail!("solver_order {solver_order} is not supported by {NAME} (1 or more; above 3 it steps as 3)");
        }
        let schedule = TrainSchedule::new(&c, false)?;
        Ok(DeisScheduler {
            train: c.num_train_timesteps,
            spacing: c.timestep_spacing,
            steps_offset: c.steps_offset,
            prediction_type: c.prediction_type,
            solver_order: solver_order.min(3) as usize,
            lower_order_final: config.lower_order_final.unwrap_or(true),
            karras,
            karras_range: (config.sigma_min, config.sigma_max),
            train_sigmas: schedule.sigmas(),
            sigmas: vec![],
            timesteps: vec![],
            step_index: None,
            model_outputs: Vec::new(),
            lower_order_nums: 0,
        })
    }

    /// The model output as a noise prediction (DEIS works on epsilon).
    fn convert_model_output(&self, model_output: &Tensor, sample: &Tensor, i: usize) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i]);
        let x0 = match self.prediction_type {
            PredictionType::Epsilon => (sample - model_output * sigma_t as f64) / alpha_t as f64,
            PredictionType::Sample => model_output.shallow_clone(),
            PredictionType::VPrediction => sample * alpha_t as f64 - model_output * sigma_t as f64,
        };
        (sample - x0 * alpha_t as f64) / sigma_t as f64
    }

    fn first_order(&self, m0: &Tensor, sample: &Tensor, i: usize) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s, sigma_s) = alpha_sigma(self.sigmas[i]);
        let h = (alpha_t.t_log() - sigma_t.t_log()) - (alpha_s.t_log() - sigma_s.t_log());
        sample * (alpha_t / alpha_s) as f64 - m0 * (sigma_t * (h.t_exp() - 1.0)) as f64
    }

    fn second_order(&self, m: &[Tensor], sample: &Tensor, i: usize) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let (m0, m1) = (&m[m.len() - 1], &m[m.len() - 2]);
        let (rho_t, rho_s0, rho_s1) = (sigma_t / alpha_t, sigma_s0 / alpha_s0, sigma_s1 / alpha_s1);
        let coef1 = ind2(rho_t, rho_s0, rho_s1) - ind2(rho_s0, rho_s0, rho_s1);
        let coef2 = ind2(rho_t, rho_s1, rho_s0) - ind2(rho_s0, rho_s1, rho_s0);
        (sample / alpha_s0 as f64 + m0 * coef1 as f64 + m1 * coef2 as f64) * alpha_t as f64
    }

    fn third_order(&self, m: &[Tensor], sample: &Tensor, i: usize) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let (alpha_s2, sigma_s2) = alpha_sigma(self.sigmas[i - 2]);
        let k = m.len();
        let (m0, m1, m2) = (&m[k - 1], &m[k - 2], &m[k - 3]);
        let (rho_t, rho_s0, rho_s1, rho_s2) = (sigma_t / alpha_t, sigma_s0 / alpha_s0, sigma_s1 / alpha_s1, sigma_s2 / alpha_s2);
        let coef1 = ind3(rho_t, rho_s0, rho_s1, rho_s2) - ind3(rho_s0, rho_s0, rho_s1, rho_s2);
        let coef2 = ind3(rho_t, rho_s1, rho_s2, rho_s0) - ind3(rho_s0, rho_s1, rho_s2, rho_s0);
        let coef3 = ind3(rho_t, rho_s2, rho_s0, rho_s1) - ind3(rho_s0, rho_s2, rho_s0, rho_s1);
        (sample / alpha_s0 as f64 + m0 * coef1 as f64 + m1 * coef2 as f64 + m2 * coef3 as f64) * alpha_t as f64
    }
}

impl Scheduler for DeisScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Deis
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(NAME, n, self.train)?;
        let train = self.train;
        let mut timesteps: Vec<f64> = match self.spacing {
            TimestepSpacing::Linspace => {
                let mut t: Vec<f64> = np_linspace(0.0, (train - 1) as f64, n + 1).into_iter().map(np_round).collect();
                t.reverse();
                t.pop();
                t
            }
            TimestepSpacing::Leading => {
                let ratio = train / (n as i64 + 1);
                (1..=n as i64).rev().map(|i| (i * ratio + self.steps_offset) as f64).collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = train as f64 / n as f64;
                np_arange(train as f64, 0.0, -ratio).into_iter().map(|v| np_round(v) - 1.0).collect()
            }
        };
        let train_sigmas: Vec<f64> = self.train_sigmas.iter().map(|&s| s as f64).collect();
        let mut sigmas: Vec<f32> = if self.karras {
            let hi = self.karras_range.1.unwrap_or(train_sigmas[train_sigmas.len() - 1]);
            let lo = self.karras_range.0.unwrap_or(train_sigmas[0]);
            let sigmas = karras_sigmas(lo, hi, n);
            let log_sigmas = log_f32(&self.train_sigmas);
            timesteps = sigmas.iter().map(|&s| np_round(sigma_to_t(s, &log_sigmas))).collect();
            sigmas.into_iter().map(|s| s as f32).collect()
        } else {
            timesteps.iter().map(|&t| np_interp(t, &train_sigmas) as f32).collect()
        };
        sigmas.push(if self.karras { sigmas[sigmas.len() - 1] } else { self.train_sigmas[0] });
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
        let lower_order_final = i == n - 1 && self.lower_order_final && n < 15;
        let lower_order_second = i + 2 == n && self.lower_order_final && n < 15;
        let converted = self.convert_model_output(model_output, sample, i);
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(converted.shallow_clone()));
        let history = |k: usize| -> Result<Vec<Tensor>> {
            let from = self.model_outputs.len().checked_sub(k).ok_or_else(|| anyhow!("{NAME}: missing history"))?;
            self.model_outputs[from..].iter().map(|m| m.as_ref().map(Tensor::shallow_clone).ok_or_else(|| anyhow!("{NAME}: missing history"))).collect()
        };
        let prev = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(&converted, sample, i)
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(&history(2)?, sample, i)
        } else {
            self.third_order(&history(3)?, sample, i)
        };
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(i + 1);
        Ok(prev)
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}
