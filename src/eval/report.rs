//! `eval.json` and `eval.png`, rewritten after every evaluated step (a run stopped midway keeps
//! what it measured), for `evaluate --run` and `train --eval_steps` alike.
use super::best::{pick, BestBy, StepScores};
use super::plot::eval_plot;
use super::prompts::Property;
use super::step_eval::{EvalPrompt, StepResult};
use crate::formats::atomic;
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

/// The evaluation's report, in `eval.json`.
pub const EVAL_JSON: &str = "eval.json";
/// Both scores against the step.
pub const EVAL_PNG: &str = "eval.png";
/// The best step's embedding, in the diffusers format.
pub const BEST_FILE: &str = "learned_embeds.best.safetensors";
/// SDXL: the best step's second text encoder's rows, as train names that file
/// (`learned_embeds_2`), beside [`BEST_FILE`].
pub const BEST_FILE_2: &str = "learned_embeds_2.best.safetensors";

/// What the scores were computed with (`eval.json`'s `settings`).
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub run: String,
    pub pretrained_model_name_or_path: String,
    /// `sd` or `sdxl`.
    pub family: &'static str,
    pub clip_model: String,
    pub reference_dir: String,
    pub references: usize,
    pub token: String,
    pub learnable_property: Property,
    #[serde(flatten)]
    pub generation: Generation,
    pub best_by: BestBy,
    pub text_margin: f64,
    pub best_rule: String,
}

/// How the images of every step are made ([`super::step_eval::StepEval::generation`]).
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub prompts: Vec<EvalPrompt>,
    pub num_images: usize,
    pub seeds: Vec<u64>,
    pub num_inference_steps: usize,
    pub guidance_scale: f64,
    pub height: i64,
    pub width: i64,
    pub scheduler: String,
}

#[derive(Serialize)]
struct StepReport<'a> {
    #[serde(flatten)]
    scores: &'a StepScores,
    /// Each editing prompt's text_similarity, in the order of `prompts` (the reconstruction
    /// prompt's excluded); `text_similarity` is their mean.
    text_similarity_per_prompt: &'a [f64],
    grid: &'a str,
}

/// The rule `best_by` applies, in words (for eval.json and the log).
pub fn rule_text(by: BestBy, margin: f64) -> String {
    match by {
        BestBy::Rule => format!("highest image_similarity among steps whose text_similarity >= the first step's - {margin}"),
        BestBy::Image => "highest image_similarity".to_string(),
        BestBy::Text => "highest text_similarity".to_string(),
    }
}

/// The steps evaluated so far and where their report goes.
pub struct Report {
    output_dir: PathBuf,
    settings: Settings,
    steps: Vec<StepScores>,
    results: Vec<StepResult>,
}

impl Report {
    pub fn new(output_dir: PathBuf, settings: Settings) -> Self {
        Report { output_dir, settings, steps: Vec::new(), results: Vec::new() }
    }

    /// Adds step `step` (its embedding in `file`, or "" when none was saved) and rewrites
    /// `eval.json` and `eval.png`.
    pub fn push(&mut self, step: u64, file: String, r: StepResult) -> Result<StepScores> {
        let scores = StepScores { step, file, image_similarity: r.image_similarity, text_similarity: r.text_similarity };
        self.steps.push(scores.clone());
        self.results.push(r);
        self.write()?;
        Ok(scores)
    }

    pub fn steps(&self) -> &[StepScores] {
        &self.steps
    }

    /// The index of the best step so far, by the settings' rule.
    pub fn best(&self) -> Option<usize> {
        pick(&self.steps, self.settings.best_by, self.settings.text_margin)
    }

    fn write(&self) -> Result<()> {
        let best = self.best();
        let reports: Vec<StepReport> = self
            .steps
            .iter()
            .zip(&self.results)
            .map(|(s, r)| StepReport { scores: s, text_similarity_per_prompt: &r.text_similarity_per_prompt, grid: &r.grid })
            .collect();
        let json = serde_json::json!({
            "steps": reports,
            "best": best.map(|b| &reports[b]),
            "best_file": best.map(|_| BEST_FILE),
            "best_file_2": best.filter(|_| self.settings.family == "sdxl").map(|_| BEST_FILE_2),
            "settings": self.settings,
        });
        let mut bytes = serde_json::to_vec_pretty(&json)?;
        bytes.push(b'\n');
        atomic::write(&self.output_dir.join(EVAL_JSON), &bytes)?;
        atomic::write(&self.output_dir.join(EVAL_PNG), &eval_plot(&self.steps, best, 640, 400).to_png()?)?;
        Ok(())
    }
}
