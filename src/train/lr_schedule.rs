//! Learning-rate schedules: diffusers' `get_scheduler(...)` multipliers and `LambdaLR` timing.
//!
//! Every schedule is a multiplier `f(s)` of the base learning rate, where `s` is the scheduler's
//! step counter ([`LrScheduler`]). The arithmetic follows diffusers 0.42 `optimization.py`
//! operation by operation (same f64 operations in the same order, libm `cos`/`pow`), so the
//! learning rates are bit-identical to Python's.
//!
//! Timing (torch `LambdaLR`): construction sets `lr = base * f(0)`; each [`LrScheduler::step`]
//! increments `s` and sets `lr = base * f(s)`. The training loop steps the scheduler right after
//! the optimizer, so update `u` (1-based) uses `base * f(u - 1)`: with any warmup schedule the
//! first update runs with learning rate 0 (it still moves the Adam moments and the step count).
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::f64::consts::PI;
use tch::{Device, Kind, Tensor};

/// diffusers' polynomial schedule defaults (`get_scheduler` forwards neither from the script).
pub const POLYNOMIAL_LR_END: f64 = 1e-7;
pub const POLYNOMIAL_POWER: f64 = 1.0;

/// A `--lr_scheduler` name the training script can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrScheduleKind {
    Constant,
    ConstantWithWarmup,
    Linear,
    Cosine,
    CosineWithRestarts,
    Polynomial,
}

impl LrScheduleKind {
    /// The names accepted by [`LrScheduleKind::parse`], as the script's help lists them.
    pub const NAMES: [&'static str; 6] = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"];

    /// Parses a `--lr_scheduler` value. `piecewise_constant` is refused here because the training
    /// script never passes the `step_rules` it needs (diffusers then crashes on `None.split`).
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "constant" => Self::Constant,
            "constant_with_warmup" => Self::ConstantWithWarmup,
            "linear" => Self::Linear,
            "cosine" => Self::Cosine,
            "cosine_with_restarts" => Self::CosineWithRestarts,
            "polynomial" => Self::Polynomial,
            "piecewise_constant" => bail!(
                "--lr_scheduler piecewise_constant needs step rules, which the training script has no \
                 flag for (diffusers fails with AttributeError: 'NoneType' object has no attribute 'split'); \
                 use one of: {}",
                Self::NAMES.join(", ")
            ),
            other => bail!("unknown --lr_scheduler {other:?}: '{other}' is not a valid SchedulerType; use one of: {}", Self::NAMES.join(", ")),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::ConstantWithWarmup => "constant_with_warmup",
            Self::Linear => "linear",
            Self::Cosine => "cosine",
            Self::CosineWithRestarts => "cosine_with_restarts",
            Self::Polynomial => "polynomial",
        }
    }
}

impl std::str::FromStr for LrScheduleKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// The `get_scheduler` arguments the training script passes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleArgs {
    /// `lr_warmup_steps * num_processes` (any integer; the CLI does not forbid negatives).
    pub num_warmup_steps: i64,
    /// `max_train_steps * num_processes`.
    pub num_training_steps: i64,
    /// `--lr_num_cycles`; used by `cosine_with_restarts` only (`cosine` always uses 0.5).
    pub num_cycles: i64,
    /// The optimizer's initial learning rate (after `--scale_lr`); polynomial decays towards
    /// [`POLYNOMIAL_LR_END`] relative to it.
    pub learning_rate: f64,
}

/// One schedule with its parameters: a pure function of the step counter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    Constant,
    ConstantWithWarmup { warmup: i64 },
    Linear { warmup: i64, total: i64 },
    Cosine { warmup: i64, total: i64 },
    CosineWithRestarts { warmup: i64, total: i64, cycles: i64 },
    Polynomial { warmup: i64, total: i64, lr_init: f64, lr_end: f64, power: f64 },
}

impl LrSchedule {
    /// `get_scheduler(name, optimizer, num_warmup_steps, num_training_steps, num_cycles)`.
    pub fn from_name(name: &str, args: &ScheduleArgs) -> Result<Self> {
        Self::new(LrScheduleKind::parse(name)?, args)
    }

