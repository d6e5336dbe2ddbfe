//! What a training run is asked to do, typed. `cli/train.rs` builds a [`TrainConfig`] once from
//! the script's flags; the trainer never sees clap. [`TrainConfig::check`] refuses what the
//! script would refuse (its error texts, naming the flags users typed) before anything loads.
use super::dataset::{ImageOrder, LearnableProperty};
use super::lr_schedule::LrScheduleKind;
use super::metrics::ReportTo;
use crate::device::Precision;
use crate::models::repo::ModelSource;
use anyhow::{bail, Result};
use std::path::PathBuf;

/// One training run.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub model: ModelSource,
    /// `--variant`: the UNet's and VAE's weight files (the text encoder trains from its plain
    /// weights, as in the script).
    pub variant: Option<String>,
    /// `--tokenizer_name`: a tokenizer folder instead of the model's.
    pub tokenizer_dir: Option<PathBuf>,
    pub data: DataConfig,
    /// The new token (`P`; with `num_vectors > 1` also `P_1, ...`), the key in the saved files.
    pub placeholder_token: String,
    /// One token whose embedding starts every new vector.
    pub initializer_token: String,
    pub num_vectors: usize,
    pub optim: OptimConfig,
    /// The UNet's and VAE's precision (`--mixed_precision`); the embeddings train in fp32.
    pub precision: Precision,
    pub device: tch::Device,
    /// TF32 matmuls on Ampere and later GPUs (`--allow_tf32`).
    pub allow_tf32: bool,
    /// None: a seed from the clock (logged).
    pub seed: Option<u64>,
    /// Encode each (image, flip) once and draw from its posterior every step (ours; the script
    /// encodes every step).
    pub cache_latents: bool,
    /// Recompute the UNet block by block in the backward pass instead of keeping its
    /// activations (`--gradient_checkpointing`).
    pub gradient_checkpointing: bool,
    pub output: OutputConfig,
    pub validation: Option<ValidationConfig>,
}

/// The images and the captions (`TextualInversionDataset`'s arguments).
#[derive(Debug, Clone)]
pub struct DataConfig {
    pub dir: PathBuf,
    pub order: ImageOrder,
    /// Square size images are resized to.
    pub resolution: u32,
    pub center_crop: bool,
    /// Dataset length = images x repeats.
    pub repeats: usize,
    pub property: LearnableProperty,
}

/// Batches, steps, AdamW and the LR schedule.
#[derive(Debug, Clone)]
pub struct OptimConfig {
    pub batch_size: usize,
    pub gradient_accumulation_steps: u64,
    /// Total optimizer updates.
    pub max_train_steps: u64,
    pub learning_rate: f64,
    /// LR x accumulation x batch size (one process).
    pub scale_lr: bool,
    pub lr_schedule: LrScheduleKind,
    pub lr_warmup_steps: i64,
    pub lr_num_cycles: i64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_weight_decay: f64,
    pub adam_epsilon: f64,
}

impl OptimConfig {
    /// The learning rate AdamW starts from: `--learning_rate`, scaled by `--scale_lr`.
    pub fn base_lr(&self) -> f64 {
        if self.scale_lr {
            self.learning_rate * (self.gradient_accumulation_steps * self.batch_size as u64) as f64
        } else {
            self.learning_rate
        }
    }
}

/// The file layout of the learned embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingFormat {
    /// `learned_embeds.safetensors` (the default).
    Safetensors,
    /// `learned_embeds.bin`, a `torch.save` dict (`--no_safe_serialization`).
    Bin,
}

impl EmbeddingFormat {
    pub fn extension(self) -> &'static str {
        match self {
            EmbeddingFormat::Safetensors => "safetensors",
            EmbeddingFormat::Bin => "bin",
        }
    }
}

/// What goes to `output_dir`, and when.
#[derive(Debug, Clone)]
pub struct OutputConfig {
    pub dir: PathBuf,
    /// TensorBoard folder under `dir` (or absolute).
    pub logging_dir: String,
    pub report_to: ReportTo,
    pub embedding_format: EmbeddingFormat,
    /// `learned_embeds-steps-N` every this many updates.
    pub save_steps: u64,
    /// `checkpoint-N` every this many updates.
    pub checkpointing_steps: u64,
    pub checkpoints_total_limit: Option<usize>,
    /// A checkpoint folder name in `dir`, or `latest`.
    pub resume_from_checkpoint: Option<String>,
    /// Also make `dir` a diffusers model folder with the new tokens.
    pub save_as_full_pipeline: bool,
    /// Where to write the run's timings and peak device memory as JSON (`--stats_json`).
    pub stats_json: Option<PathBuf>,
}

/// `--validation_prompt` and how often.
#[derive(Debug, Clone)]
pub struct ValidationConfig {
    pub prompt: String,
    pub num_images: usize,
    pub every: ValidationEvery,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationEvery {
    /// `--validation_steps`.
    Steps(u64),
    /// The deprecated `--validation_epochs`: the script turns it into `epochs x dataset
    /// length` steps.
    Epochs(u64),
}

impl ValidationEvery {
    /// Updates between validations, for a dataset of `len` items.
    pub fn steps(self, len: usize) -> u64 {
        match self {
            ValidationEvery::Steps(s) => s,
            ValidationEvery::Epochs(e) => {
                tracing::warn!("--validation_epochs is deprecated; using validation_steps = {} (epochs x dataset length, as the script)", e * len as u64);
                e * len as u64
            }
        }
    }
}

impl TrainConfig {
    /// What the script (or its arithmetic) would refuse, before any file is read.
    pub fn check(&self) -> Result<()> {
        if self.num_vectors < 1 {
            bail!("--num_vectors has to be larger or equal to 1, but is {}", self.num_vectors);
        }
        let optim = &self.optim;
        if optim.batch_size == 0 || optim.gradient_accumulation_steps == 0 || optim.max_train_steps == 0 {
            bail!("--train_batch_size, --gradient_accumulation_steps and --max_train_steps must be at least 1");
        }
        // The script computes `global_step % save_steps` (and checkpointing_steps,
        // validation_steps): 0 is a ZeroDivisionError there, not "every step".
        for (flag, v) in [("--save_steps", self.output.save_steps), ("--checkpointing_steps", self.output.checkpointing_steps)] {
            if v == 0 {
                bail!("{flag} must be at least 1 (it is the number of updates between saves), got 0");
            }
        }
        match self.validation.as_ref().map(|v| v.every) {
            Some(ValidationEvery::Epochs(0)) => bail!("--validation_epochs must be at least 1 when --validation_prompt is given, got 0"),
            Some(ValidationEvery::Steps(0)) => bail!("--validation_steps must be at least 1 when --validation_prompt is given, got 0"),
            _ => {}
        }
        let r = self.data.resolution;
        if r == 0 || r % 8 != 0 {
            bail!("--resolution must be a positive multiple of 8, got {r}");
        }
        Ok(())
    }
}
