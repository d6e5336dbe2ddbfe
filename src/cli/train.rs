//! `textual-inversion train`: every flag of diffusers' `examples/textual_inversion/
//! textual_inversion.py`, same names (kebab-case accepted too), same defaults, same meaning.
//! The flags become one [`TrainConfig`]; the work is [`crate::train::trainer::train`].
// The flags' doc comments are their `--help` text, written for the terminal (`[name]`,
// `<model>` are A1111's and the shell's notation), not rustdoc links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
use crate::device::{parse_device, Precision};
use crate::train::config::{
    CaptionConfig, DataConfig, EmbeddingFormat, InitFrom, LossConfig, OptimConfig, OutputConfig, TrainConfig, ValidationConfig, ValidationEvery,
};
use crate::train::dataset::buckets::{DEFAULT_BUCKET_RESO_STEPS, DEFAULT_MAX_BUCKET_RESO, DEFAULT_MIN_BUCKET_RESO};
use crate::train::dataset::masks::MaskSource;
use crate::train::dataset::{BucketConfig, ImageOrder, LearnableProperty};
use crate::train::lr_schedule::LrScheduleKind;
use crate::train::metrics::ReportTo;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Save learned_embeds-steps-N every N optimizer updates.
    #[arg(long = "save_steps", default_value_t = 500)]
    pub save_steps: u64,
    /// Also save a full diffusers pipeline (extended tokenizer and text encoder) in output_dir.
    #[arg(long = "save_as_full_pipeline")]
    pub save_as_full_pipeline: bool,
    /// Vectors learned for the concept (tokens P, P_1, ..., P_{n-1}); default 1, or the vector
    /// count of --initial_embedding.
    #[arg(long = "num_vectors")]
    pub num_vectors: Option<i64>,
    /// Model folder, Hub id or single-file checkpoint (`.safetensors`/`.ckpt`, original layout).
    #[arg(long = "pretrained_model_name_or_path")]
    pub pretrained_model_name_or_path: String,
    #[arg(long)]
    pub revision: Option<String>,
    #[command(flatten)]
    pub model_file: super::ModelFileArgs,
    /// Weight-file variant of the UNet and VAE (e.g. fp16).
    #[arg(long)]
    pub variant: Option<String>,
    /// Tokenizer folder instead of <model>/tokenizer.
    #[arg(long = "tokenizer_name")]
    pub tokenizer_name: Option<PathBuf>,
    /// Folder of training images, or a Hub dataset id (e.g. diffusers/cat_toy_example: its
    /// files fetched into the Hugging Face cache, the snapshot folder trained on).
    #[arg(long = "train_data_dir")]
    pub train_data_dir: PathBuf,
    /// The new token, e.g. <cat-toy>; also the key in the saved file.
    #[arg(long = "placeholder_token")]
    pub placeholder_token: String,
    /// A word (one token) whose embedding starts every new vector.
    #[arg(long = "initializer_token")]
    pub initializer_token: Option<String>,
    /// object or style (which caption templates; anything but style means object, as in the
    /// script).
    #[arg(long = "learnable_property", default_value = "object", value_parser = learnable_property)]
    pub learnable_property: LearnableProperty,
    /// Dataset length = images x repeats.
    #[arg(long, default_value_t = 100)]
    pub repeats: usize,
    #[arg(long = "output_dir", default_value = "text-inversion-model")]
    pub output_dir: PathBuf,
    /// Seed for every random draw (and validation images). Random (and logged) if not given.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Training images are resized to this square size.
    #[arg(long, default_value_t = 512)]
    pub resolution: u32,
    /// Crop the largest centred square before resizing (else the image is stretched).
    #[arg(long = "center_crop")]
    pub center_crop: bool,
    /// Weight the loss by each image's alpha channel (transparent pixels do not count), as
    /// kohya's --alpha_mask; images without alpha count everywhere.
    #[arg(long = "alpha_mask", conflicts_with = "mask_dir")]
    pub alpha_mask: bool,
    /// Folder of greyscale loss masks, one per image with its file name stem and size (white
    /// counts, black does not), as kohya's --masked_loss.
    #[arg(long = "mask_dir")]
    pub mask_dir: Option<PathBuf>,
    /// With a mask: every pixel counts at least this much (0 to 1), OneTrainer's unmasked_weight.
    #[arg(long = "unmasked_weight", default_value_t = 0.0)]
    pub unmasked_weight: f64,
    /// With a mask: divide each image's loss by its mask's mean, OneTrainer's
    /// normalize_masked_area_loss.
    #[arg(long = "normalize_masked_area_loss")]
    pub normalize_masked_area_loss: bool,
    /// Aspect-ratio buckets (kohya's): each image is resized and cropped to the bucket nearest
    /// its aspect ratio, of at most resolution² pixels; every batch holds one bucket's images.
    #[arg(long = "enable_bucket")]
    pub enable_bucket: bool,
    /// Smallest bucket side with --enable_bucket [default: 256].
    #[arg(long = "min_bucket_reso")]
    pub min_bucket_reso: Option<u32>,
    /// Largest bucket side with --enable_bucket (at least --resolution) [default: 1024].
    #[arg(long = "max_bucket_reso")]
    pub max_bucket_reso: Option<u32>,
    /// Bucket sides are multiples of this (a multiple of 8) [default: 64].
    #[arg(long = "bucket_reso_steps")]
    pub bucket_reso_steps: Option<u32>,
    /// With --enable_bucket: never enlarge; each image's bucket is its own size rounded down to
    /// the steps (shrunk to resolution² pixels when larger).
    #[arg(long = "bucket_no_upscale")]
    pub bucket_no_upscale: bool,
    /// With --enable_bucket: the part of the resized image kept is drawn (once per image, from
    /// --seed) instead of centred.
    #[arg(long = "random_crop")]
    pub random_crop: bool,
    #[arg(long = "train_batch_size", default_value_t = 16)]
    pub train_batch_size: usize,
    /// Recomputed from max_train_steps, as in the script.
    #[arg(long = "num_train_epochs", default_value_t = 100)]
    pub num_train_epochs: u64,
    /// Total optimizer updates.
    #[arg(long = "max_train_steps", default_value_t = 5000)]
    pub max_train_steps: u64,
    #[arg(long = "gradient_accumulation_steps", default_value_t = 1)]
    pub gradient_accumulation_steps: u64,
    /// Recompute the UNet block by block in the backward pass: much less memory, one more
    /// forward pass of compute.
    #[arg(long = "gradient_checkpointing")]
    pub gradient_checkpointing: bool,
    #[arg(long = "learning_rate", default_value_t = 1e-4)]
    pub learning_rate: f64,
    /// LR x gradient_accumulation_steps x train_batch_size x processes.
    #[arg(long = "scale_lr")]
    pub scale_lr: bool,
    /// constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial.
    #[arg(long = "lr_scheduler", default_value = "constant")]
    pub lr_scheduler: LrScheduleKind,
    #[arg(long = "lr_warmup_steps", default_value_t = 500)]
    pub lr_warmup_steps: i64,
    #[arg(long = "lr_num_cycles", default_value_t = 1)]
    pub lr_num_cycles: i64,
    /// Accepted for compatibility: images are decoded once, before training.
    #[arg(long = "dataloader_num_workers", default_value_t = 0)]
    pub dataloader_num_workers: usize,
    #[arg(long = "adam_beta1", default_value_t = 0.9)]
    pub adam_beta1: f64,
    #[arg(long = "adam_beta2", default_value_t = 0.999)]
    pub adam_beta2: f64,
    #[arg(long = "adam_weight_decay", default_value_t = 1e-2)]
    pub adam_weight_decay: f64,
    #[arg(long = "adam_epsilon", default_value_t = 1e-8)]
    pub adam_epsilon: f64,
    /// Upload output_dir (full pipeline, README.md model card) to the Hub at the end, through
    /// huggingface_hub's `hf` command (on PATH, logged in: checked before training).
    #[arg(long = "push_to_hub")]
    pub push_to_hub: bool,
    /// Token for --push_to_hub (given to `hf` as HF_TOKEN; default: hf's login).
    #[arg(long = "hub_token")]
    pub hub_token: Option<String>,
    /// Repo to push to: owner/name, or name under your account (default: output_dir's name).
    #[arg(long = "hub_model_id")]
    pub hub_model_id: Option<String>,
    /// TensorBoard folder under output_dir.
    #[arg(long = "logging_dir", default_value = "logs")]
    pub logging_dir: String,
    /// no (fp32), fp16 or bf16: the UNet and VAE run in this precision; the embeddings train in
    /// fp32.
    #[arg(long = "mixed_precision", value_enum, default_value = "no")]
    pub mixed_precision: Precision,
    /// TF32 matmuls on Ampere+ GPUs.
    #[arg(long = "allow_tf32")]
    pub allow_tf32: bool,
    /// tensorboard or none (wandb and comet_ml are not available).
    #[arg(long = "report_to", default_value = "tensorboard")]
    pub report_to: ReportTo,
    #[arg(long = "validation_prompt")]
    pub validation_prompt: Option<String>,
    #[arg(long = "num_validation_images", default_value_t = 4)]
    pub num_validation_images: usize,
    #[arg(long = "validation_steps", default_value_t = 100)]
    pub validation_steps: u64,
    /// Deprecated: validation_steps = validation_epochs x dataset length, as the script does.
    #[arg(long = "validation_epochs")]
    pub validation_epochs: Option<u64>,
    /// Accepted for compatibility: the rank comes from the launcher's environment (LOCAL_RANK).
    #[arg(long = "local_rank", default_value_t = -1)]
    pub local_rank: i64,
    /// Save the full training state as checkpoint-N every N updates.
    #[arg(long = "checkpointing_steps", default_value_t = 500)]
    pub checkpointing_steps: u64,
    #[arg(long = "checkpoints_total_limit")]
    pub checkpoints_total_limit: Option<usize>,
    /// A checkpoint folder name in output_dir, or latest.
    #[arg(long = "resume_from_checkpoint")]
    pub resume_from_checkpoint: Option<String>,
    /// Accepted for compatibility: attention already uses scaled_dot_product_attention.
    #[arg(long = "enable_xformers_memory_efficient_attention")]
    pub enable_xformers_memory_efficient_attention: bool,
    /// textual_inversion_sdxl.py's bitsandbytes AdamW8bit: accepted, no effect (the optimizer
    /// state here is only the new rows', a few kilobytes).
    #[arg(long = "use_8bit_adam")]
    pub use_8bit_adam: bool,
    /// Write .bin (torch.save) instead of .safetensors embeddings.
    #[arg(long = "no_safe_serialization")]
    pub no_safe_serialization: bool,

    // Beyond the script.
    /// cpu, cuda, cuda:N, mps. Data-parallel, `cuda` is each rank's cuda:LOCAL_RANK.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: tch::Device,
    /// Start N data-parallel ranks on this machine (as `accelerate launch --num_processes N`;
    /// no Python needed). Under torchrun, SLURM or hand-set RANK/WORLD_SIZE, leave it out:
    /// the ranks come from the environment (docs/distributed.md).
    #[arg(long = "num_processes")]
    pub num_processes: Option<usize>,
    /// Encode every image with the VAE at each step, as the script does, instead of once.
    #[arg(long = "no_cache_latents")]
    pub no_cache_latents: bool,
    /// Start the vectors from these words' embeddings, cycled over the vectors (kohya's rule)
    /// instead of one --initializer_token.
    #[arg(long = "initializer_text")]
    pub initializer_text: Option<String>,
    /// Start from the vectors of an embedding file (any format `inspect` reads); its vector
    /// count sets --num_vectors (or must match it).
    #[arg(long = "initial_embedding")]
    pub initial_embedding: Option<PathBuf>,
    /// Each image's caption from NAME<EXT> beside it ({} or [name] marks the placeholder, else it
    /// is prepended); images without one use the templates (listed in a warning).
    #[arg(long = "caption_extension")]
    pub caption_extension: Option<String>,
    /// A1111-style template lines with [name] and [filewords], instead of the object/style lists.
    #[arg(long = "template_file")]
    pub template_file: Option<PathBuf>,
    /// Shuffle each caption's comma-separated tags every time it is used.
    #[arg(long = "shuffle_tags")]
    pub shuffle_tags: bool,
    /// Drop each caption tag with this probability.
    #[arg(long = "tag_dropout", default_value_t = 0.0)]
    pub tag_dropout: f64,
    /// Clip the new rows' gradient to this norm (all text encoders together).
    #[arg(long = "max_grad_norm")]
    pub max_grad_norm: Option<f64>,
    /// l2 (the script's MSE), huber or smooth_l1 (kohya's).
    #[arg(long = "loss_type", value_enum, default_value = "l2")]
    pub loss_type: crate::train::config::LossKind,
    /// huber/smooth_l1's c.
    #[arg(long = "huber_c", default_value_t = 0.1)]
    pub huber_c: f64,
    /// How c varies with the timestep: constant, exponential, snr (kohya's default).
    #[arg(long = "huber_schedule", value_enum, default_value = "snr")]
    pub huber_schedule: crate::train::config::HuberSchedule,
    #[arg(long = "huber_scale", default_value_t = 1.0)]
    pub huber_scale: f64,
    /// Min-SNR loss weighting with this gamma (5.0 is the paper's), as diffusers' scripts.
    #[arg(long = "snr_gamma")]
    pub snr_gamma: Option<f64>,
    /// Add offset x randn(B, C, 1, 1) to the noise (darker/brighter images).
    #[arg(long = "noise_offset", default_value_t = 0.0)]
    pub noise_offset: f64,
    /// Also write the embedding as the A1111 web UI's .pt or kohya's emb_params file, named after
    /// the trigger word (repeatable).
    #[arg(long = "save_format", value_enum)]
    pub save_format: Vec<crate::train::config::SaveFormat>,
    /// Write the run's timings and peak device memory as JSON to this file.
    #[arg(long = "stats_json")]
    pub stats_json: Option<PathBuf>,
    /// Take the images sorted by file name instead of in the folder's directory order (the
    /// script's os.listdir order, which depends on the file system): the same on every machine.
    #[arg(long = "sort_images")]
    pub sort_images: bool,
    /// Every N updates, the loss of a fixed batch (images, captions, noise, timesteps drawn
    /// once from --eval_seed), logged as eval_loss (DVAR's deterministic objective). 0: off.
    #[arg(long = "eval_loss_steps", default_value_t = 0)]
    pub eval_loss_steps: u64,
    /// Seed of the evaluation batch's draws (its own generator: training draws are unchanged).
    #[arg(long = "eval_seed", default_value_t = crate::train::eval_loss::DEFAULT_EVAL_SEED)]
    pub eval_seed: u64,
    /// Images in the evaluation batch: the dataset's first ones (DVAR's 4; fewer when the
    /// folder has fewer).
    #[arg(long = "eval_batch_size", default_value_t = crate::train::eval_loss::DEFAULT_EVAL_BATCH_SIZE)]
    pub eval_batch_size: usize,
    /// Stop when Var(last window of eval_loss) / Var(all of it) < threshold (DVAR's rule),
    /// saving as at the end of a run. Needs --eval_loss_steps.
    #[arg(long = "early_stopping")]
    pub early_stopping: bool,
    /// DVAR's window, in evaluations (its Textual Inversion setting: 310).
    #[arg(long = "early_stopping_window", default_value_t = crate::train::early_stopping::DEFAULT_WINDOW)]
    pub early_stopping_window: usize,
    /// DVAR's threshold on the normalized variance (its Textual Inversion setting: 0.15).
    #[arg(long = "early_stopping_threshold", default_value_t = crate::train::early_stopping::DEFAULT_THRESHOLD)]
    pub early_stopping_threshold: f64,
    /// Every N updates (and once before the first, the initializer's embedding), score the
    /// embedding with CLIP as `evaluate --run` scores a saved step: image_similarity and
    /// text_similarity in metrics.jsonl and TensorBoard, output_dir/eval/ as evaluate --run
    /// writes it. Needs --clip_model. 0: off.
    #[arg(long = "eval_steps", default_value_t = 0)]
    pub eval_steps: u64,
    /// With --eval_steps: the CLIP model, a transformers CLIPModel folder or Hub id (e.g.
    /// openai/clip-vit-large-patch14).
    #[arg(long = "clip_model")]
    pub clip_model: Option<String>,
    /// With --eval_steps: branch, tag or commit of a --clip_model Hub id (default main).
    #[arg(long = "clip_revision")]
    pub clip_revision: Option<String>,
    /// With --eval_steps: images per forward pass of CLIP's vision tower.
    #[arg(long = "clip_batch_size", default_value_t = crate::eval::scorer::DEFAULT_BATCH_SIZE)]
    pub clip_batch_size: usize,
    /// With --eval_steps: the images the reconstruction prompt's images are compared with
    /// (default --train_data_dir).
    #[arg(long = "eval_reference_dir")]
    pub eval_reference_dir: Option<PathBuf>,
    /// With --eval_steps: images per prompt and evaluation, seeds --eval_image_seed, +1, ...
    #[arg(long = "eval_num_images", default_value_t = 2)]
    pub eval_num_images: usize,
    /// With --eval_steps: the first seed of the evaluation images (their own generator: the
    /// training draws are unchanged).
    #[arg(long = "eval_image_seed", default_value_t = 0)]
    pub eval_image_seed: u64,
    /// With --eval_steps: denoising steps per evaluation image.
    #[arg(long = "eval_num_inference_steps", default_value_t = 50)]
    pub eval_num_inference_steps: usize,
    /// With --eval_steps: the prompt whose images are compared with --eval_reference_dir; {}
    /// stands for --placeholder_token (default "a photo of a {}"; style: "a painting in the
    /// style of {}").
    #[arg(long = "eval_reconstruction_prompt")]
    pub eval_reconstruction_prompt: Option<String>,
    /// With --eval_steps: an editing prompt ({} for the token), repeatable; replaces the
    /// default set.
    #[arg(long = "eval_editing_prompt")]
    pub eval_editing_prompts: Vec<String>,
    /// With --eval_steps: which step is best (eval/learned_embeds.best.safetensors): rule
    /// (highest image_similarity among steps whose text_similarity >= step 0's - --text_margin),
    /// image or text.
    #[arg(long = "best_by", value_enum, default_value = "rule")]
    pub best_by: crate::eval::best::BestBy,
    /// With --eval_steps and --best_by rule: how far text_similarity may fall below step 0's.
    #[arg(long = "text_margin", default_value_t = crate::eval::best::DEFAULT_TEXT_MARGIN)]
    pub text_margin: f64,
}

