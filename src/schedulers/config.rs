//! `scheduler/scheduler_config.json`, read the way diffusers reads it.
//!
//! Every field is optional: a field the file lacks takes the default of the class being *built*,
//! not of the class named in `_class_name`. That is what both `XScheduler.from_pretrained(model,
//! subfolder="scheduler")` and `XScheduler.from_config(pipe.scheduler.config)` do (diffusers
//! records which values were defaults in `_use_default_values` and drops them on `from_config`),
//! so an override such as DPM-Solver++ on SD 1.5's PNDM config gets `timestep_spacing="linspace"`.
//! Fields a class does not have are ignored, as diffusers ignores them; every value a class reads
//! and we do not implement is an error naming the field and the value.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer};
use std::path::Path;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<i64>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<String>,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Option<String>,
    pub timestep_spacing: Option<String>,
    pub steps_offset: Option<i64>,
    /// PNDM, DDIM.
    pub set_alpha_to_one: Option<bool>,
    /// PNDM: skip the Runge-Kutta warm-up (SD 1.5 sets it).
    pub skip_prk_steps: Option<bool>,
    /// DDIM, DDPM.
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f64>,
    /// Everything but PNDM.
    pub rescale_betas_zero_snr: Option<bool>,
    /// DDIM, DPM-Solver, DDPM: dynamic thresholding (pixel-space models); not implemented.
    pub thresholding: Option<bool>,
    pub dynamic_thresholding_ratio: Option<f64>,
    pub sample_max_value: Option<f64>,
    /// DPM-Solver.
    pub solver_order: Option<i64>,
    pub algorithm_type: Option<String>,
    pub solver_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    /// Euler, DPM-Solver.
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    pub use_flow_sigmas: Option<bool>,
    pub flow_shift: Option<f64>,
    pub use_dynamic_shifting: Option<bool>,
    pub final_sigmas_type: Option<String>,
    /// DPM-Solver. Python writes `-Infinity` (its default) as a bare token: see [`Self::from_json`].
    #[serde(default, deserialize_with = "float_or_infinity")]
    pub lambda_min_clipped: Option<f64>,
    /// DPM-Solver (and DDPM, where training does not use it).
    pub variance_type: Option<String>,
    /// Euler.
    pub interpolation_type: Option<String>,
    pub timestep_type: Option<String>,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
}

impl SchedulerConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("{}: not a valid scheduler config", path.display()))
    }

    /// Parses a config. Python's json module writes infinities and NaN as bare `Infinity`,
    /// `-Infinity`, `NaN` (DPM-Solver's `lambda_min_clipped` defaults to `-inf`, so every
    /// DPM-Solver config diffusers saves has one); they are quoted first, which strict JSON needs.
    pub fn from_json(text: &str) -> Result<Self> {
        Ok(serde_json::from_str(&quote_non_finite(text))?)
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

/// Which quantity the model predicts (`prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The noise (SD 1.x).
    Epsilon,
    /// v = alpha_t * noise - sigma_t * x0 (SD 2.x 768 px).
    VPrediction,
    /// The clean sample x0.
    Sample,
}

impl PredictionType {
    pub fn name(self) -> &'static str {
        match self {
            PredictionType::Epsilon => "epsilon",
            PredictionType::VPrediction => "v_prediction",
            PredictionType::Sample => "sample",
        }
    }
}

/// How inference timesteps are spread over the training ones (`timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// `beta_schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredcosCapV2,
}

/// One of `choices` by name, or an error naming `field`, the value, the class and the choices.
pub(crate) fn choose<T: Copy>(class: &str, field: &str, value: &str, choices: &[(&str, T)]) -> Result<T> {
    if let Some((_, v)) = choices.iter().find(|(name, _)| *name == value) {
        return Ok(*v);
    }
    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
    bail!("{field} {value:?} is not supported by {class} (supported: {})", names.join(", "))
}

/// The values every scheduler shares, with one class's defaults applied.
#[derive(Debug, Clone)]
pub(crate) struct Common {
    pub num_train_timesteps: i64,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: i64,
    pub rescale_betas_zero_snr: bool,
}

/// Per class: which prediction types it accepts, its default spacing, and whether it has
/// `rescale_betas_zero_snr` (PNDM does not: the field is ignored there, as in diffusers).
pub(crate) struct ClassInfo {
    pub name: &'static str,
    pub predictions: &'static [(&'static str, PredictionType)],
    pub default_spacing: TimestepSpacing,
    pub has_rescale: bool,
}

