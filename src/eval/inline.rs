//! `train --eval_steps N`: the embedding scored with CLIP while it trains, exactly as
//! `evaluate --run` scores a saved step ([`StepEval`]: same prompts, seeds, generation and
//! scoring), at the update the run starts from and every N updates after. The training run's
//! own UNet, VAE and text encoder make the images (nothing is loaded twice); CLIP is loaded
//! once per rank. Rank 0 writes `OUTPUT_DIR/eval/` as `evaluate --run` writes its output
//! folder, and at the end the best step's rows as `learned_embeds.best.safetensors`.
use super::best::BestBy;
use super::prompts::Property;
use super::report::{rule_text, Report, Settings, BEST_FILE};
use super::scorer::ClipScorer;
use super::step_eval::{eval_prompts, StepEval};
use crate::distributed::ProcessGroup;
use crate::formats::atomic;
use crate::pipeline::{GenerateOptions, Models};
use crate::train::config::TrainConfig;
use crate::train::inline_eval::{ClipScores, StepScorer};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The folder of the training run's output folder the evaluation writes to.
pub const EVAL_DIR: &str = "eval";

/// What `--eval_steps` and its flags ask for.
#[derive(Debug, Clone)]
pub struct InlineConfig {
    /// Updates between evaluations.
    pub every: u64,
    pub clip_model: String,
    pub clip_revision: Option<String>,
    pub clip_batch_size: usize,
    /// What the reconstruction prompt's images are compared with (default the training images).
    pub reference_dir: PathBuf,
    pub property: Property,
    pub reconstruction_prompt: Option<String>,
    pub editing_prompts: Vec<String>,
    /// Images per prompt, seeds `options.seed..+num_images`.
    pub num_images: usize,
    /// `steps` and `seed` (the first); the rest the pipeline's defaults.
    pub options: GenerateOptions,
    pub best_by: BestBy,
    pub text_margin: f64,
}

impl InlineConfig {
    /// The checks that need no model: a wrong flag fails before anything loads.
    pub fn check(&self) -> Result<()> {
        if self.every == 0 {
            bail!("--eval_steps must be at least 1");
        }
        if self.num_images == 0 {
            bail!("--eval_num_images must be at least 1");
        }
        if !self.text_margin.is_finite() || self.text_margin < 0.0 {
            bail!("--text_margin {} must be a finite number >= 0", self.text_margin);
        }
        if !self.reference_dir.is_dir() {
            bail!(
                "--eval_reference_dir {} is not a folder (it defaults to --train_data_dir; a Hub dataset id needs --eval_reference_dir)",
                self.reference_dir.display()
            );
        }
        let mut check = self.options.clone();
        check.num_images_per_prompt = 1;
        check.check().context("--eval_num_inference_steps")
    }
}

/// The scorer a training run calls ([`StepScorer`]).
pub struct InlineEval {
    cfg: InlineConfig,
    scorer: ClipScorer,
    eval: StepEval,
    references: usize,
    token: String,
    run: PathBuf,
    model: String,
    /// Where `learned_embeds-steps-N` files go and how they are named.
    save_steps: u64,
    extension: &'static str,
    /// Rank 0's report, made at the first evaluation (its settings need the model).
    report: Option<Report>,
    /// Rank 0: the rows of each evaluated step (f32, CPU), for the best file.
    rows: Vec<Tensor>,
}

