//! A model as the loaders read it: where its files come from ([`ModelFiles`]: a local folder
//! or a Hub id), how they are laid out ([`Layout`]: a diffusers folder, or one original-layout
//! checkpoint read with a config folder's configs and tokenizers) and the prediction type that
//! replaces the scheduler config's, if any. [`ModelSource`] holds the flags that name a model;
//! [`ModelSource::resolve`] makes the one value every loader takes.
use super::component::Component;
use super::files::{HubOptions, ModelFiles};
use super::prediction::PredictionOverride;
use super::single_file::{defaults, Arch, SingleFile};
use super::weights::{Placement, Weights};
use crate::schedulers::PredictionType;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// `--pretrained_model_name_or_path` and `--revision`: where a model comes from.
#[derive(Debug, Clone, Default)]
pub struct ModelSource {
    pub name_or_path: String,
    pub revision: Option<String>,
    /// `--config`: for a single-file checkpoint, the diffusers folder (or Hub id) whose configs
    /// and tokenizers it is read with (default: the bundled ones for its type).
    pub config: Option<String>,
    /// `--prediction_type`: overrides the scheduler config's (and a single file's own).
    pub prediction_type: Option<PredictionType>,
}

impl ModelSource {
    pub fn new(name_or_path: impl Into<String>) -> Self {
        ModelSource { name_or_path: name_or_path.into(), ..Default::default() }
    }

    /// Resolves it with the Hub settings of the environment: a file is a single-file
    /// checkpoint, a folder or Hub id a diffusers model.
    pub fn resolve(&self) -> Result<ModelRepo> {
        let hub = HubOptions::from_env();
        let path = Path::new(&self.name_or_path);
        let flag = self.prediction_type.map(PredictionOverride::flag);
        if path.is_file() {
            let file = SingleFile::open(path)?;
            let files = match &self.config {
                Some(c) => ModelFiles::resolve(c, None, &hub).with_context(|| format!("--config {c}"))?,
                None => {
                    let dir = defaults::folder(file.arch)?;
                    tracing::info!(
                        "{}: {} checkpoint, read with the bundled configs of {} (give --config DIR for another)",
                        path.display(),
                        file.arch.name(),
                        defaults::source(file.arch)
                    );
                    ModelFiles::Local(dir)
                }
            };
            let prediction_type = flag.or_else(|| file.own_prediction_type());
            if let Some(p) = &prediction_type {
                tracing::info!("prediction type {} ({})", p.value.name(), p.source);
            }
            return Ok(ModelRepo { files, layout: Layout::SingleFile(Box::new(file)), prediction_type });
        }
        if self.config.is_some() {
            bail!("--config is for single-file checkpoints; {} is not a file", self.name_or_path);
        }
        let files = ModelFiles::resolve(&self.name_or_path, self.revision.as_deref(), &hub)?;
        Ok(ModelRepo { files, layout: Layout::Diffusers, prediction_type: flag })
    }
}

/// How a model's weights are stored.
pub enum Layout {
    /// Each component's weights in its subfolder, as `save_pretrained` writes them.
    Diffusers,
    /// Every tensor in one original-layout checkpoint; configs and tokenizers from the files.
    SingleFile(Box<SingleFile>),
}

/// A resolved model: the one value `generate`, `train` and `convert-model` load from.
pub struct ModelRepo {
    /// Configs, tokenizers and (for [`Layout::Diffusers`]) weights.
    pub files: ModelFiles,
    pub layout: Layout,
    /// Replaces the scheduler config's `prediction_type` (`--prediction_type`, or what a
    /// single file says of itself).
    pub prediction_type: Option<PredictionOverride>,
}

impl ModelRepo {
    /// A diffusers model: an existing folder, else a Hub id; nothing overridden.
    pub fn resolve(name: &str, revision: Option<&str>, hub: &HubOptions) -> Result<Self> {
        Ok(Self::diffusers(ModelFiles::resolve(name, revision, hub)?))
    }

