//! `textual-inversion generate`: text to image with any embeddings. The flags become one
//! [`GenerateConfig`]; the work is [`crate::pipeline::generate::run`].
use crate::device::{parse_device, Precision};
use crate::models::stable_diffusion::{LoadOptions, WeightOptions};
use crate::pipeline::generate::GenerateConfig;
use crate::pipeline::GenerateOptions;
use crate::schedulers::SchedulerKind;
use crate::text::learned_tokens::EmbeddingSpec;
use anyhow::{bail, Context, Result};
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
    /// The prompt (required without --prompt_file; with it, the prompt of JSON lines that give
    /// none).
    #[arg(long, required_unless_present = "prompt_file")]
    pub prompt: Option<String>,
    /// Many prompts: one per line (blank and # lines skipped), or JSON lines with any of
    /// prompt, negative_prompt, seed, width, height, num_inference_steps, guidance_scale,
    /// num_images (the rest from the flags; other keys refused). Job
    /// K's seed is its own or --seed + K; its images are JJJJ-II-SEED.png, listed in
    /// index.jsonl (docs/generating.md#prompt-files).
    #[arg(long = "prompt_file")]
    pub prompt_file: Option<PathBuf>,
    /// With --prompt_file: start N processes on this machine sharing the jobs (job K on
    /// process K mod N; process R on cuda:R with --device cuda), as `accelerate launch
    /// --num_processes N`. Under torchrun or srun the ranks come from the environment.
    #[arg(long = "num_processes")]
    pub num_processes: Option<usize>,
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
    /// Where images go, as NNNN-SEED.png (with --prompt_file: JJJJ-II-SEED.png).
    #[arg(long = "output_dir", default_value = ".")]
    pub output_dir: PathBuf,
    /// Embedding file (any format), a folder with learned_embeds.*, or a Hub repo id (e.g.
    /// sd-concepts-library/cat-toy, as diffusers' load_textual_inversion), optionally :TOKEN.
    /// Repeatable.
    #[arg(long = "embedding")]
    pub embeddings: Vec<EmbeddingSpec>,
    /// The file to take from each --embedding Hub repo (default learned_embeds.safetensors,
    /// else learned_embeds.bin), as load_textual_inversion's weight_name.
    #[arg(long = "weight_name")]
    pub weight_name: Option<String>,
    /// Branch, tag or commit of each --embedding Hub repo (default main), as
    /// load_textual_inversion's revision (--revision is the model's).
    #[arg(long = "embedding_revision")]
    pub embedding_revision: Option<String>,
    /// Classifier-free guidance; default 7.5 (SDXL: 5.0, as its pipeline).
    #[arg(long = "guidance_scale")]
    pub guidance_scale: Option<f64>,
    #[arg(long = "num_inference_steps", default_value_t = 50)]
    pub steps: usize,
    /// Images from one prompt (one seed: the batch diffusers draws with num_images_per_prompt).
    #[arg(long = "num_images_per_prompt", default_value_t = 1)]
    pub num_images: usize,
    /// The most of those images in one UNet call and one VAE decode (default: all), to bound
    /// memory; the images are the same whatever it is (docs/generating.md#batches).
    #[arg(long = "batch_size")]
    pub batch_size: Option<usize>,
    /// Multiple of 8; default from the UNet config (512 for SD 1.5), or the --init_image's size.
    #[arg(long)]
    pub height: Option<i64>,
    #[arg(long)]
    pub width: Option<i64>,
    /// Same seed, same picture (on CPU, the picture diffusers makes with
    /// generator=torch.Generator("cpu").manual_seed(SEED)). Random if not given.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Image to image, as diffusers' StableDiffusion(XL)Img2ImgPipeline: start from this image
    /// (PNG, JPEG, WebP, GIF; EXIF rotation applied) instead of pure noise. The output has its
    /// size, rounded down to a multiple of 8 (LANCZOS).
    #[arg(long = "init_image")]
    pub init_image: Option<PathBuf>,
    /// With --init_image: how much of the denoising runs, in (0, 1] (1: the image only sets the
    /// start; small: close to the image). Default 0.8, SDXL 0.3 (diffusers' defaults).
    #[arg(long)]
    pub strength: Option<f64>,
    /// Use the hidden state this many layers before the last.
    #[arg(long = "clip_skip")]
    pub clip_skip: Option<usize>,
    /// How prompts are read: diffusers (plain text, 77 tokens) or a1111 (the web UI's
    /// `(word:1.2)`, `[word]`, `BREAK` and prompts of any length; SD 1.x/2.x).
    #[arg(long = "prompt_syntax", value_enum, default_value = "diffusers")]
    pub prompt_syntax: crate::text::a1111::PromptSyntax,
    /// Sampler instead of the model's own, by our name, an A1111 name ("DPM++ 2M Karras", "Euler
    /// a") or a diffusers class name, case-insensitive.
    #[arg(long, long_help = scheduler_help())]
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
                prompt: self.prompt.clone().unwrap_or_default(),
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
                init_image: self.init_image.clone(),
                strength: self.strength,
                batch_size: self.batch_size,
                prompt_syntax: self.prompt_syntax,
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

