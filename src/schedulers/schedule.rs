//! The training noise schedule and the numpy arithmetic diffusers uses to pick timesteps.
//!
//! Betas and `alphas_cumprod` are computed with libtorch on the CPU in f32, operation for
//! operation as diffusers does (`torch.linspace`, `** 2`, `torch.cumprod`, ...), so they are the
//! same bits: `torch.linspace` and CPU `cumprod` (which accumulates in f64) have rounding that a
//! hand-written loop would not reproduce. Timestep spacing is numpy float64 arithmetic, redone
//! here with numpy's exact formulas (`arange`, `linspace`, `interp`, round-half-to-even).
use super::config::{BetaSchedule, Common, TimestepSpacing};
use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

/// Betas and their cumulative product of `1 - beta`, f32 on the CPU.
pub(crate) struct TrainSchedule {
    pub betas: Tensor,
    pub alphas_cumprod: Tensor,
}

impl TrainSchedule {
    /// DPM-Solver's `lambda_min_clipped` (default -inf: no cut): the training timesteps whose
    /// half log-SNR `lambda_t` (computed with diffusers' tensor ops) falls below it are never
    /// sampled; returns the number of timesteps left, `num_train_timesteps - clipped`.
    pub fn last_unclipped_timestep(&self, lambda_min_clipped: Option<f64>, num_train_timesteps: i64) -> Result<i64> {
        let ac = &self.alphas_cumprod;
        let lambda_t = ac.sqrt().log() - (ac.neg() + 1.0).sqrt().log();
        let clip = lambda_min_clipped.unwrap_or(f64::NEG_INFINITY);
        if clip.is_nan() {
            anyhow::bail!("lambda_min_clipped NaN is not a valid value");
        }
        let clipped = Tensor::searchsorted_scalar(&lambda_t.flip([0]), clip, false, false, "left", None::<Tensor>).int64_value(&[]);
        let last_timestep = num_train_timesteps - clipped;
        if last_timestep < 1 {
            anyhow::bail!("lambda_min_clipped {clip} leaves no timesteps");
        }
        Ok(last_timestep)
    }

    /// `zero_snr_floor`: Euler, Euler ancestral and DPM-Solver set the last `alphas_cumprod` to
    /// 2^-24 after rescaling to zero terminal SNR (so sigma stays finite); DDIM and DDPM do not.
    pub fn new(c: &Common, zero_snr_floor: bool) -> Result<Self> {
        let n = c.num_train_timesteps;
        let cpu = (Kind::Float, Device::Cpu);
        let mut betas = match (&c.trained_betas, c.beta_schedule) {
            (Some(b), _) => Tensor::from_slice(&b.iter().map(|&v| v as f32).collect::<Vec<f32>>()),
            (None, BetaSchedule::Linear) => Tensor::linspace(c.beta_start, c.beta_end, n, cpu),
            (None, BetaSchedule::ScaledLinear) => Tensor::linspace(c.beta_start.powf(0.5), c.beta_end.powf(0.5), n, cpu).pow_tensor_scalar(2),
            (None, BetaSchedule::SquaredcosCapV2) => Tensor::from_slice(&betas_for_alpha_bar(n, alpha_bar_cosine)),
            (None, BetaSchedule::Laplace) => Tensor::from_slice(&betas_for_alpha_bar(n, alpha_bar_laplace)),
            // torch.sigmoid(torch.linspace(-6, 6, n)) * (beta_end - beta_start) + beta_start.
            (None, BetaSchedule::Sigmoid) => Tensor::linspace(-6.0, 6.0, n, cpu).sigmoid() * (c.beta_end - c.beta_start) + c.beta_start,
        };
        if c.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas = betas.neg() + 1.0;
        let alphas_cumprod = alphas.cumprod(0, None::<Kind>);
        if c.rescale_betas_zero_snr && zero_snr_floor {
            let _ = alphas_cumprod.get(n - 1).fill_(2f64.powi(-24));
        }
        let bad = |t: &Tensor| t.isfinite().logical_not().any().int64_value(&[]) != 0;
        if bad(&betas) || bad(&alphas_cumprod) {
            bail!("the beta schedule has non-finite values (check beta_start, beta_end, trained_betas)");
        }
        Ok(TrainSchedule { betas, alphas_cumprod })
    }

    pub fn alphas_cumprod_vec(&self) -> Vec<f32> {
        Vec::<f32>::try_from(&self.alphas_cumprod).unwrap_or_default()
    }