/// The script's rule: `style` means style, anything else object.
fn learnable_property(s: &str) -> Result<LearnableProperty, std::convert::Infallible> {
    Ok(if s == "style" { LearnableProperty::Style } else { LearnableProperty::Object })
}

impl TrainArgs {
    /// The run these flags ask for; flags this tool does not offer are errors (or a log line
    /// when they would change nothing).
    pub fn config(&self) -> Result<TrainConfig> {
        let num_vectors = self.num_vectors()?;
        let init = self.init()?;
        self.unavailable()?;
        let cfg = TrainConfig {
            model: self.model_file.source(&self.pretrained_model_name_or_path, self.revision.clone()),
            variant: self.variant.clone(),
            tokenizer_dir: self.tokenizer_name.clone(),
            data: self.data()?,
            placeholder_token: self.placeholder_token.clone(),
            init,
            num_vectors,
            optim: self.optim(),
            precision: self.mixed_precision,
            device: self.device,
            allow_tf32: self.allow_tf32,
            seed: self.seed,
            cache_latents: !self.no_cache_latents,
            gradient_checkpointing: self.gradient_checkpointing,
            output: self.output(),
            captions: self.captions(),
            loss: self.loss(),
            validation: self.validation(),
            eval_loss: self.eval_loss()?,
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// `--num_vectors`, or 0: as many as --initial_embedding holds (setup decides), else 1.
    fn num_vectors(&self) -> Result<usize> {
        if let Some(n) = self.num_vectors.filter(|&n| n < 1) {
            bail!("--num_vectors has to be larger or equal to 1, but is {n}");
        }
        Ok(self.num_vectors.map_or(0, |n| n as usize))
    }

    /// Where the vectors start: --initial_embedding over --initializer_text over
    /// --initializer_token (the ones not used are named in a warning).
    fn init(&self) -> Result<InitFrom> {
        Ok(match (&self.initial_embedding, &self.initializer_text, &self.initializer_token) {
            (Some(f), text, token) => {
                if text.is_some() || token.is_some() {
                    tracing::warn!("--initial_embedding given: --initializer_token/--initializer_text are not used");
                }
                InitFrom::Embedding(f.clone())
            }
            (None, Some(t), token) => {
                if token.is_some() {
                    tracing::warn!("--initializer_text given: --initializer_token is not used");
                }
                InitFrom::Text(t.clone())
            }
            (None, None, Some(t)) => InitFrom::Token(t.clone()),
            (None, None, None) => bail!("the following arguments are required: --initializer_token (or --initializer_text, --initial_embedding)"),
        })
    }

    /// The script's flags this tool does not act on: a log line where the result is the same.
    fn unavailable(&self) -> Result<()> {
        if self.use_8bit_adam {
            tracing::info!("--use_8bit_adam has no effect: AdamW keeps state for the placeholder rows only (kilobytes), in fp32");
        }
        if self.enable_xformers_memory_efficient_attention {
            tracing::info!("--enable_xformers_memory_efficient_attention: attention already runs through scaled_dot_product_attention");
        }
        Ok(())
    }

    /// `--enable_bucket` and its flags (kohya's defaults); an error when a bucket flag is given
    /// without it.
    fn buckets(&self) -> Result<Option<BucketConfig>> {
        if !self.enable_bucket {
            let given = [
                ("--min_bucket_reso", self.min_bucket_reso.is_some()),
                ("--max_bucket_reso", self.max_bucket_reso.is_some()),
                ("--bucket_reso_steps", self.bucket_reso_steps.is_some()),
                ("--bucket_no_upscale", self.bucket_no_upscale),
                ("--random_crop", self.random_crop),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
                bail!("{flag} has no effect without --enable_bucket");
            }
            return Ok(None);
        }
        Ok(Some(BucketConfig {
            resolution: self.resolution,
            min_bucket_reso: self.min_bucket_reso.unwrap_or(DEFAULT_MIN_BUCKET_RESO),
            max_bucket_reso: self.max_bucket_reso.unwrap_or(DEFAULT_MAX_BUCKET_RESO),
            bucket_reso_steps: self.bucket_reso_steps.unwrap_or(DEFAULT_BUCKET_RESO_STEPS),
            no_upscale: self.bucket_no_upscale,
            random_crop: self.random_crop,
        }))
    }

    fn data(&self) -> Result<DataConfig> {
        Ok(DataConfig {
            dir: self.train_data_dir.clone(),
            order: if self.sort_images { ImageOrder::Sorted } else { ImageOrder::Directory },
            resolution: self.resolution,
            center_crop: self.center_crop,
            repeats: self.repeats,
            property: self.learnable_property,
            mask: match (&self.mask_dir, self.alpha_mask) {
                (Some(dir), _) => Some(MaskSource::Dir(dir.clone())),
                (None, true) => Some(MaskSource::Alpha),
                (None, false) => None,
            },
            buckets: self.buckets()?,
        })
    }

    fn optim(&self) -> OptimConfig {
        OptimConfig {
            batch_size: self.train_batch_size,
            gradient_accumulation_steps: self.gradient_accumulation_steps,
            max_train_steps: self.max_train_steps,
            learning_rate: self.learning_rate,
            scale_lr: self.scale_lr,
            lr_schedule: self.lr_scheduler,
            lr_warmup_steps: self.lr_warmup_steps,
            lr_num_cycles: self.lr_num_cycles,
            adam_beta1: self.adam_beta1,
            adam_beta2: self.adam_beta2,
            adam_weight_decay: self.adam_weight_decay,
            adam_epsilon: self.adam_epsilon,
        }
    }

    fn output(&self) -> OutputConfig {
        OutputConfig {
            dir: self.output_dir.clone(),
            logging_dir: self.logging_dir.clone(),
            report_to: self.report_to,
            embedding_format: if self.no_safe_serialization { EmbeddingFormat::Bin } else { EmbeddingFormat::Safetensors },
            save_steps: self.save_steps,
            checkpointing_steps: self.checkpointing_steps,
            checkpoints_total_limit: self.checkpoints_total_limit,
            resume_from_checkpoint: self.resume_from_checkpoint.clone(),
            // The script saves the full pipeline whenever it pushes.
            save_as_full_pipeline: self.save_as_full_pipeline || self.push_to_hub,
            stats_json: self.stats_json.clone(),
            extra_formats: self.save_format.clone(),
            push: self.push_to_hub.then(|| crate::train::push::PushConfig {
                hub_model_id: self.hub_model_id.clone(),
                token: self.hub_token.clone(),
                base_model: self.pretrained_model_name_or_path.clone(),
            }),
        }
    }

    fn captions(&self) -> CaptionConfig {
        CaptionConfig {
            extension: self.caption_extension.clone(),
            template_file: self.template_file.clone(),
            shuffle_tags: self.shuffle_tags,
            tag_dropout: self.tag_dropout,
        }
    }

    /// `--eval_steps` and its flags (which need it), checked before anything loads.
    pub fn inline_eval(&self) -> Result<Option<crate::eval::inline::InlineConfig>> {
        use crate::eval::prompts::Property;
        if self.eval_steps == 0 {
            let given = [
                ("--clip_model", self.clip_model.is_some()),
                ("--clip_revision", self.clip_revision.is_some()),
                ("--eval_reference_dir", self.eval_reference_dir.is_some()),
                ("--eval_reconstruction_prompt", self.eval_reconstruction_prompt.is_some()),
                ("--eval_editing_prompt", !self.eval_editing_prompts.is_empty()),
            ];
            if let Some((flag, _)) = given.iter().find(|g| g.1) {
                bail!("{flag} is a setting of the inline evaluation: give --eval_steps N too");
            }
            return Ok(None);
        }
        let Some(clip_model) = self.clip_model.clone() else {
            bail!("--eval_steps scores with CLIP: give --clip_model too (a CLIPModel folder or Hub id, e.g. openai/clip-vit-large-patch14)");
        };
        let cfg = crate::eval::inline::InlineConfig {
            every: self.eval_steps,
            clip_model,
            clip_revision: self.clip_revision.clone(),
            clip_batch_size: self.clip_batch_size,
            reference_dir: self.eval_reference_dir.clone().unwrap_or_else(|| self.train_data_dir.clone()),
            property: match self.learnable_property {
                LearnableProperty::Style => Property::Style,
                LearnableProperty::Object => Property::Object,
            },
            reconstruction_prompt: self.eval_reconstruction_prompt.clone(),
            editing_prompts: self.eval_editing_prompts.clone(),
            num_images: self.eval_num_images,
            // At the training resolution, as `evaluate --run` generates from the run's run.json.
            options: crate::pipeline::GenerateOptions {
                steps: self.eval_num_inference_steps,
                seed: self.eval_image_seed,
                height: Some(i64::from(self.resolution)),
                width: Some(i64::from(self.resolution)),
                ..Default::default()
            },
            best_by: self.best_by,
            text_margin: self.text_margin,
        };
        if self.clip_batch_size == 0 {
            bail!("--clip_batch_size must be at least 1");
        }
        cfg.check()?;
        Ok(Some(cfg))
    }

    /// `--eval_loss_steps` and `--early_stopping` (which needs it).
    fn eval_loss(&self) -> Result<Option<crate::train::eval_loss::EvalLossConfig>> {
        if self.eval_loss_steps == 0 {
            if self.early_stopping {
                bail!("--early_stopping watches the evaluation loss: give --eval_loss_steps N too");
            }
            return Ok(None);
        }
        if self.eval_batch_size == 0 {
            bail!("--eval_batch_size must be at least 1");
        }
        let rule = crate::train::early_stopping::DvarRule { window: self.early_stopping_window, threshold: self.early_stopping_threshold };
        Ok(Some(crate::train::eval_loss::EvalLossConfig {
            every: self.eval_loss_steps,
            seed: self.eval_seed,
            batch_size: self.eval_batch_size,
            early_stopping: self.early_stopping.then_some(rule),
        }))
    }

    fn loss(&self) -> LossConfig {
        LossConfig {
            kind: self.loss_type,
            huber_c: self.huber_c,
            huber_schedule: self.huber_schedule,
            huber_scale: self.huber_scale,
            snr_gamma: self.snr_gamma,
            noise_offset: self.noise_offset,
            max_grad_norm: self.max_grad_norm,
            unmasked_weight: self.unmasked_weight,
            normalize_masked_area_loss: self.normalize_masked_area_loss,
        }
    }

    /// `--validation_prompt`, every --validation_steps updates (or the deprecated
    /// --validation_epochs); None without a prompt.
    fn validation(&self) -> Option<ValidationConfig> {
        self.validation_prompt.as_ref().map(|prompt| ValidationConfig {
            prompt: prompt.clone(),
            num_images: self.num_validation_images,
            every: match self.validation_epochs {
                Some(e) => ValidationEvery::Epochs(e),
                None => ValidationEvery::Steps(self.validation_steps),
            },
        })
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    use crate::distributed::{spawn_local_ranks, without_flag, ProcessGroup, World};
    let world = World::from_env()?;
    // Only rank 0 uploads, so only it needs `hf`: checked before any model loads (and before
    // local ranks start).
    if args.push_to_hub && world.rank == 0 {
        if !args.save_as_full_pipeline {
            tracing::warn!("Enabling full model saving because --push_to_hub=True was specified.");
        }
        let cfg = args.config()?;
        crate::train::push::preflight(cfg.output.push.as_ref().context("push config")?, &cfg.output.dir)?;
    }
    // Checked before local ranks start: a wrong flag fails in a second.
    let inline = args.inline_eval()?;
    if let Some(n) = args.num_processes.filter(|&n| n > 1 || world.is_distributed()) {
        let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        return spawn_local_ranks(n, &without_flag(&argv, &["--num_processes", "--num-processes"]));
    }
    let mut cfg = args.config()?;
    if world.is_distributed() {
        // One GPU per rank on each machine, as accelerate places them; with fewer GPUs than
        // ranks, ranks share them in turn (the reduce goes through host copies either way).
        if let tch::Device::Cuda(_) = cfg.device {
            crate::device::ensure_available(tch::Device::Cuda(0))?;
            let count = (tch::Cuda::device_count().max(1)) as usize;
            if world.local_rank >= count {
                tracing::warn!("{world}: {count} CUDA device(s) on this machine; this rank shares cuda:{}", world.local_rank % count);
            }
            cfg.device = tch::Device::Cuda(world.local_rank % count);
        }
        tracing::info!("{world}");
    }
    let group = ProcessGroup::init(&world)?;
    let scorer = match inline {
        Some(i) => Some(Box::new(crate::eval::inline::InlineEval::new(i, &cfg, group.rank() == 0)?) as Box<dyn crate::train::inline_eval::StepScorer>),
        None => None,
    };
    crate::train::trainer::train_with(&cfg, &group, scorer).map(|_| ())
}
