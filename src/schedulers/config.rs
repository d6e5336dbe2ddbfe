//! `scheduler/scheduler_config.json`, read the way diffusers reads it.
//!
//! Every field is optional: a field the file lacks takes the default of the class being *built*,
//! not of the class named in `_class_name`. That is what both `XScheduler.from_pretrained(model,
//! subfolder="scheduler")` and `XScheduler.from_config(pipe.scheduler.config)` do (diffusers
//! records which values were defaults in `_use_default_values` and drops them on `from_config`),
//! so an override such as DPM-Solver++ on SD 1.5's PNDM config gets `timestep_spacing="linspace"`.
//!
//! Fields a class does not have are ignored, as diffusers ignores them, with one exception that
//! diffusers has too: it keeps such fields on the built scheduler's config, and
//! DPMSolverMultistepScheduler's Karras sigmas read `sigma_min`/`sigma_max` from there (an Euler
//! config's `sigma_min: 0.1` changes DPM-Solver++'s Karras schedule; see that file).
//!
//! A value is checked only where the class would use it, and rejected only if it would change
//! the results and is not implemented here (an error naming the field, the value and the class):
//! e.g. DPM-Solver++ accepts the `variance_type: "fixed_small"` that every DDPMScheduler config
//! carries (only a learned variance changes its steps), and DDPM, built for training's `add_noise`
//! and `get_velocity`, does not look at its sampling fields (variance_type, clip_sample,
//! thresholding, timestep_spacing, steps_offset).
//!
//! A JSON `null` for a boolean is `False` in diffusers (its `if config.x:` tests), not the
//! default, so `"clip_sample": null` turns DDIM's clipping off: [`SchedulerConfig::from_json`]
//! reads it as `Some(false)`. A `null` elsewhere is read as a missing field (diffusers would
//! mostly fail on it when used).
//!
//! A string-valued field is a [`Named`] enum value: a name diffusers writes that is not one of
//! the enum's values is kept as written, and refused (naming it) only where it is read, as above.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer};
use std::path::Path;

use crate::models::config::{config_enum, ConfigName, Named};

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<i64>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<Named<BetaSchedule>>,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Option<Named<PredictionName>>,
    pub timestep_spacing: Option<Named<TimestepSpacing>>,
    pub steps_offset: Option<i64>,
    /// PNDM, DDIM.
    #[serde(default, deserialize_with = "null_is_false")]
    pub set_alpha_to_one: Option<bool>,
    /// PNDM: skip the Runge-Kutta warm-up (SD 1.5 sets it).
    #[serde(default, deserialize_with = "null_is_false")]
    pub skip_prk_steps: Option<bool>,
    /// DDIM, DDPM.
    #[serde(default, deserialize_with = "null_is_false")]
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f64>,
    /// Everything but PNDM.
    #[serde(default, deserialize_with = "null_is_false")]
    pub rescale_betas_zero_snr: Option<bool>,
    /// DDIM, DPM-Solver, DDPM: dynamic thresholding (pixel-space models); not implemented.
    #[serde(default, deserialize_with = "null_is_false")]
    pub thresholding: Option<bool>,
    pub dynamic_thresholding_ratio: Option<f64>,
    pub sample_max_value: Option<f64>,
    /// DPM-Solver.
    pub solver_order: Option<i64>,
    pub algorithm_type: Option<Named<AlgorithmType>>,
    pub solver_type: Option<Named<SolverTypeName>>,
    #[serde(default, deserialize_with = "null_is_false")]
    pub lower_order_final: Option<bool>,
    #[serde(default, deserialize_with = "null_is_false")]
    pub euler_at_final: Option<bool>,
    /// Euler, DPM-Solver.
    #[serde(default, deserialize_with = "null_is_false")]
    pub use_karras_sigmas: Option<bool>,
    #[serde(default, deserialize_with = "null_is_false")]
    pub use_exponential_sigmas: Option<bool>,
    #[serde(default, deserialize_with = "null_is_false")]
    pub use_beta_sigmas: Option<bool>,
    #[serde(default, deserialize_with = "null_is_false")]
    pub use_lu_lambdas: Option<bool>,
    #[serde(default, deserialize_with = "null_is_false")]
    pub use_flow_sigmas: Option<bool>,
    pub flow_shift: Option<f64>,
    #[serde(default, deserialize_with = "null_is_false")]
    pub use_dynamic_shifting: Option<bool>,
    pub final_sigmas_type: Option<Named<FinalSigmasType>>,
    /// DPM-Solver. Python writes `-Infinity` (its default) as a bare token: see [`Self::from_json`].
    #[serde(default, deserialize_with = "float_or_infinity")]
    pub lambda_min_clipped: Option<f64>,
    /// DPM-Solver (only "learned"/"learned_range" change anything there), DDPM (sampling only:
    /// training does not use it).
    pub variance_type: Option<Named<VarianceType>>,
    /// Euler.
    pub interpolation_type: Option<Named<Interpolation>>,
    pub timestep_type: Option<Named<TimestepType>>,
    /// Euler's, and DPM-Solver's, Karras sigmas (DPM-Solver has no such parameter but reads the
    /// field when the config has it, as diffusers does).
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
}

