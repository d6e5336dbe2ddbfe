//! LMSDiscreteScheduler: the linear multistep method in sigma space (k-diffusion's `lms`, order 4),
//! with interpolated or Karras sigmas.
//!
//! Each step's coefficients are the integrals, from this sigma to the next, of the Lagrange basis
//! polynomials through the last (up to 4) sigmas. diffusers integrates them numerically with
//! `scipy.integrate.quad` (epsrel 1e-4); the integrand is a polynomial of degree at most 3, so
//! quad's 21-point Gauss-Kronrod rule is already exact for it and the only error there is the
//! rounding of its f32 integrand. Here the integral is computed exactly rather than
//! approximated: 4-point Gauss-Legendre, exact for polynomials up to degree 7, in f64. The two
//! agree to the f32 rounding of diffusers' integrand (about 1e-7 relative), far below what shows
//! in the latents; an adaptive rule would only add a tolerance to argue about.
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing, LMS};
use super::schedule::{karras_schedule, np_interp, sigma_init_noise, spaced_timesteps, TorchF32, TrainSchedule};
use super::{cached_step_index, check_step_inputs, check_steps, not_ready, sigma_scaled_input, Scheduler, SchedulerKind};
use anyhow::{anyhow, Result};
use tch::Tensor;

const NAME: &str = "LMSDiscreteScheduler";
/// diffusers' `step(order=4)` default, which its pipelines do not change.
const ORDER: usize = 4;

pub struct LmsScheduler {
    kind: SchedulerKind,
    train: i64,
    spacing: TimestepSpacing,
    steps_offset: i64,
    prediction_type: PredictionType,
    karras: bool,
    train_sigmas: Vec<f32>,
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    step_index: Option<usize>,
    /// The last `ORDER` derivatives, oldest first.
    derivatives: Vec<Tensor>,
}

/// The integral over [a, b] of `f`, a polynomial of degree at most 7: 4-point Gauss-Legendre.
fn integrate_polynomial(f: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
    // Nodes ±sqrt(3/7 ∓ 2/7 sqrt(6/5)), weights (18 ± sqrt(30)) / 36.
    let s = (6.0f64 / 5.0).sqrt();
    let (x1, x2) = ((3.0 / 7.0 - 2.0 / 7.0 * s).sqrt(), (3.0 / 7.0 + 2.0 / 7.0 * s).sqrt());
    let (w1, w2) = ((18.0 + 30f64.sqrt()) / 36.0, (18.0 - 30f64.sqrt()) / 36.0);
    let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
    half * (w1 * (f(mid - half * x1) + f(mid + half * x1)) + w2 * (f(mid - half * x2) + f(mid + half * x2)))
}

impl LmsScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let c = config.common(&LMS)?;
        config.reject_other_sigmas(NAME, &[])?;
        let schedule = TrainSchedule::new(&c, false)?;
        Ok(LmsScheduler {
            kind: SchedulerKind::Lms,
            train: c.num_train_timesteps,
            spacing: c.timestep_spacing,
            steps_offset: c.steps_offset,
            prediction_type: c.prediction_type,
            karras: config.use_karras_sigmas.unwrap_or(false),
            train_sigmas: schedule.sigmas(),
            sigmas: vec![],
            timesteps: vec![],
            step_index: None,
            derivatives: vec![],
        })
    }

    /// Reports itself as `kind` (the `-karras` name it was built for).
    pub(crate) fn with_kind(self, kind: SchedulerKind) -> Self {
        Self { kind, ..self }
    }

    /// diffusers' `get_lms_coefficient(order, t, current_order)`.
    fn coefficient(&self, order: usize, t: usize, current: usize) -> f64 {
        let s = |k: usize| self.sigmas[t - k] as f64;
        let basis = |tau: f64| (0..order).filter(|&k| k != current).map(|k| (tau - s(k)) / (s(current) - s(k))).product::<f64>();
        integrate_polynomial(basis, self.sigmas[t] as f64, self.sigmas[t + 1] as f64)
    }
}

impl Scheduler for LmsScheduler {
    fn kind(&self) -> SchedulerKind {
        self.kind
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(NAME, n, self.train)?;
        let mut timesteps: Vec<f64> = spaced_timesteps(self.spacing, self.train, n, self.steps_offset, false).into_iter().map(|t| t as f32 as f64).collect();
        let train_sigmas: Vec<f64> = self.train_sigmas.iter().map(|&s| s as f64).collect();
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| np_interp(t, &train_sigmas)).collect();
        if self.karras {
            // LMS's Karras range is always the interpolated schedule's ends (no sigma_min/max).
            (sigmas, timesteps) = karras_schedule(&sigmas, None, None, &self.train_sigmas, n);
        }
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(0.0);
        self.sigmas = sigmas;
        self.timesteps = timesteps;
        self.step_index = None;
        self.derivatives.clear();
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
        let sigma = self.sigmas[i];
        let pred_original = match self.prediction_type {
            PredictionType::Epsilon => sample - model_output * sigma as f64,
            PredictionType::VPrediction => {
                let s2 = sigma * sigma + 1.0;
                model_output * (-sigma / s2.t_sqrt()) as f64 + sample / s2 as f64
            }
            PredictionType::Sample => model_output.shallow_clone(),
        };
        self.derivatives.push((sample - pred_original) / sigma as f64);
        if self.derivatives.len() > ORDER {
            let _ = self.derivatives.remove(0);
        }
        let order = (i + 1).min(ORDER);
        // The newest derivative takes the first coefficient, as diffusers' zip with reversed().
        let mut sum: Option<Tensor> = None;
        for (current, derivative) in (0..order).zip(self.derivatives.iter().rev()) {
            let term = derivative * self.coefficient(order, i, current);
            sum = Some(match sum {
                None => term,
                Some(s) => s + term,
            });
        }
        let sum = sum.ok_or_else(|| anyhow!("{NAME}: no derivatives"))?;
        self.step_index = Some(i + 1);
        Ok(sample + sum)
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}
