//! AdamW over tch tensors, with torch's exact arithmetic, and its state for checkpoints.
//!
//! The training script uses `torch.optim.AdamW(params, lr, betas, weight_decay, eps)` with
//! everything else default. On CPU torch then runs its single-tensor path (the foreach default
//! only applies to CUDA-like devices; on CPU both give the same bits). Per parameter and step:
//!
//! ```text
//! step += 1                                   (a float32 counter)
//! p *= 1 - lr*wd                              (skipped when wd == 0)
//! m.lerp_(g, 1 - b1)
//! v = v*b2 + (1 - b2)*g*g                     (mul_ then addcmul_)
//! step_size = lr / (1 - b1**step)             (host f64, libm pow)
//! denom = sqrt(v) / (1 - b2**step)**0.5 + eps
//! p += (-step_size) * m / denom               (addcdiv_)
//! ```
//!
//! tch has no `value=` argument for `addcmul_`/`addcdiv_`, so the scalar is applied to the first
//! factor by a separate multiply and the fused op runs with value 1. On CPU this is the same
//! arithmetic (the kernels compute `self + value*t1 (*|/) t2` and `1*x` is exact): results are
//! bit-identical to torch (tests/optim.rs). On CUDA torch's default is the foreach path, whose
//! kernels round differently; there the two agree to float rounding, not bit for bit.
//!
//! The whole update runs without autograd. Parameters with no gradient are skipped (no decay, no
//! step), as torch skips `grad is None`. Note that [`AdamW::zero_grad`] zeroes gradients instead
//! of setting them to None (tch cannot unset a gradient): a parameter that received a gradient
//! once but none in a later update then takes a zero-gradient step where torch would skip it.
//! The textual-inversion rows always receive a gradient, so this does not arise there.
use crate::train::lr_schedule::{libm_pow, py_float};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// AdamW hyper-parameters; [`Default`] gives the training script's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// `--learning_rate 1e-4 --adam_beta1 0.9 --adam_beta2 0.999 --adam_epsilon 1e-08
    /// --adam_weight_decay 1e-2`.
    fn default() -> Self {
        Self { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

impl AdamWConfig {
    /// torch's constructor checks, with its messages (NaN fails them all, as in Python).
    pub fn validate(&self) -> Result<()> {
        let ok = |lo: f64, x: f64, below_one: bool| lo <= x && (!below_one || x < 1.0);
        if !ok(0.0, self.lr, false) {
            bail!("Invalid learning rate: {}", py_float(self.lr));
        }
        if !ok(0.0, self.eps, false) {
            bail!("Invalid epsilon value: {}", py_float(self.eps));
        }
        if !ok(0.0, self.beta1, true) {
            bail!("Invalid beta parameter at index 0: {}", py_float(self.beta1));
        }
        if !ok(0.0, self.beta2, true) {
            bail!("Invalid beta parameter at index 1: {}", py_float(self.beta2));
        }
        if !ok(0.0, self.weight_decay, false) {
            bail!("Invalid weight_decay value: {}", py_float(self.weight_decay));
        }
        Ok(())
    }
}

/// The two host-side scalars of update number `step` (1-based), computed as torch's
/// single-tensor AdamW does: `(lr / (1 - beta1**step), (1 - beta2**step)**0.5)`. Python's
/// `**` is the C library's `pow`, which is not always `sqrt` for the exponent 0.5.
pub fn adam_step_scalars(lr: f64, beta1: f64, beta2: f64, step: f64) -> (f64, f64) {
    let bias_correction1 = 1.0 - libm_pow(beta1, step);
    let bias_correction2 = 1.0 - libm_pow(beta2, step);
    (lr / bias_correction1, libm_pow(bias_correction2, 0.5))
}

/// Per-parameter state, created lazily at the parameter's first update (as torch does).
#[derive(Debug)]
struct ParamState {
    /// torch keeps the count in a float32 tensor; f32 here gives the same values.
    step: f32,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW for a list of tensors (one group, one learning rate), e.g. the `[n, D]` placeholder rows.
#[derive(Debug)]
pub struct AdamW {
    params: Vec<Tensor>,
    cfg: AdamWConfig,
    state: Vec<Option<ParamState>>,
}

impl AdamW {
    /// `params` are handles to the trained tensors (e.g. `shallow_clone()`s of leaves with
    /// `requires_grad`); updates write into their storage.
    pub fn new(params: Vec<Tensor>, cfg: AdamWConfig) -> Result<Self> {
        cfg.validate()?;
        for (i, p) in params.iter().enumerate() {
            if !p.defined() {
                bail!("AdamW parameter {i} is an undefined tensor");
            }
            if !p.is_floating_point() {
                bail!("AdamW parameter {i} has kind {:?}; only floating-point tensors can be optimized", p.kind());
            }
        }
        let state = params.iter().map(|_| None).collect();
        Ok(Self { params, cfg, state })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// The learning rate the next [`AdamW::step`] uses.
    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }

    /// Sets the learning rate, as an LR scheduler writes `param_group["lr"]` (not validated,
    /// like torch).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// How many updates parameter `index` has taken (`None` before its first one).
    pub fn step_count(&self, index: usize) -> Option<u64> {
        self.state.get(index)?.as_ref().map(|s| s.step as u64)
    }

    /// One update from the parameters' `.grad()`; parameters without a gradient are skipped.
    pub fn step(&mut self) -> Result<()> {
        let grads: Vec<Option<Tensor>> = self.params.iter().map(|p| p.f_grad().ok().filter(Tensor::defined)).collect();
        let refs: Vec<Option<&Tensor>> = grads.iter().map(Option::as_ref).collect();
        self.step_with_grads(&refs)
    }

    /// One update from explicit gradients, one entry per parameter (`None`: skip it, as torch
    /// skips `grad is None`). For callers that hold gradients elsewhere, e.g. after unscaling.
    pub fn step_with_grads(&mut self, grads: &[Option<&Tensor>]) -> Result<()> {
        if grads.len() != self.params.len() {
            bail!("AdamW step got {} gradients for {} parameters", grads.len(), self.params.len());
        }
        let cfg = self.cfg;
        tch::no_grad(|| -> Result<()> {
            for (i, grad) in grads.iter().enumerate() {
                let Some(grad) = grad else { continue };
                let param = &self.params[i];
                if grad.size() != param.size() || grad.kind() != param.kind() || grad.device() != param.device() {
                    bail!(
                        "gradient of AdamW parameter {i} is {:?} {:?} on {:?}, the parameter {:?} {:?} on {:?}",
                        grad.size(),
                        grad.kind(),
                        grad.device(),
                        param.size(),
                        param.kind(),
                        param.device()
                    );
                }
                let st = match &mut self.state[i] {
                    Some(st) => st,
                    slot => slot.insert(ParamState { step: 0.0, exp_avg: param.f_zeros_like()?, exp_avg_sq: param.f_zeros_like()? }),
                };
                update(param, grad, st, &cfg).with_context(|| format!("AdamW update of parameter {i}"))?;
            }
            Ok(())
        })
    }

    /// Zeroes the parameters' gradients (see the module note on None versus zero).
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Whether every defined gradient is free of inf and NaN (what an fp16 loss scaler checks
    /// before it lets a step happen).
    pub fn grads_finite(&self) -> Result<bool> {
        for p in &self.params {
            let g = p.f_grad()?;
            if g.defined() && g.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The optimizer state in torch's `state_dict` layout, flattened for safetensors: for every
    /// parameter `i` that has taken a step, `state.{i}.step` (f32 []), `state.{i}.exp_avg`,
    /// `state.{i}.exp_avg_sq` (copies, parameter dtype, on the CPU); and the group's
    /// `param_groups.0.{lr,beta1,beta2,eps,weight_decay}` (f64 []). Save it next to the
    /// parameters themselves; [`AdamW::load_state`] resumes bit-identically.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let f64_scalar = |x: f64| Tensor::f_scalar_tensor(x, (Kind::Double, Device::Cpu));
        let mut out = Vec::new();
        for (i, st) in self.state.iter().enumerate() {
            let Some(st) = st else { continue };
            out.push((format!("state.{i}.step"), Tensor::f_scalar_tensor(st.step as f64, (Kind::Float, Device::Cpu))?));
            out.push((format!("state.{i}.exp_avg"), st.exp_avg.f_to_device(Device::Cpu)?.f_detach_copy()?));
            out.push((format!("state.{i}.exp_avg_sq"), st.exp_avg_sq.f_to_device(Device::Cpu)?.f_detach_copy()?));
        }
        let c = &self.cfg;
        for (name, x) in [("lr", c.lr), ("beta1", c.beta1), ("beta2", c.beta2), ("eps", c.eps), ("weight_decay", c.weight_decay)] {
            out.push((format!("param_groups.0.{name}"), f64_scalar(x)?));
        }
        Ok(out)
    }

    /// Restores [`AdamW::state`] like torch's `load_state_dict`: the moments are copied into the
    /// parameters' dtype and device, parameters without saved state stay fresh, and the saved
    /// hyper-parameters (lr included) replace the current ones. Nothing changes on error.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let mut map: HashMap<&str, &Tensor> = HashMap::new();
        for (k, v) in state {
            if map.insert(k.as_str(), v).is_some() {
                bail!("optimizer state has {k:?} twice");
            }
        }
        let mut take = |key: &str| map.remove(key);
        let scalar = |key: &str, t: Option<&Tensor>| -> Result<f64> {
            let t = t.with_context(|| format!("optimizer state has no {key:?}"))?;
            if t.numel() != 1 {
                bail!("optimizer state {key:?} has shape {:?}, expected a single value", t.size());
            }
            Ok(t.f_double_value(&[])?)
        };
        let mut cfg = AdamWConfig::default();
        for (name, slot) in
            [("lr", &mut cfg.lr), ("beta1", &mut cfg.beta1), ("beta2", &mut cfg.beta2), ("eps", &mut cfg.eps), ("weight_decay", &mut cfg.weight_decay)]
        {
            let key = format!("param_groups.0.{name}");
            *slot = scalar(&key, take(&key))?;
        }
        cfg.validate().context("optimizer state holds invalid hyper-parameters")?;

        let mut new_state = Vec::with_capacity(self.params.len());
        for (i, param) in self.params.iter().enumerate() {
            let (k_step, k_avg, k_sq) = (format!("state.{i}.step"), format!("state.{i}.exp_avg"), format!("state.{i}.exp_avg_sq"));
            let (t_step, t_avg, t_sq) = (take(&k_step), take(&k_avg), take(&k_sq));
            if t_step.is_none() && t_avg.is_none() && t_sq.is_none() {
                new_state.push(None);
                continue;
            }
            let step = scalar(&k_step, t_step)?;
            if !(step.is_finite() && step >= 0.0 && step.fract() == 0.0 && step <= f32::MAX as f64) {
                bail!("optimizer state {k_step:?} is {step}, not a step count");
            }
            let moment = |key: &str, t: Option<&Tensor>| -> Result<Tensor> {
                let t = t.with_context(|| format!("optimizer state has {k_step:?} but no {key:?}"))?;
                if t.size() != param.size() {
                    bail!("optimizer state {key:?} has shape {:?}, the parameter {:?}", t.size(), param.size());
                }
                if !t.is_floating_point() {
                    bail!("optimizer state {key:?} has kind {:?}, expected floating point", t.kind());
                }
                let mut out = param.f_zeros_like()?;
                tch::no_grad(|| out.f_copy_(t))?;
                Ok(out)
            };
            new_state.push(Some(ParamState { step: step as f32, exp_avg: moment(&k_avg, t_avg)?, exp_avg_sq: moment(&k_sq, t_sq)? }));
        }
        if !map.is_empty() {
            let mut extra: Vec<&str> = map.into_keys().collect();
            extra.sort_unstable();
            bail!("optimizer state has entries for no parameter of this optimizer ({} parameters): {extra:?}", self.params.len());
        }
        self.cfg = cfg;
        self.state = new_state;
        Ok(())
    }
}

/// One parameter's update, in torch's `_single_tensor_adam` order (see the module docs).
fn update(param: &Tensor, grad: &Tensor, st: &mut ParamState, cfg: &AdamWConfig) -> Result<()> {
    let mut param = param.shallow_clone();
    st.step += 1.0;
    if cfg.weight_decay != 0.0 {
        let _ = param.f_mul_scalar_(1.0 - cfg.lr * cfg.weight_decay)?;
    }
    let _ = st.exp_avg.f_lerp_(grad, 1.0 - cfg.beta1)?;
    // exp_avg_sq.mul_(b2).addcmul_(g, g, value=1-b2), the value folded into the first factor.
    let _ = st.exp_avg_sq.f_mul_scalar_(cfg.beta2)?;
    let _ = st.exp_avg_sq.f_addcmul_(&grad.f_mul_scalar(1.0 - cfg.beta2)?, grad)?;

    let (step_size, bias_correction2_sqrt) = adam_step_scalars(cfg.lr, cfg.beta1, cfg.beta2, st.step as f64);
    let mut denom = st.exp_avg_sq.f_sqrt()?.f_div_scalar(bias_correction2_sqrt)?;
    let _ = denom.f_add_scalar_(cfg.eps)?;
    // param.addcdiv_(exp_avg, denom, value=-step_size), the value folded into the numerator.
    let _ = param.f_addcdiv_(&st.exp_avg.f_mul_scalar(-step_size)?, &denom)?;
    Ok(())
}

/// `torch.nn.utils.clip_grad_norm_` over `params`: the 2-norm of all their gradients together,
/// scaled down to `max` when above it (`max / (norm + 1e-6)`).
pub fn clip_grad_norm(params: &[Tensor], max: f64) {
    let grads: Vec<Tensor> = params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
    if grads.is_empty() {
        return;
    }
    let norms: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).norm()).collect();
    let total = Tensor::stack(&norms, 0).norm();
    let coef = ((total + 1e-6).reciprocal() * max).clamp_max(1.0);
    for mut g in grads {
        let _ = g.f_mul_(&coef.to_kind(g.kind()));
    }
    tracing::trace!("gradient clipped to {max}");
}