impl SchedulerConfig {
    pub fn read(path: &Path) -> Result<Self> {
        // Only a regular file, of bounded size: a FIFO or /dev/zero would never end.
        let text = crate::formats::regular::read_to_string(path, crate::formats::regular::CONFIG_MAX_BYTES)?;
        Self::from_json(&text).with_context(|| format!("{}: not a valid scheduler config", path.display()))
    }

    /// Parses a config. Python's json module writes infinities and NaN as bare `Infinity`,
    /// `-Infinity`, `NaN` (DPM-Solver's `lambda_min_clipped` defaults to `-inf`, so every
    /// DPM-Solver config diffusers saves has one); they are quoted first, which strict JSON needs.
    /// A key given twice takes its last value, as in Python's json module.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(&quote_non_finite(text))?;
        Ok(serde_json::from_value(value)?)
    }

    /// The scheduler `_class_name` names.
    pub fn class_kind(&self) -> Result<super::SchedulerKind> {
        match &self.class_name {
            Some(name) => super::SchedulerKind::from_class_name(name),
            None => bail!("the scheduler config has no _class_name; choose a scheduler explicitly"),
        }
    }
}

/// Quotes bare `NaN`, `Infinity`, `-Infinity` tokens outside strings.
fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        if let Some(token) = ["-Infinity", "Infinity", "NaN"].into_iter().find(|t| rest.starts_with(t)) {
            out.push('"');
            out.push_str(token);
            out.push('"');
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn float_or_infinity<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum F {
        Num(f64),
        Text(String),
    }
    Ok(match Option::<F>::deserialize(d)? {
        None => None,
        Some(F::Num(v)) => Some(v),
        Some(F::Text(s)) => Some(match s.as_str() {
            "-Infinity" => f64::NEG_INFINITY,
            "Infinity" => f64::INFINITY,
            "NaN" => f64::NAN,
            other => return Err(serde::de::Error::custom(format!("expected a number, got {other:?}"))),
        }),
    })
}

/// A boolean field: `null` is `Some(false)` (Python's `None` is falsy), absence is `None`.
fn null_is_false<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(Some(Option::<bool>::deserialize(d)?.unwrap_or(false)))
}

/// Which quantity the model predicts (`prediction_type`; also `--prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PredictionType {
    /// The noise (SD 1.x).
    Epsilon,
    /// v = alpha_t * noise - sigma_t * x0 (SD 2.x 768 px).
    #[value(name = "v_prediction")]
    VPrediction,
    /// The clean sample x0.
    Sample,
}

impl PredictionType {
    pub fn name(self) -> &'static str {
        PredictionName::from(self).name()
    }
}

config_enum! {
    /// `prediction_type` as scheduler configs write it; each class maps the names it accepts to
    /// a [`PredictionType`].
    pub enum PredictionName {
        Epsilon = "epsilon",
        VPrediction = "v_prediction",
        Sample = "sample",
        /// Euler's other name for `sample`.
        OriginalSample = "original_sample",
    }
}