    /// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5`, the Karras-style sigma of every
    /// training timestep (ascending), in f32 as diffusers computes it.
    pub fn sigmas(&self) -> Vec<f32> {
        let ac = &self.alphas_cumprod;
        Vec::<f32>::try_from(((ac.neg() + 1.0) / ac).pow_tensor_scalar(0.5)).unwrap_or_default()
    }
}

/// The cosine schedule ("squaredcos_cap_v2").
fn alpha_bar_cosine(t: f64) -> f64 {
    ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powf(2.0)
}

/// DDPM's "laplace" schedule: lambda = -0.5 * sign(0.5 - t) * ln(1 - 2|0.5 - t| + 1e-6),
/// alpha_bar = sqrt(snr / (1 + snr)) with snr = e^lambda.
fn alpha_bar_laplace(t: f64) -> f64 {
    let lmb = -0.5 * 1f64.copysign(0.5 - t) * (1.0 - 2.0 * (0.5 - t).abs() + 1e-6).ln();
    let snr = lmb.exp();
    (snr / (1.0 + snr)).sqrt()
}

/// `betas_for_alpha_bar`: betas that discretize `alpha_bar` over [0, 1], capped at 0.999, in f64
/// as Python computes them, then f32. (Some ports compute `i / n` with integer division, which
/// gives t = 0 for every step but the last.)
fn betas_for_alpha_bar(n: i64, alpha_bar: fn(f64) -> f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// "Common Diffusion Noise Schedules and Sample Steps are Flawed", algorithm 1, in tensor ops.
fn rescale_zero_terminal_snr(betas: &Tensor) -> Tensor {
    let alphas = betas.neg() + 1.0;
    let alphas_cumprod = alphas.cumprod(0, None::<Kind>);
    let sqrt = alphas_cumprod.sqrt();
    let n = sqrt.size()[0];
    let first = sqrt.get(0).copy();
    let last = sqrt.get(n - 1).copy();
    let sqrt = (&sqrt - &last) * (&first / (&first - &last));
    let bar = sqrt.pow_tensor_scalar(2);
    let alphas = Tensor::cat(&[bar.narrow(0, 0, 1), bar.narrow(0, 1, n - 1) / bar.narrow(0, 0, n - 1)], 0);
    alphas.neg() + 1.0
}

/// numpy's round (`np.round`, `ndarray.round`): half to even.
pub(crate) fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// `np.linspace(start, stop, num)` in float64: `i * ((stop - start) / (num - 1)) + start`, last
/// value exactly `stop`.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let div = num as f64 - 1.0;
    let step = (stop - start) / div;
    (0..num)
        .map(|i| {
            if num > 1 && i == num - 1 {
                stop
            } else if num > 1 {
                i as f64 * step + start
            } else {
                0.0 * (stop - start) + start
            }
        })
        .collect()
}

/// `np.arange(start, stop, step)` in float64: length `ceil((stop - start) / step)`, values
/// `start + i * ((start + step) - start)` (numpy's fill).
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    let len = if len.is_finite() && len > 0.0 { len as usize } else { 0 };
    let delta = (start + step) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `np.interp(x, np.arange(len(fp)), fp)`: linear interpolation over integer abscissae.
pub(crate) fn np_interp(x: f64, fp: &[f64]) -> f64 {
    let n = fp.len();
    if x.is_nan() {
        return x;
    }
    if x <= 0.0 {
        return fp[0];
    }
    if x >= (n - 1) as f64 {
        return fp[n - 1];
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / ((j + 1) as f64 - j as f64);
    slope * (x - j as f64) + fp[j]
}

/// Inference timesteps as numpy float64 values, descending (before any dtype cast), for the
/// spacing of the Euler family, DDIM and PNDM (DPM-Solver has its own, see its set_timesteps).
/// `leading` adds `steps_offset`; `trailing` subtracts 1 after rounding, as diffusers does.
pub(crate) fn spaced_timesteps(spacing: TimestepSpacing, train: i64, n: usize, steps_offset: i64, round_linspace: bool) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut t = np_linspace(0.0, (train - 1) as f64, n);
            if round_linspace {
                t.iter_mut().for_each(|v| *v = np_round(*v));
            }
            t.reverse();
            t
        }
        TimestepSpacing::Leading => {
            let ratio = train / n as i64;
            (0..n as i64).rev().map(|i| (i * ratio + steps_offset) as f64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = train as f64 / n as f64;
            np_arange(train as f64, 0.0, -ratio).into_iter().map(|v| np_round(v) - 1.0).collect()
        }
    }
}

