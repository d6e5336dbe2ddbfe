//! A prediction type that replaces the scheduler config's, and where it comes from: the
//! `--prediction_type` flag, or what a single-file checkpoint says of itself. Kept apart from
//! both so that the file layer (`single_file`) and the model as a whole (`repo`) share it
//! without depending on each other.
use crate::schedulers::PredictionType;
use std::fmt;
use std::path::PathBuf;

/// Where an overriding prediction type comes from, strongest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PredictionSource {
    /// `--prediction_type`.
    Flag,
    /// The safetensors metadata `modelspec.prediction_type`.
    Modelspec,
    /// A `parameterization:` line (or its absence) in the `.yaml` beside the checkpoint.
    Yaml(PathBuf),
    /// kohya's `v_pred` marker tensor.
    VPredKey,
    /// SD 2's 512-px base model (`global_step` 875000), which diffusers reads as epsilon.
    Sd2BaseStep,
}

impl fmt::Display for PredictionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PredictionSource::Flag => f.write_str("--prediction_type"),
            PredictionSource::Modelspec => f.write_str("the file's modelspec.prediction_type"),
            PredictionSource::Yaml(path) => write!(f, "{}", path.display()),
            PredictionSource::VPredKey => f.write_str("the file's v_pred key"),
            PredictionSource::Sd2BaseStep => f.write_str("global_step 875000: SD 2 base, as diffusers decides"),
        }
    }
}

/// The prediction type the scheduler config is read with instead of its own, and why (for
/// the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredictionOverride {
    pub value: PredictionType,
    pub source: PredictionSource,
}

impl PredictionOverride {
    /// `--prediction_type VALUE`.
    pub fn flag(value: PredictionType) -> Self {
        PredictionOverride { value, source: PredictionSource::Flag }
    }
}
