//! `textual-inversion train`: every flag of diffusers' `examples/textual_inversion/
//! textual_inversion.py`, same names (kebab-case accepted too), same defaults, same meaning.
use crate::train::dataset::LearnableProperty;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Save learned_embeds-steps-N every N optimizer updates.
    #[arg(long = "save_steps", alias = "save-steps", default_value_t = 500)]
    pub save_steps: u64,
    /// Also save a full diffusers pipeline (extended tokenizer and text encoder) in output_dir.
    #[arg(long = "save_as_full_pipeline", alias = "save-as-full-pipeline")]
    pub save_as_full_pipeline: bool,
    /// Vectors learned for the concept (tokens P, P_1, ..., P_{n-1}).
    #[arg(long = "num_vectors", alias = "num-vectors", default_value_t = 1)]
    pub num_vectors: i64,
    /// Model folder or Hub id.
    #[arg(long = "pretrained_model_name_or_path", alias = "pretrained-model-name-or-path")]
    pub pretrained_model_name_or_path: String,
    #[arg(long)]
    pub revision: Option<String>,
    /// Weight-file variant of the UNet and VAE (e.g. fp16).
    #[arg(long)]
    pub variant: Option<String>,
    /// Tokenizer folder instead of <model>/tokenizer.
    #[arg(long = "tokenizer_name", alias = "tokenizer-name")]
    pub tokenizer_name: Option<PathBuf>,
    /// Folder of training images.
    #[arg(long = "train_data_dir", alias = "train-data-dir")]
    pub train_data_dir: PathBuf,
    /// The new token, e.g. <cat-toy>; also the key in the saved file.
    #[arg(long = "placeholder_token", alias = "placeholder-token")]
    pub placeholder_token: String,
    /// A word (one token) whose embedding starts every new vector.
    #[arg(long = "initializer_token", alias = "initializer-token")]
    pub initializer_token: String,
    /// object or style (which caption templates).
    #[arg(long = "learnable_property", alias = "learnable-property", default_value = "object")]
    pub learnable_property: String,
    /// Dataset length = images x repeats.
    #[arg(long, default_value_t = 100)]
    pub repeats: usize,
    #[arg(long = "output_dir", alias = "output-dir", default_value = "text-inversion-model")]
    pub output_dir: PathBuf,
    /// Seed for every random draw (and validation images). Random (and logged) if not given.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Training images are resized to this square size.
    #[arg(long, default_value_t = 512)]
    pub resolution: u32,
    /// Crop the largest centred square before resizing (else the image is stretched).
    #[arg(long = "center_crop", alias = "center-crop")]
    pub center_crop: bool,
    #[arg(long = "train_batch_size", alias = "train-batch-size", default_value_t = 16)]
    pub train_batch_size: usize,
    /// Recomputed from max_train_steps, as in the script.
    #[arg(long = "num_train_epochs", alias = "num-train-epochs", default_value_t = 100)]
    pub num_train_epochs: u64,
    /// Total optimizer updates.
    #[arg(long = "max_train_steps", alias = "max-train-steps", default_value_t = 5000)]
    pub max_train_steps: u64,
    #[arg(long = "gradient_accumulation_steps", alias = "gradient-accumulation-steps", default_value_t = 1)]
    pub gradient_accumulation_steps: u64,
    /// Accepted for compatibility; has no effect (see README).
    #[arg(long = "gradient_checkpointing", alias = "gradient-checkpointing")]
    pub gradient_checkpointing: bool,
    #[arg(long = "learning_rate", alias = "learning-rate", default_value_t = 1e-4)]
    pub learning_rate: f64,
    /// LR x gradient_accumulation_steps x train_batch_size x processes.
    #[arg(long = "scale_lr", alias = "scale-lr")]
    pub scale_lr: bool,
    /// constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial.
    #[arg(long = "lr_scheduler", alias = "lr-scheduler", default_value = "constant")]
    pub lr_scheduler: String,
    #[arg(long = "lr_warmup_steps", alias = "lr-warmup-steps", default_value_t = 500)]
    pub lr_warmup_steps: i64,
    #[arg(long = "lr_num_cycles", alias = "lr-num-cycles", default_value_t = 1)]
    pub lr_num_cycles: i64,
    /// Accepted for compatibility: images are decoded once, before training.
    #[arg(long = "dataloader_num_workers", alias = "dataloader-num-workers", default_value_t = 0)]
    pub dataloader_num_workers: usize,
    #[arg(long = "adam_beta1", alias = "adam-beta1", default_value_t = 0.9)]
    pub adam_beta1: f64,
    #[arg(long = "adam_beta2", alias = "adam-beta2", default_value_t = 0.999)]
    pub adam_beta2: f64,
    #[arg(long = "adam_weight_decay", alias = "adam-weight-decay", default_value_t = 1e-2)]
    pub adam_weight_decay: f64,
    #[arg(long = "adam_epsilon", alias = "adam-epsilon", default_value_t = 1e-8)]
    pub adam_epsilon: f64,
    /// Not available: this tool does not upload (see the message).
    #[arg(long = "push_to_hub", alias = "push-to-hub")]
    pub push_to_hub: bool,
    #[arg(long = "hub_token", alias = "hub-token")]
    pub hub_token: Option<String>,
    #[arg(long = "hub_model_id", alias = "hub-model-id")]
    pub hub_model_id: Option<String>,
    /// TensorBoard folder under output_dir.
    #[arg(long = "logging_dir", alias = "logging-dir", default_value = "logs")]
    pub logging_dir: String,
    /// no, fp16 or bf16: the UNet and VAE run in this precision; the embeddings train in fp32.
    #[arg(long = "mixed_precision", alias = "mixed-precision", default_value = "no", value_parser = ["no", "fp16", "bf16"])]
    pub mixed_precision: String,
    /// TF32 matmuls on Ampere+ GPUs.
    #[arg(long = "allow_tf32", alias = "allow-tf32")]
    pub allow_tf32: bool,
    /// tensorboard or none (wandb and comet_ml are not available).
    #[arg(long = "report_to", alias = "report-to", default_value = "tensorboard")]
    pub report_to: String,
    #[arg(long = "validation_prompt", alias = "validation-prompt")]
    pub validation_prompt: Option<String>,
    #[arg(long = "num_validation_images", alias = "num-validation-images", default_value_t = 4)]
    pub num_validation_images: usize,
    #[arg(long = "validation_steps", alias = "validation-steps", default_value_t = 100)]
    pub validation_steps: u64,
    /// Deprecated: validation_steps = validation_epochs x dataset length, as the script does.
    #[arg(long = "validation_epochs", alias = "validation-epochs")]
    pub validation_epochs: Option<u64>,
    /// Accepted for compatibility (single process).
    #[arg(long = "local_rank", alias = "local-rank", default_value_t = -1)]
    pub local_rank: i64,
    /// Save the full training state as checkpoint-N every N updates.
    #[arg(long = "checkpointing_steps", alias = "checkpointing-steps", default_value_t = 500)]
    pub checkpointing_steps: u64,
    #[arg(long = "checkpoints_total_limit", alias = "checkpoints-total-limit")]
    pub checkpoints_total_limit: Option<usize>,
    /// A checkpoint folder name in output_dir, or latest.
    #[arg(long = "resume_from_checkpoint", alias = "resume-from-checkpoint")]
    pub resume_from_checkpoint: Option<String>,
    /// Accepted for compatibility: attention already uses scaled_dot_product_attention.
    #[arg(long = "enable_xformers_memory_efficient_attention", alias = "enable-xformers-memory-efficient-attention")]
    pub enable_xformers_memory_efficient_attention: bool,
    /// Write .bin (torch.save) instead of .safetensors embeddings.
    #[arg(long = "no_safe_serialization", alias = "no-safe-serialization")]
    pub no_safe_serialization: bool,

    // Beyond the script.
    /// cpu, cuda, cuda:N, mps.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Encode every image with the VAE at each step, as the script does, instead of once.
    #[arg(long = "no_cache_latents", alias = "no-cache-latents")]
    pub no_cache_latents: bool,
    /// Take the images sorted by file name instead of in the folder's directory order (the
    /// script's os.listdir order, which depends on the file system): the same on every machine.
    #[arg(long = "sort_images", alias = "sort-images")]
    pub sort_images: bool,
}

impl TrainArgs {
    pub fn learnable_property(&self) -> LearnableProperty {
        // The script treats anything but "style" as object.
        if self.learnable_property == "style" {
            LearnableProperty::Style
        } else {
            LearnableProperty::Object
        }
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    crate::train::trainer::train(&args).map(|_| ())
}