    /// Builds the schedule, refusing the settings on which diffusers raises: polynomial with an
    /// initial lr not above `lr_end` (its ValueError, same words), and polynomial with
    /// `num_training_steps == num_warmup_steps`, where diffusers divides by zero on reaching step W
    /// (after the last update, losing the final save) — refused up front instead.
    pub fn new(kind: LrScheduleKind, args: &ScheduleArgs) -> Result<Self> {
        let (warmup, total) = (args.num_warmup_steps, args.num_training_steps);
        Ok(match kind {
            LrScheduleKind::Constant => Self::Constant,
            LrScheduleKind::ConstantWithWarmup => Self::ConstantWithWarmup { warmup },
            LrScheduleKind::Linear => Self::Linear { warmup, total },
            LrScheduleKind::Cosine => Self::Cosine { warmup, total },
            LrScheduleKind::CosineWithRestarts => Self::CosineWithRestarts { warmup, total, cycles: args.num_cycles },
            LrScheduleKind::Polynomial => {
                let (lr_init, lr_end) = (args.learning_rate, POLYNOMIAL_LR_END);
                #[allow(clippy::neg_cmp_op_on_partial_ord)] // NaN must fail too, as in Python
                if !(lr_init > lr_end) {
                    bail!(
                        "lr_end ({}) must be smaller than initial lr ({}): the polynomial schedule \
                         decays to 1e-7, so --learning_rate must be larger",
                        py_float(lr_end),
                        py_float(lr_init)
                    );
                }
                if total == warmup {
                    bail!(
                        "--lr_scheduler polynomial needs more training steps ({total}) than warmup steps \
                         ({warmup}): diffusers divides by their difference (ZeroDivisionError at step {warmup})"
                    );
                }
                Self::Polynomial { warmup, total, lr_init, lr_end, power: POLYNOMIAL_POWER }
            }
        })
    }

    /// The multiplier of the base learning rate at scheduler step `step` (diffusers' lambda).
    pub fn multiplier(&self, step: i64) -> f64 {
        let s = step;
        // Shared linear warmup: `float(s) / float(max(1, W))`.
        let warm = |w: i64| s as f64 / w.max(1) as f64;
        // `float(s - W) / float(max(1, T - W))`.
        let progress = |w: i64, t: i64| (s - w) as f64 / (t - w).max(1) as f64;
        match *self {
            Self::Constant => 1.0,
            Self::ConstantWithWarmup { warmup } => {
                if s < warmup {
                    warm(warmup)
                } else {
                    1.0
                }
            }
            Self::Linear { warmup, total } => {
                let (f_min, f_max) = (0.0, 1.0);
                if s < warmup {
                    return f_max * s as f64 / warmup.max(1) as f64;
                }
                let p = (total - s) as f64 / (total - warmup).max(1) as f64;
                f_min + (f_max - f_min) * py_max(0.0, p)
            }
            Self::Cosine { warmup, total } => {
                if s < warmup {
                    return warm(warmup);
                }
                // `cosine` never receives --lr_num_cycles: diffusers' default 0.5 (a half cosine).
                let num_cycles = 0.5;
                py_max(0.0, 0.5 * (1.0 + (PI * num_cycles * 2.0 * progress(warmup, total)).cos()))
            }
            Self::CosineWithRestarts { warmup, total, cycles } => {
                if s < warmup {
                    return warm(warmup);
                }
                let p = progress(warmup, total);
                if p >= 1.0 {
                    return 0.0;
                }
                py_max(0.0, 0.5 * (1.0 + (PI * py_mod(cycles as f64 * p, 1.0)).cos()))
            }
            Self::Polynomial { warmup, total, lr_init, lr_end, power } => {
                if s < warmup {
                    warm(warmup)
                } else if s > total {
                    lr_end / lr_init
                } else {
                    // Python int / int is the correctly rounded quotient, as is f64 division of
                    // exactly converted integers (below 2^53). `total != warmup` (checked in new).
                    let pct_remaining = 1.0 - (s - warmup) as f64 / (total - warmup) as f64;
                    let decay = (lr_init - lr_end) * libm_pow(pct_remaining, power) + lr_end;
                    decay / lr_init
                }
            }
        }
    }
}

/// torch's `LambdaLR` around one [`LrSchedule`]: the step counter (`last_epoch`) and the learning
/// rate it last set. The optimizer is not held; feed [`LrScheduler::lr`] to
/// `AdamW::set_lr` after every [`LrScheduler::step`] (and once after construction).
#[derive(Debug, Clone, PartialEq)]
pub struct LrScheduler {
    schedule: LrSchedule,
    base_lr: f64,
    last_epoch: i64,
    last_lr: f64,
}

impl LrScheduler {
    /// Like `LambdaLR(optimizer, f)`: counter 0, `lr = base_lr * f(0)` (0 with a warmup).
    pub fn new(schedule: LrSchedule, base_lr: f64) -> Self {
        let last_lr = base_lr * schedule.multiplier(0);
        Self { schedule, base_lr, last_epoch: 0, last_lr }
    }

    /// Advances the counter and returns the new learning rate, `base_lr * f(counter)`.
    pub fn step(&mut self) -> f64 {
        self.last_epoch += 1;
        self.last_lr = self.base_lr * self.schedule.multiplier(self.last_epoch);
        self.last_lr
    }

    /// The learning rate the next optimizer update uses (`get_last_lr()[0]`; the logged `lr`).
    pub fn lr(&self) -> f64 {
        self.last_lr
    }

    /// The scheduler's step counter (torch's `last_epoch`).
    pub fn step_count(&self) -> i64 {
        self.last_epoch
    }

