//! `textual-inversion evaluate`: CLIP scores of a folder of images against the training images
//! and a prompt, or (`--run`) of every saved embedding of a training run, with the best picked
//! (docs/evaluating.md).
use crate::device::{parse_device, Precision};
use crate::eval::best::{BestBy, DEFAULT_TEXT_MARGIN};
use crate::eval::prompts::Property;
use crate::eval::run_eval::{self, RunEvalConfig};
use crate::eval::scorer::{similarities, ClipScorer, DEFAULT_BATCH_SIZE};
use crate::models::stable_diffusion::{LoadOptions, WeightOptions};
use crate::pipeline::GenerateOptions;
use crate::schedulers::SchedulerKind;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// The CLIP model: a transformers CLIPModel folder or Hub id (e.g.
    /// openai/clip-vit-large-patch14), with its preprocessor_config.json and tokenizer.
    #[arg(long = "clip_model")]
    pub clip_model: String,
    /// Branch, tag or commit of a --clip_model Hub id (default main).
    #[arg(long = "clip_revision")]
    pub clip_revision: Option<String>,
    /// The images to compare with: usually the training images (--train_data_dir).
    #[arg(long = "reference_dir")]
    pub reference_dir: PathBuf,
    /// The images to score (e.g. generated with the learned token). Required without --run.
    #[arg(long, required_unless_present = "run", conflicts_with = "run")]
    pub images: Option<PathBuf>,
    /// The text to score the images against (e.g. the prompt without the learned token).
    /// Required without --run.
    #[arg(long, required_unless_present = "run", conflicts_with = "run")]
    pub text: Option<String>,
    /// Also write the scores as JSON to this file (replaced atomically).
    #[arg(long, conflicts_with = "run")]
    pub json: Option<PathBuf>,
    /// cpu, cuda, cuda:N, mps.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: tch::Device,
    /// Images per forward pass of CLIP's vision tower.
    #[arg(long = "batch_size", default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    #[command(flatten)]
    pub run: RunArgs,
}

/// The flags of `evaluate --run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A training run's --output_dir: every saved embedding in it (learned_embeds-steps-N.*,
    /// checkpoint-N/, the final learned_embeds.*) is generated with and scored.
    #[arg(long, requires_all = ["model", "output_dir"])]
    pub run: Option<PathBuf>,
    /// With --run: the model the run was trained on (folder, Hub id or single file).
    #[arg(long = "pretrained_model_name_or_path", alias = "model")]
    pub model: Option<String>,
    /// With --run: branch, tag or commit of the model's Hub id.
    #[arg(long)]
    pub revision: Option<String>,
    /// With --run: load the model's weights of this variant (e.g. fp16).
    #[arg(long)]
    pub variant: Option<String>,
    /// With --run: where eval.json, eval.png, the grids, the images and
    /// learned_embeds.best.safetensors go (not the run folder).
    #[arg(long = "output_dir")]
    pub output_dir: Option<PathBuf>,
    /// With --run: the learned token (default: the one stored in the run's files).
    #[arg(long = "placeholder_token")]
    pub token: Option<String>,
    /// With --run: what the run learned; chooses the default prompts.
    #[arg(long = "learnable_property", value_enum, default_value = "object")]
    pub property: Property,
    /// With --run: the prompt whose images are compared with --reference_dir; {} stands for the
    /// token (default "a photo of a {}"; style: "a painting in the style of {}").
    #[arg(long = "reconstruction_prompt")]
    pub reconstruction_prompt: Option<String>,
    /// With --run: an editing prompt ({} for the token), repeatable; replaces the default set.
    #[arg(long = "editing_prompt")]
    pub editing_prompts: Vec<String>,
    /// With --run: images per prompt and step, with seeds --seed, --seed+1, ...
    #[arg(long = "num_images", default_value_t = 4)]
    pub num_images: usize,
    /// With --run: the first seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// With --run: denoising steps per image.
    #[arg(long = "num_inference_steps", default_value_t = 50)]
    pub steps: usize,
    /// With --run: classifier-free guidance (default the pipeline's, 7.5).
    #[arg(long = "guidance_scale")]
    pub guidance_scale: Option<f64>,
    /// With --run: the negative prompt of every image.
    #[arg(long = "negative_prompt")]
    pub negative_prompt: Option<String>,
    /// With --run: image height (default the model's).
    #[arg(long)]
    pub height: Option<i64>,
    /// With --run: image width (default the model's).
    #[arg(long)]
    pub width: Option<i64>,
    /// With --run: another scheduler built from the model's config.
    #[arg(long)]
    pub scheduler: Option<SchedulerKind>,
    /// With --run: precision of the UNet and VAE.
    #[arg(long, value_enum, ignore_case = true, default_value = "fp32")]
    pub dtype: Precision,
    /// With --run: which step is best: rule (highest image_similarity among steps whose
    /// text_similarity >= the first step's - --text_margin), image or text (that score alone).
    #[arg(long = "best_by", value_enum, default_value = "rule")]
    pub best_by: BestBy,
    /// With --run and --best_by rule: how far text_similarity may fall below the first step's.
    #[arg(long = "text_margin", default_value_t = DEFAULT_TEXT_MARGIN)]
    pub text_margin: f64,
}

