//! DPMSolverSinglestepScheduler: DPM-Solver++ in its single-step form (`dpm++2s`: order 2 by
//! default, midpoint). Steps come in groups of `solver_order` (order list 1, 2, 1, 2, ...): the
//! first step of a group keeps its sample, and each later one jumps from that kept sample with
//! all the group's model outputs, so a group of k steps is one k-th order step with k UNet calls.
//! The last step is first order (diffusers forces `lower_order_final` with the default zero
//! final sigma). Timesteps are always linspace-spaced (the class has no `timestep_spacing`).
//!
//! Only DPM-Solver++ (the default algorithm): the deprecated `dpmsolver` and the SDE variant are
//! refused. The coefficients are 0-d f32 tensor arithmetic in diffusers; here they are f32
//! scalars with the same operations in the same order, as in [`super::dpm_solver_multistep`].
use super::config::{choose, AlgorithmType, FinalSigmasType, PredictionType, SchedulerConfig, SolverTypeName, VarianceType, DPM_SINGLESTEP};
use super::schedule::{karras_sigmas, log_f32, np_interp, np_linspace, np_round, sigma_to_t, TorchF32, TrainSchedule};
use super::{check_steps, multistep_index, Scheduler, SchedulerKind};
use crate::models::config::Named;
use anyhow::{anyhow, bail, Result};
use tch::Tensor;

const NAME: &str = "DPMSolverSinglestepScheduler";

#[derive(Clone, Copy, PartialEq)]
enum SolverType {
    Midpoint,
    Heun,
}

pub struct DpmSolverSinglestepScheduler {
    kind: SchedulerKind,
    train: i64,
    prediction_type: PredictionType,
    solver_order: usize,
    solver_type: SolverType,
    /// diffusers turns it on for good (in the config) when the run needs it.
    lower_order_final: bool,
    karras: bool,
    karras_range: (Option<f64>, Option<f64>),
    final_sigma_min: bool,
    /// Where `lambda_min_clipped` cuts the schedule: timesteps come from 0..last_timestep.
    last_timestep: i64,
    train_sigmas: Vec<f32>,
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    order_list: Vec<usize>,
    step_index: Option<usize>,
    /// The last `solver_order` converted model outputs (x0 predictions), oldest first.
    model_outputs: Vec<Option<Tensor>>,
    /// The sample at the first step of the current group.
    sample: Option<Tensor>,
}

/// alpha_t and sigma_t of a sigma: 1 / sqrt(sigma^2 + 1) and sigma * alpha_t.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).t_sqrt();
    (alpha, sigma * alpha)
}

fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.t_log() - sigma.t_log()
}