/// Each `--embedding` that names a Hub repo (`owner/name`, optionally `:TOKEN`; no such local
/// path) replaced by its file in the Hugging Face cache, fetched if needed; --weight_name and
/// --embedding_revision apply to every one, as load_textual_inversion's kwargs apply to each id
/// of a list.
fn resolve_hub_embeddings(args: &mut GenerateArgs) -> Result<()> {
    use crate::models::hub::{embedding_file, is_hub_id};
    let hub = crate::models::files::HubOptions::from_env();
    let mut any = false;
    for spec in &mut args.embeddings {
        let Some(arg) = spec.path.to_str().map(str::to_string) else { continue };
        let (id, token) = match arg.rsplit_once(':') {
            _ if is_hub_id(&arg) => (arg.clone(), None),
            Some((id, token)) if spec.token.is_none() && is_hub_id(id) => (id.to_string(), (!token.is_empty()).then(|| token.to_string())),
            _ => continue,
        };
        spec.path = embedding_file(&id, args.weight_name.as_deref(), args.embedding_revision.as_deref(), &hub)?;
        spec.token = spec.token.take().or(token);
        any = true;
    }
    if !any && (args.weight_name.is_some() || args.embedding_revision.is_some()) {
        tracing::warn!("--weight_name/--embedding_revision apply to --embedding Hub ids only; none was given");
    }
    Ok(())
}

pub fn run(mut args: GenerateArgs) -> Result<()> {
    use crate::distributed::{spawn_local_ranks, without_flag, ProcessGroup, World};
    let world = World::from_env()?;
    resolve_hub_embeddings(&mut args)?;
    let Some(prompt_file) = &args.prompt_file else {
        if args.num_processes.is_some_and(|n| n > 1) || world.is_distributed() {
            bail!(
                "generate on several processes ({}) needs --prompt_file: the images of one prompt are one batch, made by one process",
                world_or_flag(&world, args.num_processes)
            );
        }
        for path in crate::pipeline::generate::run(&args.config())? {
            println!("{}", path.display());
        }
        return Ok(());
    };
    if let Some(n) = args.num_processes.filter(|&n| n > 1 || world.is_distributed()) {
        let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        return spawn_local_ranks(n, &without_flag(&argv, &["--num_processes", "--num-processes"]));
    }
    let mut cfg = args.config();
    // Every rank reads the file: a bad line fails them all at once, before any model loads.
    let jobs = crate::pipeline::prompt_file::read(prompt_file, &cfg.options, args.prompt.as_deref())?;
    if world.is_distributed() {
        // One GPU per rank on each machine, as train places them; with fewer GPUs than ranks,
        // ranks share them in turn.
        if let tch::Device::Cuda(_) = cfg.load.device {
            crate::device::ensure_available(tch::Device::Cuda(0))?;
            let count = (tch::Cuda::device_count().max(1)) as usize;
            if world.local_rank >= count {
                tracing::warn!("{world}: {count} CUDA device(s) on this machine; this rank shares cuda:{}", world.local_rank % count);
            }
            cfg.load.device = tch::Device::Cuda(world.local_rank % count);
        }
        tracing::info!("{world}");
    }
    let group = ProcessGroup::init(&world)?;
    let jobs = if args.seed.is_none() && group.world_size() > 1 {
        // The clock seed is rank 0's, so that job K's seed does not depend on the rank.
        if group.rank() == 0 {
            group.store_set("generate/seed", &cfg.options.seed.to_le_bytes())?;
        } else {
            let bytes = group.store_get("generate/seed")?;
            let seed =
                u64::from_le_bytes(bytes.as_slice().try_into().map_err(|_| anyhow::anyhow!("rank 0 published a seed of {} bytes, expected 8", bytes.len()))?);
            cfg.options.seed = seed;
        }
        crate::pipeline::prompt_file::read(prompt_file, &cfg.options, args.prompt.as_deref())?
    } else {
        jobs
    };
    group.check_same_config(&format!("{:x}", jobs_hash(&jobs))).context("the ranks read different prompt files or flags")?;
    for path in crate::pipeline::generate::run_jobs(&cfg, &jobs, &group)? {
        println!("{}", path.display());
    }
    Ok(())
}

fn world_or_flag(world: &crate::distributed::World, n: Option<usize>) -> String {
    match n {
        Some(n) if !world.is_distributed() => format!("--num_processes {n}"),
        _ => world.to_string(),
    }
}

/// A digest of every job's resolved settings, compared across ranks.
fn jobs_hash(jobs: &[crate::pipeline::prompt_file::Job]) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same value in every process of this build.
    let mut h = std::hash::DefaultHasher::new();
    format!("{jobs:?}").hash(&mut h);
    h.finish()
}

/// `--scheduler`'s long help: every name it accepts.
fn scheduler_help() -> String {
    format!(
        "Sampler instead of the model's own, by our name, an A1111 name or a diffusers class name, case-insensitive \
         (spaces, - and _ do not count):\n{}",
        SchedulerKind::help_listing()
    )
}