/// What `--json` holds: the two scores, and what they were computed from.
#[derive(serde::Serialize)]
struct Report<'a> {
    image_similarity: f64,
    text_similarity: f64,
    images: usize,
    references: usize,
    text: &'a str,
    clip_model: &'a str,
}

pub fn run(a: EvaluateArgs) -> Result<()> {
    if a.run.run.is_some() {
        return run_folder(a);
    }
    let (Some(images_dir), Some(text)) = (&a.images, &a.text) else {
        anyhow::bail!("--images and --text are needed (or --run)");
    };
    // The folders are checked before the model is loaded: a wrong path fails in a second.
    for (flag, dir) in [("--reference_dir", &a.reference_dir), ("--images", images_dir)] {
        if !dir.is_dir() {
            anyhow::bail!("{flag} {} is not a folder", dir.display());
        }
    }
    let scorer = ClipScorer::load(&a.clip_model, a.clip_revision.as_deref(), a.device)?.with_batch_size(a.batch_size)?;
    let references = scorer.folder_embeds(&a.reference_dir, "--reference_dir")?;
    let images = scorer.folder_embeds(images_dir, "--images")?;
    let text_embeds = scorer.text_embeds(&[text.as_str()])?;
    let scores = similarities(&images.embeds, &references.embeds, &text_embeds)?;
    println!("image_similarity {:.6}", scores.image_similarity);
    println!("text_similarity {:.6}", scores.text_similarity);
    if let Some(path) = &a.json {
        let report = Report {
            image_similarity: scores.image_similarity,
            text_similarity: scores.text_similarity,
            images: images.files.len(),
            references: references.files.len(),
            text,
            clip_model: &a.clip_model,
        };
        let mut bytes = serde_json::to_vec_pretty(&report)?;
        bytes.push(b'\n');
        crate::formats::atomic::write(path, &bytes).with_context(|| format!("writing --json {}", path.display()))?;
    }
    Ok(())
}

/// `evaluate --run`: prints each step's scores and the best.
fn run_folder(a: EvaluateArgs) -> Result<()> {
    let r = a.run;
    let (Some(run), Some(model), Some(output_dir)) = (r.run, r.model, r.output_dir) else {
        anyhow::bail!("--run needs --pretrained_model_name_or_path and --output_dir");
    };
    let cfg = RunEvalConfig {
        run,
        model: crate::models::repo::ModelSource { name_or_path: model, revision: r.revision, ..Default::default() },
        load: LoadOptions {
            weights: WeightOptions { variant: r.variant, use_safetensors: None },
            text_encoder_variant: true,
            tokenizer_dir: None,
            device: a.device,
            precision: r.dtype,
        },
        clip_model: a.clip_model,
        clip_revision: a.clip_revision,
        clip_batch_size: a.batch_size,
        reference_dir: a.reference_dir,
        token: r.token,
        property: r.property,
        reconstruction_prompt: r.reconstruction_prompt,
        editing_prompts: r.editing_prompts,
        num_images: r.num_images,
        options: GenerateOptions {
            negative_prompt: r.negative_prompt,
            height: r.height,
            width: r.width,
            steps: r.steps,
            guidance_scale: r.guidance_scale,
            seed: r.seed,
            ..Default::default()
        },
        scheduler: r.scheduler,
        output_dir: output_dir.clone(),
        best_by: r.best_by,
        text_margin: r.text_margin,
    };
    let result = run_eval::run(&cfg)?;
    println!("step image_similarity text_similarity");
    for s in &result.steps {
        println!("{} {:.6} {:.6}", s.step, s.image_similarity, s.text_similarity);
    }
    if let Some(b) = result.best {
        println!(
            "best step {} ({}): {}",
            result.steps[b].step,
            run_eval::rule_text(cfg.best_by, cfg.text_margin),
            output_dir.join(run_eval::BEST_FILE).display()
        );
    }
    Ok(())
}