const EPS_V: &[(&str, PredictionType)] = &[("epsilon", PredictionType::Epsilon), ("v_prediction", PredictionType::VPrediction)];
const EPS_V_SAMPLE: &[(&str, PredictionType)] =
    &[("epsilon", PredictionType::Epsilon), ("v_prediction", PredictionType::VPrediction), ("sample", PredictionType::Sample)];
const EULER_PREDICTIONS: &[(&str, PredictionType)] = &[
    ("epsilon", PredictionType::Epsilon),
    ("v_prediction", PredictionType::VPrediction),
    ("sample", PredictionType::Sample),
    ("original_sample", PredictionType::Sample),
];

pub(crate) const PNDM: ClassInfo = ClassInfo { name: "PNDMScheduler", predictions: EPS_V, default_spacing: TimestepSpacing::Leading, has_rescale: false };
pub(crate) const DDIM: ClassInfo = ClassInfo { name: "DDIMScheduler", predictions: EPS_V_SAMPLE, default_spacing: TimestepSpacing::Leading, has_rescale: true };
pub(crate) const EULER: ClassInfo =
    ClassInfo { name: "EulerDiscreteScheduler", predictions: EULER_PREDICTIONS, default_spacing: TimestepSpacing::Linspace, has_rescale: true };
pub(crate) const EULER_ANCESTRAL: ClassInfo =
    ClassInfo { name: "EulerAncestralDiscreteScheduler", predictions: EPS_V, default_spacing: TimestepSpacing::Linspace, has_rescale: true };
pub(crate) const DPM: ClassInfo =
    ClassInfo { name: "DPMSolverMultistepScheduler", predictions: EPS_V_SAMPLE, default_spacing: TimestepSpacing::Linspace, has_rescale: true };
pub(crate) const DDPM: ClassInfo = ClassInfo { name: "DDPMScheduler", predictions: EPS_V_SAMPLE, default_spacing: TimestepSpacing::Leading, has_rescale: true };

impl SchedulerConfig {
    /// The shared values as `class` reads them (its defaults where the file has none).
    pub(crate) fn common(&self, class: &ClassInfo) -> Result<Common> {
        let name = class.name;
        let num_train_timesteps = self.num_train_timesteps.unwrap_or(1000);
        if !(1..=1_000_000).contains(&num_train_timesteps) {
            bail!("num_train_timesteps {num_train_timesteps} is out of range");
        }
        let beta_schedule = choose(
            name,
            "beta_schedule",
            self.beta_schedule.as_deref().unwrap_or("linear"),
            &[("linear", BetaSchedule::Linear), ("scaled_linear", BetaSchedule::ScaledLinear), ("squaredcos_cap_v2", BetaSchedule::SquaredcosCapV2)],
        )?;
        if let Some(b) = &self.trained_betas {
            if b.len() as i64 != num_train_timesteps {
                bail!("trained_betas has {} values but num_train_timesteps is {num_train_timesteps}", b.len());
            }
        }
        let prediction_type = choose(name, "prediction_type", self.prediction_type.as_deref().unwrap_or("epsilon"), class.predictions)?;
        let timestep_spacing = match &self.timestep_spacing {
            None => class.default_spacing,
            Some(s) => choose(
                name,
                "timestep_spacing",
                s,
                &[("leading", TimestepSpacing::Leading), ("trailing", TimestepSpacing::Trailing), ("linspace", TimestepSpacing::Linspace)],
            )?,
        };
        let steps_offset = self.steps_offset.unwrap_or(0);
        if !(0..num_train_timesteps).contains(&steps_offset) {
            bail!("steps_offset {steps_offset} is out of range");
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

    /// Rejects `thresholding: true` (dynamic thresholding is for pixel-space models).
    pub(crate) fn reject_thresholding(&self, class: &str) -> Result<()> {
        if self.thresholding == Some(true) {
            bail!("thresholding true is not supported by {class} (dynamic thresholding is for pixel-space models, not Stable Diffusion)");
        }
        Ok(())
    }

    /// Rejects the sigma schedules other than the interpolated and the Karras one.
    pub(crate) fn reject_other_sigmas(&self, class: &str, extra: &[(&str, Option<bool>)]) -> Result<()> {
        for (field, value) in [("use_exponential_sigmas", self.use_exponential_sigmas), ("use_beta_sigmas", self.use_beta_sigmas)].iter().chain(extra) {
            if *value == Some(true) {
                bail!("{field} true is not supported by {class} (use_karras_sigmas is)");
            }
        }
        Ok(())
    }
}
