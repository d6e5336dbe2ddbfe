//! Which evaluated step is "best". Training longer raises `image_similarity` (the images look
//! more like the training set) and lowers `text_similarity` (they follow the rest of the prompt
//! less): the Textual Inversion paper's reconstruction–editability trade-off. The default rule
//! takes the most faithful step that has not yet given up editability: the highest
//! `image_similarity` among the steps whose `text_similarity` is at least the first evaluated
//! step's minus a margin.
use serde::Serialize;

/// The scores of one evaluated step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepScores {
    pub step: u64,
    pub file: String,
    pub image_similarity: f64,
    pub text_similarity: f64,
}

/// What `--best_by` picks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BestBy {
    /// The highest image_similarity among steps whose text_similarity is at least the first
    /// step's minus --text_margin.
    Rule,
    /// The highest image_similarity (reconstruction alone).
    Image,
    /// The highest text_similarity (editability alone).
    Text,
}

/// The default `--text_margin`: editability may drop by this much (in cosine) from the first
/// evaluated step's.
pub const DEFAULT_TEXT_MARGIN: f64 = 0.02;

/// The index of the best of `steps` (in step order) by `by`; ties go to the earliest step, and
/// scores that are not finite never win. None when no step has finite scores.
pub fn pick(steps: &[StepScores], by: BestBy, text_margin: f64) -> Option<usize> {
    let finite = |s: &StepScores| s.image_similarity.is_finite() && s.text_similarity.is_finite();
    let floor = steps.iter().find(|s| finite(s)).map(|s| s.text_similarity - text_margin)?;
    let mut best: Option<(usize, f64)> = None;
    for (i, s) in steps.iter().enumerate().filter(|(_, s)| finite(s)) {
        let value = match by {
            BestBy::Rule if s.text_similarity < floor => continue,
            BestBy::Rule | BestBy::Image => s.image_similarity,
            BestBy::Text => s.text_similarity,
        };
        if best.is_none_or(|(_, v)| value > v) {
            best = Some((i, value));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: &[(u64, f64, f64)]) -> Vec<StepScores> {
        rows.iter().map(|&(step, i, t)| StepScores { step, file: format!("s{step}"), image_similarity: i, text_similarity: t }).collect()
    }

    #[test]
    fn the_rule_takes_the_most_faithful_step_that_keeps_editability() {
        // Image similarity rises with training, text similarity falls: step 300 is the last
        // within 0.02 of the first step's 0.30; 400 and 500 are more faithful but too far below.
        let t = table(&[(100, 0.60, 0.30), (200, 0.70, 0.295), (300, 0.75, 0.281), (400, 0.80, 0.27), (500, 0.85, 0.20)]);
        assert_eq!(pick(&t, BestBy::Rule, 0.02).map(|i| t[i].step), Some(300));
        assert_eq!(pick(&t, BestBy::Rule, 0.0).map(|i| t[i].step), Some(100));
        assert_eq!(pick(&t, BestBy::Rule, 1.0).map(|i| t[i].step), Some(500));
        assert_eq!(pick(&t, BestBy::Image, 0.02).map(|i| t[i].step), Some(500));
        assert_eq!(pick(&t, BestBy::Text, 0.02).map(|i| t[i].step), Some(100));
    }

    #[test]
    fn a_step_above_the_start_counts_and_ties_go_to_the_earliest() {
        let t = table(&[(1, 0.5, 0.2), (2, 0.9, 0.25), (3, 0.9, 0.25), (4, 0.95, 0.17)]);
        assert_eq!(pick(&t, BestBy::Rule, 0.02).map(|i| t[i].step), Some(2));
    }

    #[test]
    fn scores_that_are_not_finite_never_win() {
        let t = table(&[(1, f64::NAN, 0.3), (2, 0.4, 0.2), (3, f64::INFINITY, 0.2), (4, 0.5, 0.19)]);
        // The first finite step (2) sets the floor: 0.2 - 0.02.
        assert_eq!(pick(&t, BestBy::Rule, 0.02).map(|i| t[i].step), Some(4));
        assert_eq!(pick(&table(&[(1, f64::NAN, 0.1)]), BestBy::Image, 0.02), None);
        assert_eq!(pick(&[], BestBy::Rule, 0.02), None);
    }
}
