//! UniPCMultistepScheduler (Zhao et al. 2023) with diffusers' defaults: predictor and corrector
//! in data (x0) prediction, B(h) = e^h - 1 (`bh2`; `bh1` too), `solver_order` 2, lower-order
//! final steps. The scalar coefficients are libtorch 0-d f32 tensors combined with the same
//! operations as diffusers (`expm1`, `linalg.solve`, `einsum`), so the steps round as its do.
//! With `use_karras_sigmas` (`unipc-karras`) the sigmas are Karras' between the training sigmas'
//! ends (or the config's `sigma_min`/`sigma_max`), at their rounded integer timesteps.
use super::config::{choose, FinalSigmasType, PredictionType, SchedulerConfig, SolverTypeName, TimestepSpacing, UNIPC};
use super::schedule::{karras_sigmas, log_f32, np_arange, np_linspace, np_round, sigma_to_t, TrainSchedule};
use super::{cached_step_index, check_step_inputs, check_steps, not_ready, Scheduler, SchedulerKind};
use anyhow::{anyhow, bail, Result};
use tch::{Device, Kind, Tensor};

const NAME: &str = "UniPCMultistepScheduler";

pub struct UniPcScheduler {
    /// The plain or the Karras kind (the sigmas come from the config either way).
    kind: SchedulerKind,
    karras: bool,
    karras_range: (Option<f64>, Option<f64>),
    train: i64,
    spacing: TimestepSpacing,
    steps_offset: i64,
    prediction_type: PredictionType,
    solver_order: usize,
    /// B(h) = h (`bh1`) instead of e^h - 1 (`bh2`).
    bh1: bool,
    lower_order_final: bool,
    final_sigma_min: bool,
    train_sigmas: Vec<f32>,
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    step_index: Option<usize>,
    /// The last `solver_order` converted model outputs, oldest first.
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    this_order: usize,
    last_sample: Option<Tensor>,
}

fn scalar(v: f32) -> Tensor {
    Tensor::from(v)
}

/// alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t, as 0-d f32 tensors.
fn alpha_sigma(sigma: f32) -> (Tensor, Tensor) {
    let s = scalar(sigma);
    let alpha = (s.pow_tensor_scalar(2) + 1.0).pow_tensor_scalar(0.5).reciprocal();
    let sigma_t = &s * &alpha;
    (alpha, sigma_t)
}

fn lambda(alpha: &Tensor, sigma: &Tensor) -> Tensor {
    alpha.log() - sigma.log()
}