impl From<PredictionType> for PredictionName {
    fn from(p: PredictionType) -> Self {
        match p {
            PredictionType::Epsilon => PredictionName::Epsilon,
            PredictionType::VPrediction => PredictionName::VPrediction,
            PredictionType::Sample => PredictionName::Sample,
        }
    }
}

impl From<PredictionType> for Named<PredictionName> {
    fn from(p: PredictionType) -> Self {
        Named::Known(p.into())
    }
}

config_enum! {
    /// How inference timesteps are spread over the training ones (`timestep_spacing`).
    pub enum TimestepSpacing {
        Leading = "leading",
        Trailing = "trailing",
        Linspace = "linspace",
    }
}

config_enum! {
    /// `beta_schedule`.
    pub enum BetaSchedule {
        Linear = "linear",
        ScaledLinear = "scaled_linear",
        SquaredcosCapV2 = "squaredcos_cap_v2",
        /// DDPM only: `betas_for_alpha_bar` with the Laplace noise schedule.
        Laplace = "laplace",
        /// DDPM only: a sigmoid over linspace(-6, 6) between beta_start and beta_end.
        Sigmoid = "sigmoid",
    }
}

config_enum! {
    /// DPM-Solver's `algorithm_type` (the deprecated `dpmsolver` and `sde-dpmsolver` are not
    /// implemented).
    pub enum AlgorithmType {
        DpmSolverPlusPlus = "dpmsolver++",
        /// diffusers runs DEIS's name as DPM-Solver++.
        Deis = "deis",
        SdeDpmSolverPlusPlus = "sde-dpmsolver++",
    }
}

config_enum! {
    /// DPM-Solver's `solver_type`: UniPC's `logrho`, `bh1` and `bh2` run as midpoint in diffusers.
    pub enum SolverTypeName {
        Midpoint = "midpoint",
        Heun = "heun",
        Logrho = "logrho",
        Bh1 = "bh1",
        Bh2 = "bh2",
    }
}

config_enum! {
    /// `final_sigmas_type` (Euler, DPM-Solver): the last sigma of a run.
    pub enum FinalSigmasType {
        Zero = "zero",
        /// The smallest training sigma.
        SigmaMin = "sigma_min",
    }
}

config_enum! {
    /// `variance_type`: DDPM's sampling variance; DPM-Solver reads only the learned ones.
    pub enum VarianceType {
        FixedSmall = "fixed_small",
        FixedSmallLog = "fixed_small_log",
        FixedLarge = "fixed_large",
        FixedLargeLog = "fixed_large_log",
        Learned = "learned",
        LearnedRange = "learned_range",
    }
}

config_enum! {
    /// Euler's `interpolation_type`: how sigmas between training timesteps are found.
    pub enum Interpolation {
        Linear = "linear",
        LogLinear = "log_linear",
    }
}

config_enum! {
    /// Euler's `timestep_type`.
    pub enum TimestepType {
        Discrete = "discrete",
        /// With v-prediction: timesteps are 0.25 * ln(sigma).
        Continuous = "continuous",
    }
}

const BETA_SCHEDULES: &[BetaSchedule] = &[BetaSchedule::Linear, BetaSchedule::ScaledLinear, BetaSchedule::SquaredcosCapV2];

/// What `choices` maps `value` (or `default` where the file has none) to, or an error naming
/// `field`, the value, the class and the supported names.
pub(crate) fn choose<T: ConfigName + PartialEq, U: Copy>(class: &str, field: &str, value: Option<&Named<T>>, default: T, choices: &[(T, U)]) -> Result<U> {
    let value = value.cloned().unwrap_or(Named::Known(default));
    if let Some((_, v)) = choices.iter().find(|(name, _)| Some(*name) == value.known()) {
        return Ok(*v);
    }
    let names: Vec<&str> = choices.iter().map(|(n, _)| n.name()).collect();
    bail!("{field} {:?} is not supported by {class} (supported: {})", value.name(), names.join(", "))
}

