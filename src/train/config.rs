//! What a training run is asked to do, typed. `cli/train.rs` builds a [`TrainConfig`] once from
//! the script's flags; the trainer never sees clap. [`TrainConfig::check`] refuses what the
//! script would refuse (its error texts, naming the flags users typed) before anything loads.
use super::dataset::masks::MaskSource;
use super::dataset::{BucketConfig, ImageOrder, LearnableProperty};
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
    /// Where the new vectors start (the script's one initializer token, or ours).
    pub init: InitFrom,
    /// Vectors per token; 0: as many as `init` gives (an embedding's count, the text's tokens),
    /// else 1.
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
    /// Captions from files beside the images, A1111-style template files, tag shuffling.
    pub captions: CaptionConfig,
    /// The loss and what shapes it (kohya's and diffusers' other scripts' controls).
    pub loss: LossConfig,
    /// `--eval_loss_steps` (and `--early_stopping`): DVAR's fixed-batch evaluation loss.
    pub eval_loss: Option<super::eval_loss::EvalLossConfig>,
}

/// Where the new vectors start.
#[derive(Debug, Clone, PartialEq)]
pub enum InitFrom {
    /// `--initializer_token`: one token's row copied into every vector (the script's rule).
    Token(String),
    /// `--initializer_text`: its tokens' rows, cycled over the vectors (kohya's rule: vector i
    /// takes token i mod count; tokens beyond the vector count are dropped, with a warning).
    Text(String),
    /// `--initial_embedding`: the vectors of an embedding file (any format `inspect` reads).
    Embedding(PathBuf),
}

/// Beyond the script's object/style templates.
#[derive(Debug, Clone, Default)]
pub struct CaptionConfig {
    /// `--caption_extension .txt`: each image's caption from `NAME.txt` beside it; `{}` or
    /// `[name]` marks where the placeholder goes, else it is prepended.
    pub extension: Option<String>,
    /// `--template_file F`: A1111-style lines with `[name]` (the placeholder) and `[filewords]`
    /// (the image's caption, or words of its file name).
    pub template_file: Option<PathBuf>,
    /// Shuffle the caption's comma-separated tags for every item (A1111's `shuffle_tags`).
    pub shuffle_tags: bool,
    /// Drop each tag with this probability (A1111's `tag_drop_out`).
    pub tag_dropout: f64,
}

impl CaptionConfig {
    pub fn is_plain(&self) -> bool {
        self.extension.is_none() && self.template_file.is_none()
    }
}

/// kohya's loss types; `L2` with no weighting is the script's `F.mse_loss(..., "mean")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LossKind {
    #[default]
    L2,
    /// `2c (sqrt((p - t)² + c²) - c)`: quadratic near 0, linear beyond c.
    Huber,
    /// `2 (sqrt((p - t)² + c²) - c)`.
    #[value(name = "smooth_l1", alias = "smooth-l1")]
    SmoothL1,
}

/// How huber/smooth_l1's c depends on the timestep (kohya's `--huber_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HuberSchedule {
    Constant,
    /// `exp(-t ln(1/c) / T) x scale`.
    Exponential,
    /// `(1 - c) / (1 + sigma_t)² + c`, sigma_t = sqrt((1 - a_t) / a_t) (kohya's default).
    #[default]
    Snr,
}

#[derive(Debug, Clone, Default)]
pub struct LossConfig {
    pub kind: LossKind,
    pub huber_c: f64,
    pub huber_schedule: HuberSchedule,
    pub huber_scale: f64,
    /// Min-SNR weighting (`--snr_gamma`), as diffusers' training scripts: per sample
    /// `min(snr, gamma) / snr` (epsilon) or `/ (snr + 1)` (v_prediction).
    pub snr_gamma: Option<f64>,
    /// `--noise_offset`: `noise += offset * randn(B, C, 1, 1)`, drawn after the noise.
    pub noise_offset: f64,
    /// `--max_grad_norm`: clip the new rows' gradient norm (all encoders together).
    pub max_grad_norm: Option<f64>,
    /// `--unmasked_weight` (OneTrainer's): masks are clamped to at least this.
    pub unmasked_weight: f64,
    /// `--normalize_masked_area_loss` (OneTrainer's): each image's masked loss divided by its
    /// mask's mean.
    pub normalize_masked_area_loss: bool,
}

