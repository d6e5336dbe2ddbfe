//! DVAR's early-stopping rule (Voronov et al., "Is This Loss Informative? Faster Text-to-Image
//! Customization by Tracking Objective Dynamics", arXiv 2302.04841): once a deterministic
//! evaluation loss stops moving, its recent values vary little compared with its whole history.
//! After each evaluation, with at least `window` of them, the ratio
//! `Var(last window) / Var(all)` (population variances, as `np.var`) is compared with the
//! threshold; training stops the first time it is below.

/// The rule's two numbers. The defaults are the paper's for Textual Inversion (its README's
/// `--early_stop_patience 310 --early_stop_eps 0.15`, one evaluation per update).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DvarRule {
    /// Evaluations in the recent window.
    pub window: usize,
    /// Stop when the normalized variance is below this.
    pub threshold: f64,
}

impl Default for DvarRule {
    fn default() -> Self {
        DvarRule { window: DEFAULT_WINDOW, threshold: DEFAULT_THRESHOLD }
    }
}

/// DVAR's window for Textual Inversion.
pub const DEFAULT_WINDOW: usize = 310;
/// DVAR's threshold for Textual Inversion.
pub const DEFAULT_THRESHOLD: f64 = 0.15;

/// Population variance (`np.var`), summed in f64.
fn variance(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n
}

impl DvarRule {
    /// `Var(last window) / Var(all)` of `history`; None with fewer than `window` values. A
    /// constant history gives NaN (0 / 0, as numpy), which never stops.
    pub fn normalized_variance(&self, history: &[f64]) -> Option<f64> {
        if self.window == 0 || history.len() < self.window {
            return None;
        }
        Some(variance(&history[history.len() - self.window..]) / variance(history))
    }

    /// Whether `history` (oldest first) stops training now.
    pub fn stops(&self, history: &[f64]) -> bool {
        self.normalized_variance(history).is_some_and(|r| r < self.threshold)
    }

    /// The first evaluation (0-based index into `history`) after which the rule stops, if any:
    /// what a run evaluating `history` one value at a time would do.
    pub fn first_stop(&self, history: &[f64]) -> Option<usize> {
        (0..history.len()).find(|&i| self.stops(&history[..=i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decaying curve with a deterministic wiggle (no random generator needed).
    fn decaying(n: usize) -> Vec<f64> {
        (0..n).map(|i| 0.1 + (-(i as f64) / 40.0).exp() + 0.01 * ((i * 7919 % 101) as f64 / 101.0 - 0.5)).collect()
    }

    #[test]
    fn nothing_before_a_full_window() {
        let rule = DvarRule { window: 10, threshold: 0.5 };
        assert_eq!(rule.normalized_variance(&decaying(9)), None);
        // With exactly a window of values the ratio is 1.
        assert_eq!(rule.normalized_variance(&decaying(10)), Some(1.0));
    }

    #[test]
    fn a_decaying_curve_stops_once_flat() {
        let rule = DvarRule { window: 50, threshold: 0.15 };
        let stop = rule.first_stop(&decaying(600)).expect("stops");
        // After the curve has flattened (two time constants), well before its end.
        assert!((60..200).contains(&stop), "{stop}");
    }

    #[test]
    fn a_still_decreasing_curve_does_not_stop() {
        let rule = DvarRule { window: 50, threshold: 0.15 };
        // A straight line stops once it is W / sqrt(T) long (Var scales with the length squared).
        let line: Vec<f64> = (0..120).map(|i| 1.0 - i as f64 / 600.0).collect();
        assert_eq!(rule.first_stop(&line), None);
    }

    #[test]
    fn a_constant_curve_never_stops() {
        let rule = DvarRule { window: 3, threshold: 0.15 };
        assert!(rule.normalized_variance(&[0.5; 10]).unwrap().is_nan());
        assert_eq!(rule.first_stop(&[0.5; 10]), None);
    }
}