    /// A diffusers folder on disk; nothing overridden.
    pub fn local(folder: impl Into<PathBuf>) -> Self {
        Self::diffusers(ModelFiles::Local(folder.into()))
    }

    fn diffusers(files: ModelFiles) -> Self {
        ModelRepo { files, layout: Layout::Diffusers, prediction_type: None }
    }

    /// Human-readable name for messages.
    pub fn describe(&self) -> String {
        match &self.layout {
            Layout::Diffusers => self.files.describe(),
            Layout::SingleFile(f) => format!("{} (configs from {})", f.path.display(), self.files.describe()),
        }
    }

    /// The single-file checkpoint this is, if it is one.
    pub fn single_file(&self) -> Option<&SingleFile> {
        match &self.layout {
            Layout::SingleFile(f) => Some(f),
            Layout::Diffusers => None,
        }
    }

    /// The model's own folder on disk, if it has one: a local diffusers folder or a Hub
    /// snapshot (a single file's config folder is not its own).
    pub fn model_folder(&self) -> Option<&Path> {
        match self.layout {
            Layout::Diffusers => self.files.local_folder(),
            Layout::SingleFile(_) => None,
        }
    }

    /// The local path of `file` (e.g. `unet/config.json`); see [`ModelFiles::get`].
    pub fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        self.files.get(file)
    }

    /// Like [`ModelRepo::get`], but the file must exist.
    pub fn require(&self, file: &str) -> Result<PathBuf> {
        match self.get(file)? {
            Some(p) => Ok(p),
            None => bail!("{} has no {file}{}", self.describe(), self.files.offline_hint()),
        }
    }

    /// A diffusers folder's weight files of `component` ([`ModelFiles::find_weight_files`]);
    /// a single file has none apart from itself.
    pub fn find_weight_files(&self, component: &str, variant: Option<&str>, use_safetensors: Option<bool>) -> Result<Result<Vec<PathBuf>, Vec<String>>> {
        match &self.layout {
            Layout::Diffusers => self.files.find_weight_files(component, variant, use_safetensors),
            Layout::SingleFile(f) => Ok(Err(vec![format!("{component}/ (a single-file checkpoint: its tensors are all in {})", f.path.display())])),
        }
    }

    /// The weight files of a component, chosen as diffusers does: the variant's files when a
    /// variant is asked for (an error if it has none), safetensors before `.bin` unless
    /// `use_safetensors` says otherwise, a sharded checkpoint's index expanded to its shards.
    pub fn weight_files(&self, component: &str, variant: Option<&str>, use_safetensors: Option<bool>) -> Result<Vec<PathBuf>> {
        match self.find_weight_files(component, variant, use_safetensors)? {
            Ok(files) => Ok(files),
            Err(tried) => bail!(
                "{} has no weights for {component}{} (looked for {}){}",
                self.describe(),
                variant.map(|v| format!(" in variant {v}")).unwrap_or_default(),
                tried.join(", "),
                self.files.offline_hint()
            ),
        }
    }

    /// A single file's `component` under diffusers' names, laid out by the config folder's
    /// `component/config.json`; `None` for a diffusers folder.
    pub fn single_file_weights(&self, component: Component, placement: Placement) -> Result<Option<Weights>> {
        let Some(file) = self.single_file() else { return Ok(None) };
        let config = self.require(&component.config_path())?;
        file.weights(component, &config, placement).map(Some)
    }

    /// Fails when the configs' pipeline is not a single file's own (an SDXL checkpoint read with
    /// SD configs, or the reverse); a diffusers folder always passes.
    pub fn check_pipeline(&self, is_xl: bool) -> Result<()> {
        let Some(file) = self.single_file() else { return Ok(()) };
        if is_xl != (file.arch == Arch::Xl) {
            let pipeline = if is_xl { "StableDiffusionXLPipeline" } else { "StableDiffusionPipeline" };
            bail!("{} is a {} checkpoint but its configs ({}) are a {pipeline}", file.path.display(), file.arch.name(), self.files.describe());
        }
        Ok(())
    }
}
