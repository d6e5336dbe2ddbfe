//! `--eval_steps`: what the loop asks of an inline evaluation, without knowing how it scores.
//! The CLIP scoring lives in [`crate::eval`] (which reads this crate's dataset and metrics
//! helpers); the training loop sees it only through [`StepScorer`], which the command wires
//! in, so `train` never depends on `eval` and there is no cycle between them.
//!
//! The loop calls [`StepScorer::score`] on every rank at the update the run starts from (0:
//! the initializer's embedding, the baseline the best rule's text margin compares against) and
//! every [`StepScorer::every`] updates after, with the global CPU generator's state saved
//! before and put back after, so the training draws (and seed parity with the script) are
//! untouched.
use super::trainer::Trainer;
use crate::distributed::ProcessGroup;
use crate::libtorch_extras::CpuRngState;
use crate::pipeline::Models;
use anyhow::Result;
use tch::Tensor;

/// One scored update: the two CLIP similarities (docs/evaluating.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipScores {
    pub image_similarity: f64,
    pub text_similarity: f64,
}

/// An evaluation run inside training, on every rank (collectives inside are allowed: every
/// rank calls it at the same updates).
pub trait StepScorer {
    /// Updates between evaluations (at `every`, `2 every`, ..., besides the first update).
    fn every(&self) -> u64;
    /// Scores `models` as they are now, whose learned rows are `rows` (`[n, D]`, the first
    /// text encoder's), at update `step`. The scores on rank 0, None on the others.
    fn score(&mut self, models: &Models, rows: &Tensor, step: u64, ranks: &ProcessGroup) -> Result<Option<ClipScores>>;
    /// The end of the run (rank 0 writes what it keeps for the end, e.g. the best step's file).
    fn finish(&mut self, ranks: &ProcessGroup) -> Result<()>;
}

impl Trainer<'_> {
    /// The inline evaluation of update `step`, if one is wired in and due (`first`: the update
    /// the run starts from, always scored).
    pub(super) fn score_inline(&mut self, first: bool) -> Result<()> {
        let step = self.run.position.global_step;
        let Some(scorer) = self.scorer.as_mut() else { return Ok(()) };
        if !first && step % scorer.every().max(1) != 0 {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let training_stream = CpuRngState::save()?;
        let scored = scorer.score(&self.model.models, &self.run.rows.trainable[0].detach(), step, self.ranks);
        training_stream.restore()?;
        if let Some(s) = scored? {
            tracing::info!(
                "step {step}: image_similarity {:.6}, text_similarity {:.6} (inline evaluation, {:.1} s)",
                s.image_similarity,
                s.text_similarity,
                started.elapsed().as_secs_f64()
            );
            self.report.clip_scores(step, s)?;
        }
        Ok(())
    }
}