/// [`choose`] where each supported value stands for itself.
pub(crate) fn choose_among<T: ConfigName + PartialEq>(class: &str, field: &str, value: Option<&Named<T>>, default: T, choices: &[T]) -> Result<T> {
    choose(class, field, value, default, &choices.iter().map(|&v| (v, v)).collect::<Vec<_>>())
}

/// The values every scheduler shares, with one class's defaults applied.
#[derive(Debug, Clone)]
pub(crate) struct Common {
    pub num_train_timesteps: i64,
    pub beta_start: f64,
    pub beta_end: f64,
    /// Not used for the betas when `trained_betas` is given (then it is only `SquaredcosCapV2`
    /// or not, which DPM-Solver's Karras timesteps look at: see [`SchedulerConfig::common`]).
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: i64,
    pub rescale_betas_zero_snr: bool,
}

/// Per class: which prediction types and beta schedules it accepts, its default spacing, whether
/// it has `rescale_betas_zero_snr` (PNDM does not: the field is ignored there, as in diffusers),
/// and whether it samples (DDPM is built for training only, where spacing is never used).
pub(crate) struct ClassInfo {
    pub name: &'static str,
    pub predictions: &'static [(PredictionName, PredictionType)],
    pub beta_schedules: &'static [BetaSchedule],
    pub default_spacing: TimestepSpacing,
    pub has_rescale: bool,
    pub samples: bool,
}

const EPS_V: &[(PredictionName, PredictionType)] =
    &[(PredictionName::Epsilon, PredictionType::Epsilon), (PredictionName::VPrediction, PredictionType::VPrediction)];
const EPS_V_SAMPLE: &[(PredictionName, PredictionType)] = &[
    (PredictionName::Epsilon, PredictionType::Epsilon),
    (PredictionName::VPrediction, PredictionType::VPrediction),
    (PredictionName::Sample, PredictionType::Sample),
];
const EULER_PREDICTIONS: &[(PredictionName, PredictionType)] = &[
    (PredictionName::Epsilon, PredictionType::Epsilon),
    (PredictionName::VPrediction, PredictionType::VPrediction),
    (PredictionName::Sample, PredictionType::Sample),
    (PredictionName::OriginalSample, PredictionType::Sample),
];

pub(crate) const PNDM: ClassInfo = ClassInfo {
    name: "PNDMScheduler",
    predictions: EPS_V,
    beta_schedules: BETA_SCHEDULES,
    default_spacing: TimestepSpacing::Leading,
    has_rescale: false,
    samples: true,
};
pub(crate) const DDIM: ClassInfo = ClassInfo {
    name: "DDIMScheduler",
    predictions: EPS_V_SAMPLE,
    beta_schedules: BETA_SCHEDULES,
    default_spacing: TimestepSpacing::Leading,
    has_rescale: true,
    samples: true,
};
pub(crate) const EULER: ClassInfo = ClassInfo {
    name: "EulerDiscreteScheduler",
    predictions: EULER_PREDICTIONS,
    beta_schedules: BETA_SCHEDULES,
    default_spacing: TimestepSpacing::Linspace,
    has_rescale: true,
    samples: true,
};
pub(crate) const EULER_ANCESTRAL: ClassInfo = ClassInfo {
    name: "EulerAncestralDiscreteScheduler",
    predictions: EPS_V,
    beta_schedules: BETA_SCHEDULES,
    default_spacing: TimestepSpacing::Linspace,
    has_rescale: true,
    samples: true,
};
pub(crate) const DPM: ClassInfo = ClassInfo {
    name: "DPMSolverMultistepScheduler",
    predictions: EPS_V_SAMPLE,
    beta_schedules: BETA_SCHEDULES,
    default_spacing: TimestepSpacing::Linspace,
    has_rescale: true,
    samples: true,
};
/// Training's noise schedule: diffusers' DDPM accepts any prediction_type when built; the
/// training script then takes epsilon or v_prediction (and fails on the others at its first step).
pub(crate) const DDPM: ClassInfo = ClassInfo {
    name: "DDPMScheduler",
    predictions: EPS_V_SAMPLE,
    beta_schedules: BetaSchedule::ALL,
    default_spacing: TimestepSpacing::Leading,
    has_rescale: true,
    samples: false,
};