/// `_sigma_to_t`: the fractional training timestep whose log-sigma matches, by linear
/// interpolation in log space. `log_sigmas` are f32 (numpy takes np.log of the f32 sigmas);
/// numpy's vectorized f32 log is not correctly rounded, ours is, so results can differ in the
/// last f32 bits of the timestep (not of the sigmas the steps use).
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // np.cumsum(dists >= 0).argmax() clipped to len - 2: the first index where the running count
    // of log_sigmas <= log_sigma reaches its maximum.
    let (mut count, mut best, mut low) = (0usize, 0usize, 0usize);
    for (i, &l) in log_sigmas.iter().enumerate() {
        if log_sigma - l as f64 >= 0.0 {
            count += 1;
        }
        if count > best {
            best = count;
            low = i;
        }
    }
    let low = low.min(log_sigmas.len() - 2);
    let high = low + 1;
    let (l, h) = (log_sigmas[low] as f64, log_sigmas[high] as f64);
    let w = ((l - log_sigma) / (l - h)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * high as f64
}

/// np.log of an f32 array, rounded to f32.
pub(crate) fn log_f32(values: &[f32]) -> Vec<f32> {
    values.iter().map(|&v| (v as f64).ln() as f32).collect()
}

/// The Euler-family schedulers' `use_karras_sigmas` (Euler, Heun): Karras sigmas between the
/// interpolated schedule's ends (or the config's `sigma_min`/`sigma_max`), and the float32
/// timestep `_sigma_to_t` gives each of them.
pub(crate) fn karras_schedule(sigmas: &[f64], sigma_min: Option<f64>, sigma_max: Option<f64>, train_sigmas: &[f32], n: usize) -> (Vec<f64>, Vec<f64>) {
    let lo = sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
    let hi = sigma_max.unwrap_or(sigmas[0]);
    let sigmas = karras_sigmas(lo, hi, n);
    let log_sigmas = log_f32(train_sigmas);
    let timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas) as f32 as f64).collect();
    (sigmas, timesteps)
}

/// Karras et al. (2022) sigmas: rho = 7 spacing between `sigma_max` and `sigma_min`.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n).into_iter().map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho)).collect()
}

/// libtorch's f32 `sqrt`, `log` and `exp`, for the scalar coefficients diffusers computes as 0-d
/// f32 tensors (`alpha_prod_t ** 0.5`, `torch.log(alpha_t)`): libtorch's CPU kernels are not
/// correctly rounded (sqrt goes through MKL's vector math), so Rust's `f32::sqrt` and glibc's
/// `logf` differ from them in the last bit for some inputs, and that bit shows in the latents.
pub(crate) trait TorchF32 {
    fn t_sqrt(self) -> f32;
    fn t_log(self) -> f32;
    fn t_exp(self) -> f32;
}

impl TorchF32 for f32 {
    fn t_sqrt(self) -> f32 {
        Tensor::from(self).sqrt().double_value(&[]) as f32
    }
    fn t_log(self) -> f32 {
        Tensor::from(self).log().double_value(&[]) as f32
    }
    fn t_exp(self) -> f32 {
        Tensor::from(self).exp().double_value(&[]) as f32
    }
}

/// A training timestep as an index into `alphas_cumprod`, or an error.
pub(crate) fn train_index(t: i64, train: i64) -> Result<usize> {
    if !(0..train).contains(&t) {
        bail!("timestep {t} is outside the training range 0..{train}");
    }
    Ok(t as usize)
}

/// A timestep the caller passed back, as the integer diffusers' integer-timestep schedulers use.
pub(crate) fn integer_timestep(t: f64) -> Result<i64> {
    if !t.is_finite() || t.fract() != 0.0 {
        bail!("timestep {t} is not one of this scheduler's integer timesteps");
    }
    Ok(t as i64)
}

/// `init_noise_sigma` of the sigma-based (Euler) schedulers: the largest sigma, or
/// sqrt(sigma^2 + 1) with leading spacing; before `set_timesteps` diffusers uses the training
/// sigmas.
pub(crate) fn sigma_init_noise(sigmas: &[f32], train_sigmas: &[f32], spacing: TimestepSpacing) -> f64 {
    let sigmas = if sigmas.is_empty() { train_sigmas } else { sigmas };
    let max = sigmas.iter().copied().fold(0.0f32, f32::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
        TimestepSpacing::Leading => (max * max + 1.0).t_sqrt() as f64,
    }
}