impl InlineEval {
    /// Loads CLIP onto `train`'s device and embeds the references and the prompts' texts.
    pub fn new(cfg: InlineConfig, train: &TrainConfig, main: bool) -> Result<Self> {
        cfg.check()?;
        let token = train.placeholder_token.clone();
        let prompts = eval_prompts(cfg.property, cfg.reconstruction_prompt.as_deref(), &cfg.editing_prompts, &token)?;
        let started = std::time::Instant::now();
        let scorer = ClipScorer::load(&cfg.clip_model, cfg.clip_revision.as_deref(), train.device)?.with_batch_size(cfg.clip_batch_size)?;
        let references = scorer.folder_embeds(&cfg.reference_dir, "--eval_reference_dir")?;
        let output_dir = train.output.dir.join(EVAL_DIR);
        if main {
            atomic::ensure_dir(&train.output.dir, Path::new(EVAL_DIR)).with_context(|| format!("cannot create {}", output_dir.display()))?;
        }
        let seeds: Vec<u64> = (0..cfg.num_images as u64).map(|i| cfg.options.seed.wrapping_add(i)).collect();
        let eval = StepEval::new(&scorer, references.embeds, prompts, seeds, cfg.options.clone(), None, output_dir)?;
        tracing::info!("--eval_steps {}: loaded {} in {:.2} s", cfg.every, cfg.clip_model, started.elapsed().as_secs_f64());
        Ok(InlineEval {
            scorer,
            eval,
            references: references.files.len(),
            token,
            run: train.output.dir.clone(),
            model: train.model.name_or_path.clone(),
            save_steps: train.output.save_steps,
            extension: train.output.embedding_format.extension(),
            report: None,
            rows: Vec::new(),
            cfg,
        })
    }

    fn settings(&self, models: &Models) -> Result<Settings> {
        Ok(Settings {
            run: self.run.display().to_string(),
            pretrained_model_name_or_path: self.model.clone(),
            // --eval_steps refuses SDXL runs.
            family: "sd",
            clip_model: self.cfg.clip_model.clone(),
            reference_dir: self.cfg.reference_dir.display().to_string(),
            references: self.references,
            token: self.token.clone(),
            learnable_property: self.cfg.property,
            generation: self.eval.generation(models)?,
            best_by: self.cfg.best_by,
            text_margin: self.cfg.text_margin,
            best_rule: rule_text(self.cfg.best_by, self.cfg.text_margin),
        })
    }
}

impl StepScorer for InlineEval {
    fn every(&self) -> u64 {
        self.cfg.every
    }

    fn score(&mut self, models: &Models, rows: &Tensor, step: u64, ranks: &ProcessGroup) -> Result<Option<ClipScores>> {
        if models.family.is_xl() {
            bail!("--eval_steps scores SD 1.x/2.x runs; SDXL runs (two text encoders) are not supported yet");
        }
        let result = self.eval.score(models, &self.scorer, step, ranks, &|| {})?;
        let Some(result) = result else { return Ok(None) };
        if self.report.is_none() {
            self.report = Some(Report::new(self.eval.output_dir.clone(), self.settings(models)?));
        }
        // The file training saves at this update, if it saves one (written after the scoring).
        let file = if step > 0 && step % self.save_steps.max(1) == 0 {
            self.run.join(format!("learned_embeds-steps-{step}.{}", self.extension)).display().to_string()
        } else {
            String::new()
        };
        let report = self.report.as_mut().context("the report")?;
        let s = report.push(step, file, result)?;
        self.rows.push(rows.detach().to_kind(Kind::Float).to_device(Device::Cpu).copy());
        Ok(Some(ClipScores { image_similarity: s.image_similarity, text_similarity: s.text_similarity }))
    }

    fn finish(&mut self, ranks: &ProcessGroup) -> Result<()> {
        if ranks.rank() != 0 {
            return Ok(());
        }
        let Some(report) = &self.report else { return Ok(()) };
        match report.best() {
            Some(b) => {
                let out = self.eval.output_dir.join(BEST_FILE);
                crate::train::on_update::save_embeddings(&out, &self.token, &self.rows[b])?;
                tracing::info!("best evaluated step: {} ({})", report.steps()[b].step, rule_text(self.cfg.best_by, self.cfg.text_margin));
            }
            None => tracing::warn!("no evaluated step has finite scores: no best step, {BEST_FILE} not written"),
        }
        Ok(())
    }
}