pub(crate) const UNIPC: ClassInfo = ClassInfo {
    name: "UniPCMultistepScheduler",
    predictions: EPS_V_SAMPLE,
    beta_schedules: BETA_SCHEDULES,
    default_spacing: TimestepSpacing::Linspace,
    has_rescale: true,
    samples: true,
};
pub(crate) const HEUN: ClassInfo = ClassInfo {
    name: "HeunDiscreteScheduler",
    predictions: EPS_V_SAMPLE,
    beta_schedules: BETA_SCHEDULES,
    default_spacing: TimestepSpacing::Linspace,
    has_rescale: false,
    samples: true,
};
/// KDPM2DiscreteScheduler and its ancestral variant (which default beta_start/beta_end to SD's
/// 0.00085/0.012: see `SchedulerConfig::with_sd_betas`).
pub(crate) const KDPM2: ClassInfo = ClassInfo {
    name: "KDPM2DiscreteScheduler",
    predictions: EPS_V,
    beta_schedules: BETA_SCHEDULES,
    default_spacing: TimestepSpacing::Linspace,
    has_rescale: false,
    samples: true,
};
pub(crate) const KDPM2_ANCESTRAL: ClassInfo = ClassInfo { name: "KDPM2AncestralDiscreteScheduler", ..KDPM2 };
pub(crate) const DEIS: ClassInfo = ClassInfo {
    name: "DEISMultistepScheduler",
    predictions: EPS_V_SAMPLE,
    beta_schedules: BETA_SCHEDULES,
    default_spacing: TimestepSpacing::Linspace,
    has_rescale: false,
    samples: true,
};
pub(crate) const LMS: ClassInfo = ClassInfo {
    name: "LMSDiscreteScheduler",
    predictions: EPS_V_SAMPLE,
    beta_schedules: BETA_SCHEDULES,
    default_spacing: TimestepSpacing::Linspace,
    has_rescale: false,
    samples: true,
};
/// DPMSolverSinglestepScheduler (which has no timestep_spacing: it always spaces by linspace).
pub(crate) const DPM_SINGLESTEP: ClassInfo = ClassInfo {
    name: "DPMSolverSinglestepScheduler",
    predictions: EPS_V_SAMPLE,
    beta_schedules: BETA_SCHEDULES,
    default_spacing: TimestepSpacing::Linspace,
    has_rescale: false,
    samples: true,
};
/// DDPM as a sampler (a model whose own scheduler is DDPMScheduler): its spacing is checked.
pub(crate) const DDPM_SAMPLING: ClassInfo = ClassInfo { samples: true, ..DDPM };

