//! `textual-inversion generate`: text to image with any embeddings. The flags become one
//! [`GenerateConfig`]; the work is [`crate::pipeline::generate::run`].
use crate::device::{parse_device, Precision};
use crate::models::stable_diffusion::{LoadOptions, WeightOptions};
use crate::pipeline::generate::GenerateConfig;
use crate::pipeline::GenerateOptions;
use crate::schedulers::SchedulerKind;
use crate::text::learned_tokens::EmbeddingSpec;
use anyhow::Result;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Model folder, Hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or single-file
    /// checkpoint (`.safetensors`/`.ckpt` in the original layout).
    #[arg(long = "pretrained_model_name_or_path", alias = "model")]
    pub model: String,
    #[arg(long)]
    pub revision: Option<String>,
    #[command(flatten)]
    pub model_file: super::ModelFileArgs,
    /// Weight file variant, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors).
    #[arg(long)]
    pub variant: Option<String>,
    #[arg(long)]
    pub prompt: String,
    #[arg(long = "negative_prompt")]
    pub negative_prompt: Option<String>,
    /// SDXL: the second text encoder's prompt (default --prompt).
    #[arg(long = "prompt_2")]
    pub prompt_2: Option<String>,
    /// SDXL: the second text encoder's negative prompt (default --negative_prompt).
    #[arg(long = "negative_prompt_2")]
    pub negative_prompt_2: Option<String>,
    /// SDXL size conditioning HEIGHT,WIDTH (default: the image size).
    #[arg(long = "original_size", value_parser = parse_pair)]
    pub original_size: Option<(i64, i64)>,
    /// SDXL crop conditioning TOP,LEFT (default 0,0).
    #[arg(long = "crops_coords_top_left", value_parser = parse_pair, default_value = "0,0")]
    pub crops_coords_top_left: (i64, i64),
    /// SDXL target-size conditioning HEIGHT,WIDTH (default: the image size).
    #[arg(long = "target_size", value_parser = parse_pair)]
    pub target_size: Option<(i64, i64)>,
    /// Where images go, as NNNN-SEED.png.
    #[arg(long = "output_dir", default_value = ".")]
    pub output_dir: PathBuf,
    /// Embedding file (any format) or a folder with learned_embeds.*, optionally :TOKEN.
    /// Repeatable.
    #[arg(long = "embedding")]
    pub embeddings: Vec<EmbeddingSpec>,
    /// Classifier-free guidance; default 7.5 (SDXL: 5.0, as its pipeline).
    #[arg(long = "guidance_scale")]
    pub guidance_scale: Option<f64>,
    #[arg(long = "num_inference_steps", default_value_t = 50)]
    pub steps: usize,
    #[arg(long = "num_images_per_prompt", default_value_t = 1)]
    pub num_images: usize,
    /// Multiple of 8; default from the UNet config (512 for SD 1.5).
    #[arg(long)]
    pub height: Option<i64>,
    #[arg(long)]
    pub width: Option<i64>,
    /// Same seed, same picture (on CPU, the picture diffusers makes with
    /// generator=torch.Generator("cpu").manual_seed(SEED)). Random if not given.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Use the hidden state this many layers before the last.
    #[arg(long = "clip_skip")]
    pub clip_skip: Option<usize>,
    /// Scheduler instead of the model's own: pndm, ddim, euler, euler-ancestral, dpm++2m.
    #[arg(long)]
    pub scheduler: Option<SchedulerKind>,
    /// cpu, cuda, cuda:N, mps.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: tch::Device,
    /// Write the run's timings and peak device memory as JSON to this file.
    #[arg(long = "stats_json")]
    pub stats_json: Option<PathBuf>,
    /// Precision of the UNet and VAE (the text encoder stays fp32).
    #[arg(long, value_enum, ignore_case = true, default_value = "fp32")]
    pub dtype: Precision,
}

impl GenerateArgs {
    /// The run these flags ask for.
    pub fn config(&self) -> GenerateConfig {
        GenerateConfig {
            model: self.model_file.source(&self.model, self.revision.clone()),
            load: LoadOptions {
                weights: WeightOptions { variant: self.variant.clone(), use_safetensors: None },
                text_encoder_variant: true,
                tokenizer_dir: None,
                device: self.device,
                precision: self.dtype,
            },
            embeddings: self.embeddings.clone(),
            options: GenerateOptions {
                prompt: self.prompt.clone(),
                prompt_2: self.prompt_2.clone(),
                negative_prompt: self.negative_prompt.clone(),
                negative_prompt_2: self.negative_prompt_2.clone(),
                original_size: self.original_size,
                crops_coords_top_left: self.crops_coords_top_left,
                target_size: self.target_size,
                height: self.height,
                width: self.width,
                steps: self.steps,
                guidance_scale: self.guidance_scale,
                num_images_per_prompt: self.num_images,
                seed: self.seed.unwrap_or_else(crate::seed::clock_seed),
                clip_skip: self.clip_skip,
            },
            scheduler: self.scheduler,
            output_dir: self.output_dir.clone(),
            stats_json: self.stats_json.clone(),
        }
    }
}

/// `H,W` (or `HxW`): two non-negative integers.
fn parse_pair(s: &str) -> Result<(i64, i64)> {
    let parts: Vec<&str> = s.split([',', 'x']).map(str::trim).collect();
    match parts.as_slice() {
        [a, b] => match (a.parse::<i64>(), b.parse::<i64>()) {
            (Ok(a), Ok(b)) if a >= 0 && b >= 0 => Ok((a, b)),
            _ => anyhow::bail!("expected two non-negative integers as H,W, got {s:?}"),
        },
        _ => anyhow::bail!("expected H,W (two numbers), got {s:?}"),
    }
}

pub fn run(args: GenerateArgs) -> Result<()> {
    for path in crate::pipeline::generate::run(&args.config())? {
        println!("{}", path.display());
    }
    Ok(())
}
