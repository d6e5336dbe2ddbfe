//! PNDMScheduler: pseudo numerical methods (PLMS), Stable Diffusion 1.x's default sampler.
//! With `skip_prk_steps` (SD 1.5's config) the linear multistep starts from lower orders and
//! evaluates the second timestep twice; without it, 12 Runge-Kutta evaluations come first.
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing, PNDM};
use super::schedule::{integer_timestep, np_arange, np_linspace, np_round, train_index, TorchF32, TrainSchedule};
use super::{check_step_inputs, check_steps, not_ready, Scheduler, SchedulerKind};
use anyhow::{bail, Result};
use tch::Tensor;

pub struct PndmScheduler {
    train: i64,
    spacing: TimestepSpacing,
    steps_offset: i64,
    prediction_type: PredictionType,
    skip_prk_steps: bool,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    num_inference_steps: Option<usize>,
    prk_timesteps: Vec<i64>,
    timesteps: Vec<f64>,
    // Multistep state, as diffusers keeps it.
    counter: usize,
    ets: Vec<Tensor>,
    cur_model_output: Option<Tensor>,
    cur_sample: Option<Tensor>,
}

impl PndmScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let c = config.common(&PNDM)?;
        let schedule = TrainSchedule::new(&c, false)?;
        let alphas_cumprod = schedule.alphas_cumprod_vec();
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(false) { 1.0 } else { alphas_cumprod[0] };
        Ok(PndmScheduler {
            train: c.num_train_timesteps,
            spacing: c.timestep_spacing,
            steps_offset: c.steps_offset,
            prediction_type: c.prediction_type,
            skip_prk_steps: config.skip_prk_steps.unwrap_or(false),
            alphas_cumprod,
            final_alpha_cumprod,
            num_inference_steps: None,
            prk_timesteps: vec![],
            timesteps: vec![],
            counter: 0,
            ets: vec![],
            cur_model_output: None,
            cur_sample: None,
        })
    }

    /// Formula (9) of the PNDM paper: x_{t-δ} from x_t and the (combined) noise estimate, with
    /// diffusers' f32 scalar arithmetic.
    fn prev_sample(&self, sample: &Tensor, timestep: i64, prev_timestep: i64, model_output: &Tensor) -> Result<Tensor> {
        let a_t = self.alphas_cumprod[train_index(timestep, self.train)?];
        let a_prev = if prev_timestep >= 0 { self.alphas_cumprod[train_index(prev_timestep, self.train)?] } else { self.final_alpha_cumprod };
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let model_output = match self.prediction_type {
            PredictionType::VPrediction => model_output * a_t.t_sqrt() as f64 + sample * b_t.t_sqrt() as f64,
            _ => model_output.shallow_clone(),
        };
        let sample_coeff = (a_prev / a_t).t_sqrt();
        let denom = a_t * b_prev.t_sqrt() + (a_t * b_t * a_prev).t_sqrt();
        Ok(sample * sample_coeff as f64 - model_output * (a_prev - a_t) as f64 / denom as f64)
    }

    fn step_prk(&mut self, model_output: &Tensor, timestep: i64, sample: &Tensor, n: usize) -> Result<Tensor> {
        let diff_to_prev = if self.counter % 2 == 1 { 0 } else { self.train / n as i64 / 2 };
        let prev_timestep = timestep - diff_to_prev;
        let timestep = self.prk_timesteps[self.counter / 4 * 4];
        let add = |acc: &Option<Tensor>, term: Tensor| match acc {
            Some(a) => a + term,
            None => term,
        };
        let mut model_output = model_output.shallow_clone();
        match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(add(&self.cur_model_output, &model_output * (1.0 / 6.0)));
                self.ets.push(model_output.shallow_clone());
                self.cur_sample = Some(sample.shallow_clone());
            }
            1 | 2 => self.cur_model_output = Some(add(&self.cur_model_output, &model_output * (1.0 / 3.0))),
            _ => {
                model_output = add(&self.cur_model_output, &model_output * (1.0 / 6.0));
                self.cur_model_output = None;
            }
        }
        let cur_sample = self.cur_sample.as_ref().unwrap_or(sample).shallow_clone();
        let prev = self.prev_sample(&cur_sample, timestep, prev_timestep, &model_output)?;
        self.counter += 1;
        Ok(prev)
    }

    fn step_plms(&mut self, model_output: &Tensor, timestep: i64, sample: &Tensor, n: usize) -> Result<Tensor> {
        if !self.skip_prk_steps && self.ets.len() < 3 {
            bail!("PNDMScheduler: linear multistep steps need the 12 Runge-Kutta steps first");
        }
        let ratio = self.train / n as i64;
        let (mut timestep, mut prev_timestep) = (timestep, timestep - ratio);
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.shallow_clone());
        } else {
            prev_timestep = timestep;
            timestep += ratio;
        }
        let e = &self.ets;
        let k = e.len();
        let mut sample = sample.shallow_clone();
        let model_output = if k == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.shallow_clone());
            model_output.shallow_clone()
        } else if k == 1 && self.counter == 1 {
            let Some(cur) = self.cur_sample.take() else { bail!("PNDMScheduler: steps taken out of order") };
            sample = cur;
            (model_output + &e[0]) / 2.0
        } else if k == 2 {
            (&e[1] * 3.0 - &e[0]) / 2.0
        } else if k == 3 {
            (&e[2] * 23.0 - &e[1] * 16.0 + &e[0] * 5.0) / 12.0
        } else if k >= 4 {
            (&e[k - 1] * 55.0 - &e[k - 2] * 59.0 + &e[k - 3] * 37.0 - &e[k - 4] * 9.0) * (1.0 / 24.0)
        } else {
            bail!("PNDMScheduler: steps taken out of order");
        };
        let prev = self.prev_sample(&sample, timestep, prev_timestep, &model_output)?;
        self.counter += 1;
        Ok(prev)
    }
}