impl LossConfig {
    /// The script's loss, untouched.
    pub fn is_plain_mse(&self) -> bool {
        self.kind == LossKind::L2 && self.snr_gamma.is_none()
    }
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
    /// `--alpha_mask`/`--mask_dir`: weight the loss by a mask per image.
    pub mask: Option<MaskSource>,
    /// `--enable_bucket` and its flags: kohya's aspect-ratio buckets instead of the square.
    pub buckets: Option<BucketConfig>,
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
    /// `--save_format`: also write the web UI's `.pt` / kohya's `emb_params` file, named after
    /// the trigger word.
    pub extra_formats: Vec<SaveFormat>,
    /// `--push_to_hub`: upload `dir` at the end ([`super::push`]).
    pub push: Option<super::push::PushConfig>,
}

/// `--save_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaveFormat {
    /// The script's files only.
    Diffusers,
    /// The A1111 web UI's `.pt` (`string_to_param`, `name`, `step`); SDXL: `{clip_l, clip_g}`.
    A1111,
    /// kohya-ss's `{"emb_params": [n, D]}` safetensors; SDXL: `{clip_l, clip_g}`.
    Kohya,
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
        if let Some(b) = &self.data.buckets {
            if b.resolution != r {
                bail!("the bucket settings are for --resolution {}, the run's is {r}", b.resolution);
            }
            if self.data.center_crop {
                bail!("--center_crop and --enable_bucket: with buckets every image is cut to its bucket (centred, or drawn with --random_crop); leave out --center_crop");
            }
            b.check()?;
        }
        let c = &self.captions;
        if !(0.0..1.0).contains(&c.tag_dropout) {
            bail!("--tag_dropout must be in [0, 1), got {}", c.tag_dropout);
        }
        if let Some(ext) = &c.extension {
            if ext.is_empty() || ext.contains('/') {
                bail!("--caption_extension must be a file extension such as .txt, got {ext:?}");
            }
        }
        let l = &self.loss;
        if l.kind != LossKind::L2 && !(l.huber_c > 0.0 && l.huber_c <= 1.0) {
            bail!("--huber_c must be in (0, 1], got {}", l.huber_c);
        }
        if l.snr_gamma.is_some_and(|g| g.is_nan() || g <= 0.0) {
            bail!("--snr_gamma must be positive");
        }
        if !(0.0..=1.0).contains(&l.unmasked_weight) {
            bail!("--unmasked_weight must be in [0, 1], got {}", l.unmasked_weight);
        }
        if self.data.mask.is_none() && (l.unmasked_weight > 0.0 || l.normalize_masked_area_loss) {
            bail!("--unmasked_weight and --normalize_masked_area_loss weigh a mask: give --alpha_mask or --mask_dir");
        }
        if l.max_grad_norm.is_some_and(|n| n.is_nan() || n <= 0.0) {
            bail!("--max_grad_norm must be positive");
        }
        if !l.noise_offset.is_finite() || l.noise_offset < 0.0 {
            bail!("--noise_offset must be a non-negative number, got {}", l.noise_offset);
        }
        if let Some(rule) = self.eval_loss.as_ref().and_then(|e| e.early_stopping) {
            if rule.window < 2 {
                bail!("--early_stopping_window must be at least 2 (evaluations whose variance is compared), got {}", rule.window);
            }
            if !(rule.threshold > 0.0 && rule.threshold <= 1.0) {
                bail!("--early_stopping_threshold must be in (0, 1], got {}", rule.threshold);
            }
        }
        Ok(())
    }
}
