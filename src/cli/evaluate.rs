//! `textual-inversion evaluate`: CLIP scores of a folder of images against the training images
//! and a prompt, or (`--run`) of every saved embedding of a training run, with the best picked
//! (docs/evaluating.md).
use crate::device::{parse_device, Precision};
use crate::eval::best::{BestBy, DEFAULT_TEXT_MARGIN};
use crate::eval::prompts::Property;
use crate::eval::run_eval::{self, RunEvalConfig};
use crate::eval::scorer::{similarities, ClipScorer, DEFAULT_BATCH_SIZE};
use crate::models::repo::ModelSource;
use crate::models::stable_diffusion::{LoadOptions, WeightOptions};
use crate::pipeline::GenerateOptions;
use crate::schedulers::SchedulerKind;
use crate::train::run_record::{RunRecord, RUN_RECORD};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// The CLIP model: a transformers CLIPModel folder or Hub id (e.g.
    /// openai/clip-vit-large-patch14), with its preprocessor_config.json and tokenizer.
    #[arg(long = "clip_model")]
    pub clip_model: String,
    /// Branch, tag or commit of a --clip_model Hub id (default main).
    #[arg(long = "clip_revision")]
    pub clip_revision: Option<String>,
    /// The images to compare with: usually the training images (--train_data_dir). With --run,
    /// default: the --train_data_dir the run's run.json records.
    #[arg(long = "reference_dir", required_unless_present = "run")]
    pub reference_dir: Option<PathBuf>,
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
    /// checkpoint-N/, the final learned_embeds.*; an SDXL run's learned_embeds_2 pairs) is
    /// generated with and scored.
    #[arg(long, requires = "output_dir")]
    pub run: Option<PathBuf>,
    /// With --run: the model the run was trained on (folder, Hub id or single file). Default:
    /// the one the run's run.json records (with its --revision, --variant, --config and
    /// --prediction_type).
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
    /// With --run: what the run learned; chooses the default prompts. Default: the run's
    /// (run.json), else object.
    #[arg(long = "learnable_property", value_enum)]
    pub property: Option<Property>,
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
    /// With --run: image height (default the run's --resolution from run.json, else the
    /// model's).
    #[arg(long)]
    pub height: Option<i64>,
    /// With --run: image width (default the run's --resolution from run.json, else the
    /// model's).
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
    let (Some(images_dir), Some(text), Some(reference_dir)) = (&a.images, &a.text, &a.reference_dir) else {
        anyhow::bail!("--images, --text and --reference_dir are needed (or --run)");
    };
    // The folders are checked before the model is loaded: a wrong path fails in a second.
    for (flag, dir) in [("--reference_dir", reference_dir), ("--images", images_dir)] {
        if !dir.is_dir() {
            anyhow::bail!("{flag} {} is not a folder", dir.display());
        }
    }
    let scorer = ClipScorer::load(&a.clip_model, a.clip_revision.as_deref(), a.device)?.with_batch_size(a.batch_size)?;
    let references = scorer.folder_embeds(reference_dir, "--reference_dir")?;
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

/// The model flags of `evaluate --run`: as given, else the run's record. The record's
/// revision, variant, config and prediction type come with its model only: a model named on
/// the command line is taken with the flags given beside it.
fn run_model(r: &RunArgs, record: Option<&RunRecord>, run: &Path) -> Result<(ModelSource, Option<String>)> {
    if let Some(model) = &r.model {
        return Ok((ModelSource { name_or_path: model.clone(), revision: r.revision.clone(), ..Default::default() }, r.variant.clone()));
    }
    let Some(rec) = record else {
        anyhow::bail!(
            "--run {} has no {RUN_RECORD} (a run of an earlier version?): give --pretrained_model_name_or_path, the model it was trained on",
            run.display()
        );
    };
    let source = ModelSource {
        name_or_path: rec.pretrained_model_name_or_path.clone(),
        revision: r.revision.clone().or_else(|| rec.revision.clone()),
        config: rec.config.clone(),
        prediction_type: rec.prediction()?,
    };
    Ok((source, r.variant.clone().or_else(|| rec.variant.clone())))
}

/// `evaluate --run`: prints each step's scores and the best.
fn run_folder(a: EvaluateArgs) -> Result<()> {
    let r = a.run;
    let (Some(run), Some(output_dir)) = (r.run.clone(), r.output_dir.clone()) else {
        anyhow::bail!("--run needs --output_dir");
    };
    let record = if run.is_dir() { RunRecord::read(&run)? } else { None };
    let (model, variant) = run_model(&r, record.as_ref(), &run)?;
    let reference_dir = match (a.reference_dir, &record) {
        (Some(d), _) => d,
        (None, Some(rec)) => rec.train_data_dir.clone(),
        (None, None) => anyhow::bail!("--run {} has no {RUN_RECORD}: give --reference_dir, the run's training images", run.display()),
    };
    let property = match (r.property, &record) {
        (Some(p), _) => p,
        (None, Some(rec)) if rec.learnable_property == "style" => Property::Style,
        _ => Property::Object,
    };
    let size = record.as_ref().map(|rec| rec.resolution as i64);
    if let Some(rec) = &record {
        tracing::info!(
            "{}: trained on {} ({}) with --train_data_dir {}, {} {}, resolution {}",
            run.join(RUN_RECORD).display(),
            rec.pretrained_model_name_or_path,
            rec.family,
            rec.train_data_dir.display(),
            rec.learnable_property,
            rec.placeholder_token,
            rec.resolution
        );
    }
    let cfg = RunEvalConfig {
        run,
        model,
        load: LoadOptions {
            weights: WeightOptions { variant, use_safetensors: None },
            text_encoder_variant: true,
            tokenizer_dir: None,
            device: a.device,
            precision: r.dtype,
        },
        clip_model: a.clip_model,
        clip_revision: a.clip_revision,
        clip_batch_size: a.batch_size,
        reference_dir,
        token: r.token,
        property,
        reconstruction_prompt: r.reconstruction_prompt,
        editing_prompts: r.editing_prompts,
        num_images: r.num_images,
        options: GenerateOptions {
            negative_prompt: r.negative_prompt,
            height: r.height.or(size),
            width: r.width.or(size),
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
        if result.xl {
            println!("second text encoder's rows: {}", output_dir.join(run_eval::BEST_FILE_2).display());
        }
    }
    Ok(())
}
