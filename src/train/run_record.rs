//! `run.json`: what a training run was trained on and with, written into its output folder
//! before the first step, so that `evaluate --run` can take the model, the reference images, the
//! learnable property and the size from the run instead of asking for them again. Checkpoints
//! store only the run's position (`state.json`), not its flags: this is the one record.
use super::config::TrainConfig;
use super::dataset::LearnableProperty;
use crate::formats::atomic;
use crate::schedulers::PredictionType;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record's name in the output folder.
pub const RUN_RECORD: &str = "run.json";

/// The record's largest accepted size: it holds a few paths.
const MAX_BYTES: u64 = 1 << 20;

/// What `run.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// `--pretrained_model_name_or_path` as given; a local path made absolute, so that the
    /// record holds from any working folder.
    pub pretrained_model_name_or_path: String,
    pub revision: Option<String>,
    pub variant: Option<String>,
    /// `--config` (a single-file checkpoint's configs).
    pub config: Option<String>,
    /// `--prediction_type` as its flag value (`epsilon`, `v_prediction`, `sample`).
    pub prediction_type: Option<String>,
    /// The folder the images were read from (a Hub dataset's local snapshot), absolute.
    pub train_data_dir: PathBuf,
    /// `object` or `style`.
    pub learnable_property: String,
    pub placeholder_token: String,
    /// Vectors per token (0: as many as the initializer gives).
    pub num_vectors: usize,
    pub resolution: u32,
    /// `sd` (SD 1.x/2.x, one text encoder) or `sdxl` (two).
    pub family: String,
}

/// A local path made absolute; anything else (a Hub id) as it is.
fn absolute(given: &str) -> String {
    let p = Path::new(given);
    if p.exists() {
        if let Ok(a) = std::path::absolute(p) {
            return a.display().to_string();
        }
    }
    given.to_string()
}

impl RunRecord {
    /// The record of the run `cfg` on images in `data_dir` (resolved), of an SDXL model or not.
    pub fn new(cfg: &TrainConfig, data_dir: &Path, xl: bool) -> Self {
        use clap::ValueEnum;
        let value = |p: &PredictionType| p.to_possible_value().map(|v| v.get_name().to_string());
        RunRecord {
            pretrained_model_name_or_path: absolute(&cfg.model.name_or_path),
            revision: cfg.model.revision.clone(),
            variant: cfg.variant.clone(),
            config: cfg.model.config.as_deref().map(absolute),
            prediction_type: cfg.model.prediction_type.as_ref().and_then(value),
            train_data_dir: std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf()),
            learnable_property: match cfg.data.property {
                LearnableProperty::Object => "object",
                LearnableProperty::Style => "style",
            }
            .to_string(),
            placeholder_token: cfg.placeholder_token.clone(),
            num_vectors: cfg.num_vectors,
            resolution: cfg.data.resolution,
            family: if xl { "sdxl" } else { "sd" }.to_string(),
        }
    }

    /// Writes it into `output_dir` (atomically).
    pub fn write(&self, output_dir: &Path) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        let path = output_dir.join(RUN_RECORD);
        atomic::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))
    }

    /// The record of the run folder `run`; None when it has none (a run of an earlier version,
    /// or files gathered by hand). A record that is there but unreadable is an error.
    pub fn read(run: &Path) -> Result<Option<Self>> {
        let path = run.join(RUN_RECORD);
        match std::fs::symlink_metadata(&path) {
            Err(_) => return Ok(None),
            Ok(m) if !m.file_type().is_file() => bail!("{} is not a regular file", path.display()),
            Ok(_) => {}
        }
        let text = crate::formats::regular::read_to_string(&path, MAX_BYTES).with_context(|| format!("reading {}", path.display()))?;
        let record: RunRecord =
            serde_json::from_str(&text).with_context(|| format!("{}: not a run record (expected the JSON `train` writes there)", path.display()))?;
        if !matches!(record.family.as_str(), "sd" | "sdxl") {
            bail!("{}: family {:?}, expected \"sd\" or \"sdxl\"", path.display(), record.family);
        }
        Ok(Some(record))
    }

    /// `--prediction_type` back from its flag value.
    pub fn prediction(&self) -> Result<Option<PredictionType>> {
        use clap::ValueEnum;
        self.prediction_type
            .as_deref()
            .map(|s| {
                PredictionType::from_str(s, false).map_err(|_| anyhow::anyhow!("{RUN_RECORD}: prediction_type {s:?} is none of epsilon, v_prediction, sample"))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_wrote_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RunRecord::read(dir.path()).unwrap(), None);
        let r = RunRecord {
            pretrained_model_name_or_path: "org/model".into(),
            revision: Some("main".into()),
            variant: None,
            config: None,
            prediction_type: Some("v_prediction".into()),
            train_data_dir: "/data".into(),
            learnable_property: "style".into(),
            placeholder_token: "<x>".into(),
            num_vectors: 2,
            resolution: 768,
            family: "sdxl".into(),
        };
        r.write(dir.path()).unwrap();
        assert_eq!(RunRecord::read(dir.path()).unwrap(), Some(r.clone()));
        assert_eq!(r.prediction().unwrap(), Some(PredictionType::VPrediction));
        std::fs::write(dir.path().join(RUN_RECORD), "{}").unwrap();
        let e = RunRecord::read(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("not a run record"), "{e:#}");
    }
}