impl UniPcScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let c = config.common(&UNIPC)?;
        config.reject_thresholding(NAME)?;
        config.reject_other_sigmas(NAME, &[("use_flow_sigmas", config.use_flow_sigmas)])?;
        let karras = config.use_karras_sigmas.unwrap_or(false);
        if karras {
            config.check_karras_range(NAME)?;
        }
        // diffusers registers midpoint, heun and logrho (DPM-Solver's names) as bh2.
        let bh1 = choose(
            NAME,
            "solver_type",
            config.solver_type.as_ref(),
            SolverTypeName::Bh2,
            &[
                (SolverTypeName::Bh2, false),
                (SolverTypeName::Bh1, true),
                (SolverTypeName::Midpoint, false),
                (SolverTypeName::Heun, false),
                (SolverTypeName::Logrho, false),
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
        let schedule = TrainSchedule::new(&c, true)?;
        Ok(UniPcScheduler {
            kind: SchedulerKind::UniPc,
            karras,
            karras_range: (config.sigma_min, config.sigma_max),
            train: c.num_train_timesteps,
            spacing: c.timestep_spacing,
            steps_offset: c.steps_offset,
            prediction_type: c.prediction_type,
            solver_order: solver_order as usize,
            bh1,
            lower_order_final: config.lower_order_final.unwrap_or(true),
            final_sigma_min,
            train_sigmas: schedule.sigmas(),
            sigmas: vec![],
            timesteps: vec![],
            step_index: None,
            model_outputs: vec![],
            lower_order_nums: 0,
            this_order: 0,
            last_sample: None,
        })
    }

    /// Reports itself as `kind` (the `-karras` name it was built for).
    pub(crate) fn with_kind(self, kind: SchedulerKind) -> Self {
        Self { kind, ..self }
    }

    /// The training sigma at each integer timestep (interpolation at an integer is that sigma).
    fn set_sigmas(&mut self, timesteps: Vec<f64>) -> Result<()> {
        let mut sigmas = Vec::with_capacity(timesteps.len() + 1);
        for &t in &timesteps {
            let i = t as i64;
            if !(0..self.train).contains(&i) {
                bail!("{NAME}: timestep {t} is outside the training range (steps_offset too large?)");
            }
            sigmas.push(self.train_sigmas[i as usize]);
        }
        sigmas.push(if self.final_sigma_min { self.train_sigmas[0] } else { 0.0 });
        self.sigmas = sigmas;
        self.timesteps = timesteps;
        Ok(())
    }

    /// UniPC's own spacing: n + 1 points, the last (0) dropped, for linspace and leading.
    fn spaced(&self, n: usize) -> Vec<f64> {
        let train = self.train;
        match self.spacing {
            TimestepSpacing::Linspace => {
                let mut t: Vec<f64> = np_linspace(0.0, (train - 1) as f64, n + 1).into_iter().map(np_round).collect();
                t.reverse();
                t.truncate(n);
                t
            }
            TimestepSpacing::Leading => {
                let ratio = train / (n as i64 + 1);
                (1..=n as i64).rev().map(|i| (i * ratio + self.steps_offset) as f64).collect()
            }
            TimestepSpacing::Trailing => np_arange(train as f64, 0.0, -(train as f64 / n as f64)).into_iter().map(|v| np_round(v) - 1.0).collect(),
        }
    }

    /// The converted model output: the predicted x0.
    fn convert(&self, model_output: &Tensor, sample: &Tensor, i: usize) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i]);
        match self.prediction_type {
            PredictionType::Epsilon => (sample - &sigma_t * model_output) / &alpha_t,
            PredictionType::Sample => model_output.shallow_clone(),
            PredictionType::VPrediction => &alpha_t * sample - &sigma_t * model_output,
        }
    }

    /// The shared part of the predictor and the corrector: h, e^-h - 1, B(h), the ratios r_k and
    /// differences D1_k of the older outputs, and b. `t`, `s0`: the sigma indices stepped to and
    /// from; `older(k)`: the sigma index of the k-th older output (k = 1..order).
    fn coefficients(&self, t: usize, s0: usize, older: impl Fn(usize) -> usize, order: usize) -> Coefficients {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[t]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[s0]);
        let lambda_s0 = lambda(&alpha_s0, &sigma_s0);
        let h = lambda(&alpha_t, &sigma_t) - &lambda_s0;
        let outputs: Vec<&Tensor> = self.model_outputs.iter().rev().take(order.max(1)).map(|o| o.as_ref().expect("filled by the warm-up")).collect();
        let m0 = outputs[0].shallow_clone();
        let (mut rks, mut d1s) = (vec![], vec![]);
        for (k, mk) in outputs.iter().enumerate().skip(1) {
            let (alpha_si, sigma_si) = alpha_sigma(self.sigmas[older(k)]);
            let rk = (lambda(&alpha_si, &sigma_si) - &lambda_s0) / &h;
            d1s.push((*mk - &m0) / &rk);
            rks.push(rk);
        }
        rks.push(Tensor::ones([], (Kind::Float, Device::Cpu)));
        let rks = Tensor::stack(&rks, 0);
        let hh = -&h;
        let h_phi_1 = hh.expm1();
        let mut h_phi_k = &h_phi_1 / &hh - 1.0;
        let b_h = if self.bh1 { hh.shallow_clone() } else { hh.expm1() };
        let (mut r, mut b) = (vec![], vec![]);
        let mut factorial = 1i64;
        for i in 1..=order as i64 {
            r.push(rks.pow_tensor_scalar(i - 1));
            b.push(&h_phi_k * factorial / &b_h);
            factorial *= i + 1;
            h_phi_k = &h_phi_k / &hh - 1.0 / factorial as f64;
        }
        Coefficients {
            alpha_t,
            ratio: &sigma_t / &sigma_s0,
            h_phi_1,
            b_h,
            m0,
            r: Tensor::stack(&r, 0),
            b: Tensor::stack(&b, 0),
            d1s: (!d1s.is_empty()).then(|| Tensor::stack(&d1s, 1)),
        }
    }

    fn predictor(&self, sample: &Tensor, i: usize, order: usize) -> Tensor {
        let c = self.coefficients(i + 1, i, |k| i - k, order);
        let x_t = &c.ratio * sample - &c.alpha_t * &c.h_phi_1 * &c.m0;
        let Some(d1s) = &c.d1s else { return x_t.to_kind(sample.kind()) };
        let rhos = if order == 2 {
            Tensor::ones([1], (sample.kind(), Device::Cpu)) * 0.5
        } else {
            Tensor::linalg_solve(&c.r.narrow(0, 0, order as i64 - 1).narrow(1, 0, order as i64 - 1), &c.b.narrow(0, 0, order as i64 - 1), true)
                .to_kind(sample.kind())
        };
        let res = Tensor::einsum("k,bkc...->bc...", &[rhos.to_device(sample.device()), d1s.shallow_clone()], None::<i64>);
        (x_t - &c.alpha_t * &c.b_h * res).to_kind(sample.kind())
    }

    fn corrector(&self, model_t: &Tensor, last_sample: &Tensor, i: usize, order: usize) -> Tensor {
        let c = self.coefficients(i, i - 1, |k| i - (k + 1), order);
        let x_t = &c.ratio * last_sample - &c.alpha_t * &c.h_phi_1 * &c.m0;
        let rhos = if order == 1 {
            Tensor::ones([1], (last_sample.kind(), Device::Cpu)) * 0.5
        } else {
            Tensor::linalg_solve(&c.r, &c.b, true).to_kind(last_sample.kind())
        };
        let last = rhos.get(rhos.size()[0] - 1);
        let d1_t = model_t - &c.m0;
        let inner = match &c.d1s {
            Some(d1s) => {
                Tensor::einsum("k,bkc...->bc...", &[rhos.narrow(0, 0, order as i64 - 1).to_device(last_sample.device()), d1s.shallow_clone()], None::<i64>)
                    + &last * &d1_t
            }
            None => &last * &d1_t,
        };
        (x_t - &c.alpha_t * &c.b_h * inner).to_kind(last_sample.kind())
    }
}

