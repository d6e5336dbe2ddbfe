//! What long commands show and report: the progress bar (indicatif), and the numbers of
//! `--stats_json`.
use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps drawn with `template` (indicatif's syntax; a plain bar if it is invalid).
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar
}

/// The median of `values` (None when empty).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// The CUDA caching allocator's counters on `device` (None off CUDA), as JSON.
pub fn cuda_memory(device: tch::Device) -> serde_json::Value {
    match device {
        tch::Device::Cuda(i) => serde_json::to_value(crate::libtorch_extras::cuda_memory(i)).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}