impl DpmSolverSinglestepScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let c = config.common(&DPM_SINGLESTEP)?;
        config.reject_thresholding(NAME)?;
        config.reject_other_sigmas(NAME, &[("use_flow_sigmas", config.use_flow_sigmas)])?;
        let karras = config.use_karras_sigmas.unwrap_or(false);
        if karras {
            config.check_karras_range(NAME)?;
        }
        if let Some(v @ Named::Known(VarianceType::Learned | VarianceType::LearnedRange)) = &config.variance_type {
            if c.prediction_type == PredictionType::Epsilon {
                bail!("variance_type {:?} is not supported by {NAME} (a learned variance is for models that predict it in extra channels)", v.name());
            }
        }
        choose(NAME, "algorithm_type", config.algorithm_type.as_ref(), AlgorithmType::DpmSolverPlusPlus, &[(AlgorithmType::DpmSolverPlusPlus, ())])
            .map_err(|e| anyhow!("{e}; the deprecated dpmsolver and the SDE variant are not implemented for the single-step solver"))?;
        // diffusers registers DEIS's and UniPC's solver names as midpoint.
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
        let solver_order = config.solver_order.unwrap_or(2);
        if !(1..=3).contains(&solver_order) {
            bail!("solver_order {solver_order} is not supported by {NAME} (1, 2 or 3)");
        }
        let final_sigma_min = choose(
            NAME,
            "final_sigmas_type",
            config.final_sigmas_type.as_ref(),
            FinalSigmasType::Zero,
            &[(FinalSigmasType::Zero, false), (FinalSigmasType::SigmaMin, true)],
        )?;
        let schedule = TrainSchedule::new(&c, false)?;
        let last_timestep = schedule.last_unclipped_timestep(config.lambda_min_clipped, c.num_train_timesteps)?;
        Ok(DpmSolverSinglestepScheduler {
            kind: SchedulerKind::DpmSolverSinglestep,
            train: c.num_train_timesteps,
            prediction_type: c.prediction_type,
            solver_order: solver_order as usize,
            solver_type,
            lower_order_final: config.lower_order_final.unwrap_or(false),
            karras,
            karras_range: (config.sigma_min, config.sigma_max),
            final_sigma_min,
            last_timestep,
            train_sigmas: schedule.sigmas(),
            sigmas: vec![],
            timesteps: vec![],
            order_list: vec![],
            step_index: None,
            model_outputs: vec![],
            sample: None,
        })
    }

    /// Reports itself as `kind` (the `-karras` name it was built for).
    pub(crate) fn with_kind(self, kind: SchedulerKind) -> Self {
        Self { kind, ..self }
    }

    /// diffusers' `get_order_list`: the order of each step.
    fn order_list(&self, steps: usize) -> Vec<usize> {
        let order = self.solver_order;
        let mut orders: Vec<usize> = if self.lower_order_final {
            match order {
                3 => match steps % 3 {
                    0 => [1, 2, 3].repeat((steps / 3).saturating_sub(1)).into_iter().chain([1, 2, 1]).collect(),
                    1 => [1, 2, 3].repeat(steps / 3).into_iter().chain([1]).collect(),
                    _ => [1, 2, 3].repeat(steps / 3).into_iter().chain([1, 2]).collect(),
                },
                2 => match steps % 2 {
                    0 => [1, 2].repeat((steps / 2).saturating_sub(1)).into_iter().chain([1, 1]).collect(),
                    _ => [1, 2].repeat(steps / 2).into_iter().chain([1]).collect(),
                },
                _ => vec![1; steps],
            }
        } else {
            match order {
                3 => [1, 2, 3].repeat(steps / 3),
                2 => [1, 2].repeat(steps / 2),
                _ => vec![1; steps],
            }
        };
        if !self.final_sigma_min {
            if let Some(last) = orders.last_mut() {
                *last = 1;
            }
        }
        orders
    }

    fn convert_model_output(&self, model_output: &Tensor, sample: &Tensor, i: usize) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i]);
        match self.prediction_type {
            PredictionType::Epsilon => (sample - model_output * sigma_t as f64) / alpha_t as f64,
            PredictionType::Sample => model_output.shallow_clone(),
            PredictionType::VPrediction => sample * alpha_t as f64 - model_output * sigma_t as f64,
        }
    }

    fn first_order(&self, m0: &Tensor, sample: &Tensor, i: usize) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s, sigma_s) = alpha_sigma(self.sigmas[i]);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
        sample * (sigma_t / sigma_s) as f64 - m0 * (alpha_t * ((-h).t_exp() - 1.0)) as f64
    }

    fn second_order(&self, m: &[Tensor], sample: &Tensor, i: usize) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let (lambda_t, lambda_s0, lambda_s1) = (lambda(alpha_t, sigma_t), lambda(alpha_s0, sigma_s0), lambda(alpha_s1, sigma_s1));
        let (m0, m1) = (&m[m.len() - 1], &m[m.len() - 2]);
        let (h, h_0) = (lambda_t - lambda_s1, lambda_s0 - lambda_s1);
        let r0 = h_0 / h;
        let (d0, d1) = (m1, (m0 - m1) * (1.0 / r0) as f64);
        let e = (-h).t_exp();
        match self.solver_type {
            SolverType::Midpoint => sample * (sigma_t / sigma_s1) as f64 - d0 * (alpha_t * (e - 1.0)) as f64 - d1 * (0.5 * (alpha_t * (e - 1.0))) as f64,
            SolverType::Heun => sample * (sigma_t / sigma_s1) as f64 - d0 * (alpha_t * (e - 1.0)) as f64 + d1 * (alpha_t * ((e - 1.0) / h + 1.0)) as f64,
        }
    }

    fn third_order(&self, m: &[Tensor], sample: &Tensor, i: usize) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let (alpha_s2, sigma_s2) = alpha_sigma(self.sigmas[i - 2]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let (lambda_s0, lambda_s1, lambda_s2) = (lambda(alpha_s0, sigma_s0), lambda(alpha_s1, sigma_s1), lambda(alpha_s2, sigma_s2));
        let k = m.len();
        let (m0, m1, m2) = (&m[k - 1], &m[k - 2], &m[k - 3]);
        let (h, h_0, h_1) = (lambda_t - lambda_s2, lambda_s0 - lambda_s2, lambda_s1 - lambda_s2);
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d0 = m2;
        let (d1_0, d1_1) = ((m1 - m2) * (1.0 / r1) as f64, (m0 - m2) * (1.0 / r0) as f64);
        let e = (-h).t_exp();
        match self.solver_type {
            SolverType::Midpoint => sample * (sigma_t / sigma_s2) as f64 - d0 * (alpha_t * (e - 1.0)) as f64 + d1_1 * (alpha_t * ((e - 1.0) / h + 1.0)) as f64,
            SolverType::Heun => {
                let d1 = (&d1_0 * r0 as f64 - &d1_1 * r1 as f64) / (r0 - r1) as f64;
                let d2 = (d1_1 - d1_0) * 2.0 / (r0 - r1) as f64;
                sample * (sigma_t / sigma_s2) as f64 - d0 * (alpha_t * (e - 1.0)) as f64 + d1 * (alpha_t * ((e - 1.0) / h + 1.0)) as f64
                    - d2 * (alpha_t * ((e - 1.0 + h) / (h * h) - 0.5)) as f64
            }
        }
    }
}