impl Scheduler for PndmScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Pndm
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps("PNDMScheduler", n, self.train)?;
        let train = self.train;
        // Ascending, as diffusers' `_timesteps`.
        let ts: Vec<i64> = match self.spacing {
            TimestepSpacing::Linspace => np_linspace(0.0, (train - 1) as f64, n).into_iter().map(|v| np_round(v) as i64).collect(),
            TimestepSpacing::Leading => (0..n as i64).map(|i| i * (train / n as i64) + self.steps_offset).collect(),
            TimestepSpacing::Trailing => np_arange(train as f64, 0.0, -(train as f64 / n as f64)).into_iter().rev().map(|v| np_round(v) as i64 - 1).collect(),
        };
        let len = ts.len();
        let (prk, plms): (Vec<i64>, Vec<i64>) = if self.skip_prk_steps {
            // All but the last, the second-to-last again, the last; reversed.
            let mut plms: Vec<i64> = ts[..len - 1].to_vec();
            plms.extend_from_slice(&ts[len.saturating_sub(2)..len - 1]);
            plms.push(ts[len - 1]);
            plms.reverse();
            (vec![], plms)
        } else {
            if len < 4 {
                bail!("PNDMScheduler: with skip_prk_steps false (Runge-Kutta warm-up) it needs at least 4 inference steps, got {n}");
            }
            // The last four timesteps, each followed by its midpoint, each used twice (RK4).
            let half = train / n as i64 / 2;
            let pairs: Vec<i64> = ts[len - 4..].iter().flat_map(|&t| [t, t + half]).collect();
            let doubled: Vec<i64> = pairs[..pairs.len() - 1].iter().flat_map(|&t| [t, t]).collect();
            let mut prk = doubled[1..doubled.len() - 1].to_vec();
            prk.reverse();
            let mut plms = ts[..len - 3].to_vec();
            plms.reverse();
            (prk, plms)
        };
        self.timesteps = prk.iter().chain(&plms).map(|&t| t as f64).collect();
        self.prk_timesteps = prk;
        self.num_inference_steps = Some(n);
        self.ets.clear();
        self.counter = 0;
        self.cur_model_output = None;
        self.cur_sample = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor> {
        check_step_inputs("PNDMScheduler", model_output, sample)?;
        let n = self.num_inference_steps.ok_or_else(|| not_ready("PNDMScheduler"))?;
        let t = integer_timestep(timestep)?;
        if self.counter < self.prk_timesteps.len() && !self.skip_prk_steps {
            self.step_prk(model_output, t, sample, n)
        } else {
            self.step_plms(model_output, t, sample, n)
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
        super::alphas_add_noise(&self.alphas_cumprod, self.train, original, noise, timestep)
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}