struct Coefficients {
    alpha_t: Tensor,
    /// sigma_t / sigma_s0 (the alpha-scaled sigmas).
    ratio: Tensor,
    h_phi_1: Tensor,
    b_h: Tensor,
    m0: Tensor,
    r: Tensor,
    b: Tensor,
    d1s: Option<Tensor>,
}

impl Scheduler for UniPcScheduler {
    fn kind(&self) -> SchedulerKind {
        self.kind
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(NAME, n, self.train)?;
        let timesteps = self.spaced(n);
        if self.karras {
            let hi = self.karras_range.1.unwrap_or(self.train_sigmas[self.train_sigmas.len() - 1] as f64);
            let lo = self.karras_range.0.unwrap_or(self.train_sigmas[0] as f64);
            let karras = karras_sigmas(lo, hi, n);
            let log_sigmas = log_f32(&self.train_sigmas);
            // Rounded, then int64.
            self.timesteps = karras.iter().map(|&s| np_round(sigma_to_t(s, &log_sigmas)) as i64 as f64).collect();
            let mut sigmas: Vec<f32> = karras.into_iter().map(|s| s as f32).collect();
            sigmas.push(if self.final_sigma_min { sigmas[sigmas.len() - 1] } else { 0.0 });
            self.sigmas = sigmas;
        } else {
            self.set_sigmas(timesteps)?;
        }
        self.step_index = None;
        self.model_outputs = (0..self.solver_order).map(|_| None).collect();
        self.lower_order_nums = 0;
        self.this_order = 0;
        self.last_sample = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
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
        let converted = self.convert(model_output, sample, i);
        let sample = match (&self.last_sample, i > 0) {
            (Some(last), true) => self.corrector(&converted, last, i, self.this_order),
            _ => sample.shallow_clone(),
        };
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(converted));
        let order = if self.lower_order_final { self.solver_order.min(self.timesteps.len() - i) } else { self.solver_order };
        self.this_order = order.min(self.lower_order_nums + 1);
        let prev = self.predictor(&sample, i, self.this_order);
        self.last_sample = Some(sample);
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(i + 1);
        Ok(prev)
    }

    fn set_begin_index(&mut self, index: usize) {
        self.step_index = Some(index);
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        let sigma = super::add_noise_sigma(&self.sigmas, self.step_index, &self.timesteps, timestep, NAME)?;
        super::alpha_sigma_add_noise(sigma, original, noise)
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}