    pub fn base_lr(&self) -> f64 {
        self.base_lr
    }

    pub fn schedule(&self) -> &LrSchedule {
        &self.schedule
    }

    /// What torch's `LambdaLR.state_dict()` carries that matters (the lambda itself is not saved,
    /// it is rebuilt from the command line on resume): `last_epoch` (i64 []), `base_lr` and
    /// `last_lr` (f64 []). Ready for `Tensor::write_safetensors`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let opts = (Kind::Double, Device::Cpu);
        vec![
            ("last_epoch".to_string(), Tensor::scalar_tensor(self.last_epoch, (Kind::Int64, Device::Cpu))),
            ("base_lr".to_string(), Tensor::scalar_tensor(self.base_lr, opts)),
            ("last_lr".to_string(), Tensor::scalar_tensor(self.last_lr, opts)),
        ]
    }

    /// Restores [`LrScheduler::state`] like `load_state_dict`: counter, base lr and last lr all
    /// come from the checkpoint (so a changed `--learning_rate` does not apply on resume, as in
    /// Python); the schedule shape stays the one this scheduler was built with.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let map: HashMap<&str, &Tensor> = state.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let get = |key: &str| -> Result<&Tensor> {
            let t = map.get(key).with_context(|| format!("LR scheduler state has no {key:?}"))?;
            if t.numel() != 1 {
                bail!("LR scheduler state {key:?} has shape {:?}, expected a single value", t.size());
            }
            Ok(t)
        };
        let last_epoch_t = get("last_epoch")?;
        if last_epoch_t.kind() != Kind::Int64 {
            bail!("LR scheduler state \"last_epoch\" is {:?}, expected Int64", last_epoch_t.kind());
        }
        let last_epoch = last_epoch_t.f_int64_value(&[])?;
        let base_lr = get("base_lr")?.f_double_value(&[])?;
        let last_lr = get("last_lr")?.f_double_value(&[])?;
        if last_epoch < 0 || !base_lr.is_finite() || !last_lr.is_finite() {
            bail!("LR scheduler state is invalid: last_epoch {last_epoch}, base_lr {base_lr}, last_lr {last_lr}");
        }
        *self = Self { schedule: self.schedule, base_lr, last_epoch, last_lr };
        Ok(())
    }
}

/// Python's `max(a, b)` on floats: `a` unless `b > a` (keeps `a` for NaN and for `-0.0`).
fn py_max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

/// Python's float `%`: the result takes the sign of the divisor.
fn py_mod(a: f64, b: f64) -> f64 {
    let m = a % b;
    if m != 0.0 {
        if (b < 0.0) != (m < 0.0) {
            m + b
        } else {
            m
        }
    } else {
        0.0f64.copysign(b)
    }
}

/// `x ** y` as CPython computes it: the C library's `pow`, never rewritten. LLVM turns a `powf`
/// with constant exponent 0.5 into `sqrt`, which differs from glibc's `pow(x, 0.5)` in the last
/// bit for a few inputs (e.g. AdamW's `(1 - 0.999**1270)**0.5`), so the exponent is hidden.
pub(crate) fn libm_pow(x: f64, y: f64) -> f64 {
    x.powf(std::hint::black_box(y))
}

/// Python's `repr(float)`, so that error messages quote values in the script's words
/// (`1e-07`, `0.0001`, `2.0`).
pub(crate) fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // Shortest round-trip digits and exponent, as Python's repr uses.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };
    let decpt = exp + 1; // position of the decimal point relative to the digits
    let body = if !(-4 < decpt && decpt <= 16) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{first}{frac}e{esign}{:02}", exp.abs())
    } else if decpt <= 0 {
        format!("0.{}{digits}", "0".repeat((-decpt) as usize))
    } else if (decpt as usize) < digits.len() {
        let (int, frac) = digits.split_at(decpt as usize);
        format!("{int}.{frac}")
    } else {
        format!("{digits}{}.0", "0".repeat(decpt as usize - digits.len()))
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_float_matches_python_repr() {
        let cases = [
            (1e-7, "1e-07"),
            (5e-8, "5e-08"),
            (1e-4, "0.0001"),
            (1.5e-5, "1.5e-05"),
            (2.0, "2.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (100.0, "100.0"),
            (0.002, "0.002"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (-3.25, "-3.25"),
            (0.1 + 0.2, "0.30000000000000004"),
        ];
        for (x, want) in cases {
            assert_eq!(py_float(x), want, "{x:e}");
        }
    }

    #[test]
    fn py_mod_sign_of_divisor() {
        assert_eq!(py_mod(2.5, 1.0), 0.5);
        assert_eq!(py_mod(-0.25, 1.0), 0.75);
        assert_eq!(py_mod(-1.0, 1.0).to_bits(), 0.0f64.to_bits());
    }
}