impl SchedulerConfig {
    /// The shared values as `class` reads them (its defaults where the file has none).
    ///
    /// As in diffusers: `trained_betas` replaces the beta schedule, whose name then is not
    /// checked; `timestep_spacing` is checked when sampling (not for DDPM, built for training),
    /// `steps_offset` only with "leading" spacing, the only one that adds it.
    pub(crate) fn common(&self, class: &ClassInfo) -> Result<Common> {
        let name = class.name;
        let num_train_timesteps = self.num_train_timesteps.unwrap_or(1000);
        if !(1..=1_000_000).contains(&num_train_timesteps) {
            bail!("num_train_timesteps {num_train_timesteps} is not supported by {name} (1 to 1000000)");
        }
        let beta_schedule = match &self.trained_betas {
            None => choose_among(name, "beta_schedule", self.beta_schedule.as_ref(), BetaSchedule::Linear, class.beta_schedules)?,
            Some(b) => {
                if b.len() as i64 != num_train_timesteps {
                    bail!("trained_betas has {} values but num_train_timesteps is {num_train_timesteps} ({name})", b.len());
                }
                match self.beta_schedule.as_ref().and_then(Named::known) {
                    Some(BetaSchedule::SquaredcosCapV2) => BetaSchedule::SquaredcosCapV2,
                    _ => BetaSchedule::Linear,
                }
            }
        };
        // Each step keeps 1 - beta of the signal: a beta outside (0, 1) gives a negative or
        // zero alpha, whose products and logarithms make every later value meaningless (NaN
        // sigmas, or a finite schedule that only draws noise). Checked where they are used.
        let in_unit = |v: f64| v > 0.0 && v < 1.0;
        match &self.trained_betas {
            Some(b) => {
                if let Some((i, v)) = b.iter().enumerate().find(|(_, v)| !in_unit(**v)) {
                    bail!("trained_betas[{i}] is {v}; every beta must be between 0 and 1, both excluded ({name})");
                }
            }
            None if matches!(beta_schedule, BetaSchedule::Linear | BetaSchedule::ScaledLinear | BetaSchedule::Sigmoid) => {
                for (field, v) in [("beta_start", self.beta_start.unwrap_or(0.0001)), ("beta_end", self.beta_end.unwrap_or(0.02))] {
                    if !in_unit(v) {
                        bail!("{field} is {v}; a beta must be between 0 and 1, both excluded ({name})");
                    }
                }
            }
            None => {}
        }
        let prediction_type = choose(name, "prediction_type", self.prediction_type.as_ref(), PredictionName::Epsilon, class.predictions)?;
        let timestep_spacing = match &self.timestep_spacing {
            Some(s) if class.samples => choose_among(name, "timestep_spacing", Some(s), class.default_spacing, TimestepSpacing::ALL)?,
            _ => class.default_spacing,
        };
        let steps_offset = self.steps_offset.unwrap_or(0);
        if class.samples && timestep_spacing == TimestepSpacing::Leading && !(0..num_train_timesteps).contains(&steps_offset) {
            bail!("steps_offset {steps_offset} is not supported by {name} with leading spacing (0 to {})", num_train_timesteps - 1);
        }
        Ok(Common {
            num_train_timesteps,
            beta_start: self.beta_start.unwrap_or(0.0001),
            beta_end: self.beta_end.unwrap_or(0.02),
            beta_schedule,
            trained_betas: self.trained_betas.clone(),
            prediction_type,
            timestep_spacing,
            steps_offset,
            rescale_betas_zero_snr: class.has_rescale && self.rescale_betas_zero_snr.unwrap_or(false),
        })
    }

    /// The config with SD's betas (0.00085 to 0.012) where it gives none: KDPM2's defaults,
    /// unlike DDPM's 0.0001 to 0.02.
    pub(crate) fn with_sd_betas(&self) -> SchedulerConfig {
        SchedulerConfig { beta_start: self.beta_start.or(Some(0.00085)), beta_end: self.beta_end.or(Some(0.012)), ..self.clone() }
    }

    /// Rejects `thresholding: true` (dynamic thresholding is for pixel-space models).
    pub(crate) fn reject_thresholding(&self, class: &str) -> Result<()> {
        if self.thresholding == Some(true) {
            bail!("thresholding true is not supported by {class} (dynamic thresholding is for pixel-space models, not Stable Diffusion)");
        }
        Ok(())
    }

    /// `sigma_min`/`sigma_max`, which only the Karras schedule reads: positive where given (the
    /// schedule's ends are the training sigmas where not).
    pub(crate) fn check_karras_range(&self, class: &str) -> Result<()> {
        for (field, v) in [("sigma_min", self.sigma_min), ("sigma_max", self.sigma_max)] {
            if let Some(v) = v.filter(|v| v.is_nan() || *v <= 0.0) {
                bail!("{field} {v} is not supported by {class} with use_karras_sigmas (it must be positive)");
            }
        }
        Ok(())
    }

