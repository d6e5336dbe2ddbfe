//! KDPM2AncestralDiscreteScheduler: k-diffusion's "DPM2 a", the DPM-Solver-2 midpoint step of
//! [`super::kdpm2`] taken towards sigma_down (below the next sigma), then fresh noise up to the
//! next sigma, as Euler ancestral does. The midpoint is the geometric mean of sigma and
//! sigma_down. The noise is drawn in the second half of each step with [`super::randn`]
//! (libtorch's global CPU generator, in the model output's dtype), as diffusers draws it with
//! the pipeline's CPU generator: one draw per whole step, none in the first halves.
use super::config::{PredictionType, SchedulerConfig, KDPM2_ANCESTRAL};
use super::kdpm2::{doubled, to_vec, Kdpm2Base};
use super::schedule::{sigma_init_noise, TorchF32};
use super::{cached_step_index, check_step_inputs, not_ready, randn, Scheduler, SchedulerKind};
use anyhow::{anyhow, Result};
use tch::Tensor;

const NAME: &str = "KDPM2AncestralDiscreteScheduler";

pub struct Kdpm2AncestralScheduler {
    kind: SchedulerKind,
    base: Kdpm2Base,
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    sigmas_up: Vec<f32>,
    sigmas_down: Vec<f32>,
    timesteps: Vec<f64>,
    step_index: Option<usize>,
    /// The sample of the first half of a step, until its second half.
    first: Option<Tensor>,
}

impl Kdpm2AncestralScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        Ok(Kdpm2AncestralScheduler {
            kind: SchedulerKind::Kdpm2Ancestral,
            base: Kdpm2Base::new(config, &KDPM2_ANCESTRAL)?,
            sigmas: vec![],
            sigmas_interpol: vec![],
            sigmas_up: vec![],
            sigmas_down: vec![],
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

impl Scheduler for Kdpm2AncestralScheduler {
    fn kind(&self) -> SchedulerKind {
        self.kind
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let (sigmas, timesteps) = self.base.base_schedule(NAME, n)?;
        // f32 tensor operations, as diffusers computes them (the last up/down values are NaN
        // there, then the down one and the last two midpoints are set to 0).
        let next = sigmas.roll([-1], [0]);
        let _ = next.get(n as i64).fill_(0.0);
        let s2 = sigmas.pow_tensor_scalar(2);
        let n2 = next.pow_tensor_scalar(2);
        let up = (&n2 * (&s2 - &n2) / &s2).pow_tensor_scalar(0.5);
        let down = (&n2 - up.pow_tensor_scalar(2)).pow_tensor_scalar(0.5);
        let _ = down.get(n as i64).fill_(0.0);
        let interpol = sigmas.log().lerp(&down.log(), 0.5).exp();
        let _ = interpol.narrow(0, n as i64 - 1, 2).fill_(0.0);
        let interpol = to_vec(&interpol);
        let t_interpol = self.base.interpolated_timesteps(&interpol);
        let mut all = vec![timesteps[0]];
        for (ti, t) in t_interpol[..interpol.len() - 2].iter().zip(&timesteps[1..]) {
            all.extend([*ti, *t]);
        }
        self.sigmas = doubled(&to_vec(&sigmas));
        self.sigmas_interpol = doubled(&interpol);
        self.sigmas_up = doubled(&to_vec(&up));
        self.sigmas_down = doubled(&to_vec(&down));
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
        // The second half's midpoint is stored one place earlier here than in KDPM2.
        let sigma = if self.first.is_none() { self.sigmas.get(i) } else { self.sigmas_interpol.get(i.wrapping_sub(1)) };
        let sigma = *sigma.ok_or_else(|| anyhow!("{NAME}: stepped past the last timestep"))?;
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
                let (sigma, sigma_interpol) = (self.sigmas[i], self.sigmas_interpol[i]);
                let pred_original = self.base.pred_original(model_output, sample, sigma);
                let derivative = (sample - pred_original) / sigma as f64;
                self.first = Some(sample.shallow_clone());
                sample + derivative * (sigma_interpol - sigma) as f64
            }
            Some(first_sample) => {
                let (sigma, sigma_interpol) = (self.sigmas[i - 1], self.sigmas_interpol[i - 1]);
                let (sigma_up, sigma_down) = (self.sigmas_up[i - 1], self.sigmas_down[i - 1]);
                let pred_original = self.base.pred_original(model_output, sample, sigma_interpol);
                let derivative = (sample - pred_original) / sigma_interpol as f64;
                let prev = first_sample + derivative * (sigma_down - sigma) as f64;
                let noise = randn(&model_output.size(), model_output.kind(), model_output.device());
                prev + noise * sigma_up as f64
            }
        };
        self.step_index = Some(i + 1);
        Ok(prev)
    }

    fn prediction_type(&self) -> PredictionType {
        self.base.prediction_type
    }
}