impl Scheduler for DpmSolverSinglestepScheduler {
    fn kind(&self) -> SchedulerKind {
        self.kind
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(NAME, n, self.train)?;
        let mut timesteps: Vec<f64> = np_linspace(0.0, (self.last_timestep - 1) as f64, n + 1).into_iter().map(np_round).collect();
        timesteps.reverse();
        timesteps.pop();
        let train_sigmas: Vec<f64> = self.train_sigmas.iter().map(|&s| s as f64).collect();
        let sigmas: Vec<f64> = if self.karras {
            let hi = self.karras_range.1.unwrap_or(train_sigmas[train_sigmas.len() - 1]);
            let lo = self.karras_range.0.unwrap_or(train_sigmas[0]);
            let sigmas = karras_sigmas(lo, hi, n);
            let log_sigmas = log_f32(&self.train_sigmas);
            timesteps = sigmas.iter().map(|&s| np_round(sigma_to_t(s, &log_sigmas))).collect();
            sigmas
        } else {
            timesteps.iter().map(|&t| np_interp(t, &train_sigmas)).collect()
        };
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(if self.final_sigma_min { self.train_sigmas[0] } else { 0.0 });
        self.timesteps = timesteps.into_iter().map(|t| (t as i64) as f64).collect();
        self.sigmas = sigmas;
        self.model_outputs = (0..self.solver_order).map(|_| None).collect();
        self.sample = None;
        if n % self.solver_order != 0 || !self.final_sigma_min {
            self.lower_order_final = true;
        }
        self.order_list = self.order_list(n);
        self.step_index = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor> {
        let i = multistep_index(NAME, model_output, sample, &mut self.step_index, &self.timesteps, self.sigmas.len(), timestep)?;
        if i >= self.order_list.len() {
            bail!("{NAME}: stepped past the last timestep");
        }
        let converted = self.convert_model_output(model_output, sample, i);
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(converted));
        let k = self.model_outputs.len();
        let mut order = self.order_list[i];
        while order > 1 && self.model_outputs[k - order].is_none() {
            order -= 1;
        }
        if order == 1 {
            self.sample = Some(sample.shallow_clone());
        }
        let kept = self.sample.as_ref().ok_or_else(|| anyhow!("{NAME}: no sample kept for this step's group"))?.shallow_clone();
        let outputs: Vec<Tensor> = self.model_outputs[k - order..]
            .iter()
            .map(|m| m.as_ref().map(Tensor::shallow_clone).ok_or_else(|| anyhow!("{NAME}: missing history")))
            .collect::<Result<_>>()?;
        let prev = match order {
            1 => self.first_order(&outputs[0], &kept, i),
            2 => self.second_order(&outputs, &kept, i),
            _ => self.third_order(&outputs, &kept, i),
        };
        self.step_index = Some(i + 1);
        Ok(prev)
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}