    /// Rejects the sigma schedules other than the interpolated and the Karras one (`extra`: the
    /// class's own further flags).
    pub(crate) fn reject_other_sigmas(&self, class: &str, extra: &[(&str, Option<bool>)]) -> Result<()> {
        for (field, value) in [("use_exponential_sigmas", self.use_exponential_sigmas), ("use_beta_sigmas", self.use_beta_sigmas)].iter().chain(extra) {
            if *value == Some(true) {
                bail!("{field} true is not supported by {class} (use_karras_sigmas is)");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedulers::ddpm::DdpmScheduler;
    use crate::schedulers::{build, SchedulerKind};

    /// The five samplers these cases were written for (the later ones have their own tests).
    const FIVE: [SchedulerKind; 5] =
        [SchedulerKind::Pndm, SchedulerKind::Ddim, SchedulerKind::Euler, SchedulerKind::EulerAncestral, SchedulerKind::DpmSolverMultistep];

    /// Which classes (the five samplers in [`FIVE`]'s order, then DDPM for training) build from
    /// `{field: value}`.
    fn accepted_by(field: &str, value: &str) -> [bool; 6] {
        let config = SchedulerConfig::from_json(&serde_json::json!({ field: value }).to_string()).unwrap();
        let mut out = [false; 6];
        for (i, kind) in FIVE.into_iter().enumerate() {
            out[i] = build(kind, &config).is_ok();
        }
        out[5] = DdpmScheduler::new(&config).is_ok();
        out
    }

    #[test]
    fn each_class_accepts_the_names_it_implements() {
        const ALL: [bool; 6] = [true; 6];
        // PNDM, DDIM, Euler, Euler ancestral, DPM-Solver++, DDPM.
        let cases: &[(&str, &str, [bool; 6])] = &[
            ("prediction_type", "epsilon", ALL),
            ("prediction_type", "v_prediction", ALL),
            ("prediction_type", "sample", [false, true, true, false, true, true]),
            ("prediction_type", "original_sample", [false, false, true, false, false, false]),
            ("prediction_type", "Epsilon", [false; 6]),
            ("beta_schedule", "squaredcos_cap_v2", ALL),
            ("beta_schedule", "laplace", [false, false, false, false, false, true]),
            ("beta_schedule", "sigmoid", [false, false, false, false, false, true]),
            ("beta_schedule", "exponential", [false; 6]),
            ("timestep_spacing", "trailing", ALL),
            ("timestep_spacing", "uniform", [false, false, false, false, false, true]),
            ("algorithm_type", "deis", ALL),
            ("algorithm_type", "sde-dpmsolver++", ALL),
            ("algorithm_type", "dpmsolver", [true, true, true, true, false, true]),
            ("solver_type", "bh2", ALL),
            ("solver_type", "bogus", [true, true, true, true, false, true]),
            ("final_sigmas_type", "sigma_min", ALL),
            ("final_sigmas_type", "max", [true, true, false, true, false, true]),
            ("interpolation_type", "log_linear", ALL),
            ("interpolation_type", "cubic", [true, true, false, true, true, true]),
            ("timestep_type", "continuous", ALL),
            ("timestep_type", "anything", ALL),
            ("variance_type", "learned", [true, true, true, true, false, true]),
            ("variance_type", "anything", ALL),
        ];
        for (field, value, want) in cases {
            assert_eq!(accepted_by(field, value), *want, "{field} {value:?}");
        }
        let e = build(SchedulerKind::Pndm, &SchedulerConfig::from_json(r#"{"prediction_type": "original_sample"}"#).unwrap()).err().unwrap().to_string();
        assert_eq!(e, r#"prediction_type "original_sample" is not supported by PNDMScheduler (supported: epsilon, v_prediction)"#);
    }

    #[test]
    fn an_override_is_written_under_the_name_it_has_in_files() {
        for p in [PredictionType::Epsilon, PredictionType::VPrediction, PredictionType::Sample] {
            let named: Named<PredictionName> = p.into();
            assert_eq!(named, Named::parse(p.name()));
            assert_eq!(
                serde_json::to_value(&named).unwrap(),
                serde_json::json!(<PredictionType as clap::ValueEnum>::to_possible_value(&p).unwrap().get_name())
            );
        }
    }
}
