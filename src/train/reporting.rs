//! What a run reports while it trains: the metrics (`metrics.jsonl`, TensorBoard), the progress
//! bar, each micro-step's loss and time, and at the end `--stats_json`.
use super::config::TrainConfig;
use super::metrics::Metrics;
use super::state::Position;
use anyhow::Result;
use std::path::Path;
use std::time::Instant;
use tch::Tensor;

pub(super) struct Reporting {
    /// None on a data-parallel rank other than 0: rank 0 writes the files.
    metrics: Option<Metrics>,
    bar: indicatif::ProgressBar,
    /// Per micro-step loss, in order.
    losses: Vec<f64>,
    /// When the run started, and when each micro-step's loss was read (for `--stats_json`).
    started: Instant,
    step_times: Vec<Instant>,
    /// The rows this run started from (for `--stats_json`: how far training moved them).
    initial_rows: Vec<Tensor>,
    /// `--eval_loss_steps`: this update's evaluation loss and DVAR's ratio, logged with the
    /// micro-step that made the update.
    pending_eval: Option<(f64, Option<f64>)>,
}

impl Reporting {
    /// The metrics files and the progress bar of a run that started at `started` and is at
    /// update `global_step`, training `trainable` (copied: the rows it starts from).
    pub(super) fn start(cfg: &TrainConfig, started: Instant, global_step: u64, trainable: &[Tensor], main: bool) -> Result<Self> {
        let initial_rows: Vec<Tensor> = trainable.iter().map(|t| t.detach().copy()).collect();
        let max_train_steps = cfg.optim.max_train_steps;
        let metrics = if main { Some(Metrics::new(&cfg.output.dir, &cfg.output.logging_dir, cfg.output.report_to)?) } else { None };
        let bar = if main {
            crate::progress::bar(max_train_steps, "Steps {pos}/{len} [{bar:30}] {per_sec} ETA {eta} {msg}")
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_position(global_step);
        if global_step >= max_train_steps {
            // The script would still run one more update here (its stop check follows the step).
            tracing::info!("the checkpoint is already at step {global_step} of {max_train_steps}: nothing to train");
        }
        Ok(Reporting { metrics, bar, losses: Vec::new(), started, step_times: Vec::new(), initial_rows, pending_eval: None })
    }

    /// A micro-step's loss, read back now.
    pub(super) fn loss_read(&mut self, loss: f64) {
        self.step_times.push(Instant::now());
        self.losses.push(loss);
    }

    /// The progress bar at update `global_step`.
    pub(super) fn updated(&self, global_step: u64) {
        self.bar.set_position(global_step);
    }

    /// A finished micro-step's metrics record and progress message.
    pub(super) fn log(&mut self, p: &Position, epoch: u64, loss: f64, lr: f64) -> Result<()> {
        let eval = self.pending_eval.take();
        if let Some(m) = &mut self.metrics {
            m.log_with_eval(p.global_step, p.micro_step, epoch, loss, lr, eval)?;
        }
        self.bar.set_message(format!("loss={loss:.4} lr={lr:.3e}"));
        Ok(())
    }

    /// An evaluation loss (and DVAR's normalized variance, once there is a window of them),
    /// written with the next micro-step record.
    pub(super) fn eval_loss(&mut self, value: f64, normalized_variance: Option<f64>) {
        tracing::info!("eval_loss {value:.6}{}", normalized_variance.map(|r| format!(" (normalized variance {r:.4})")).unwrap_or_default());
        self.pending_eval = Some((value, normalized_variance));
    }

    /// `--eval_steps`: update `step`'s CLIP scores, to TensorBoard now and `metrics.jsonl` with
    /// the next record.
    pub(super) fn clip_scores(&mut self, step: u64, s: super::inline_eval::ClipScores) -> Result<()> {
        self.metrics.as_mut().map_or(Ok(()), |m| m.log_clip_scores(step, s.image_similarity, s.text_similarity))
    }

    /// Validation images of update `step`, `[n, H, W, 3]` u8.
    pub(super) fn log_images(&mut self, step: u64, images: &Tensor) -> Result<()> {
        self.metrics.as_mut().map_or(Ok(()), |m| m.log_image_tensor(step, images))
    }

    /// The bar finished and the metrics files flushed (`loss.png`).
    pub(super) fn finish(&mut self) -> Result<()> {
        self.bar.finish();
        self.metrics.as_mut().map_or(Ok(()), Metrics::finish)
    }

    /// The losses, taken out for the run's outcome.
    pub(super) fn take_losses(&mut self) -> Vec<f64> {
        std::mem::take(&mut self.losses)
    }

    /// `--stats_json`: start-up, seconds per micro-step (the median, the first excluded: it
    /// includes warm-up), peak device memory, the losses, and how far `trainable` moved.
    pub(super) fn write_stats(&self, cfg: &TrainConfig, path: &Path, trainable: &[Tensor]) -> Result<()> {
        let gaps: Vec<f64> = self.step_times.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        let stats = serde_json::json!({
            "command": "train",
            "device": crate::device::device_name(cfg.device),
            "precision": format!("{:?}", cfg.precision).to_lowercase(),
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "batch_size": cfg.optim.batch_size,
            "resolution": cfg.data.resolution,
            "startup_s": self.step_times.first().map(|t| (*t - self.started).as_secs_f64()),
            "total_s": self.started.elapsed().as_secs_f64(),
            "micro_steps": self.step_times.len(),
            "s_per_micro_step": crate::progress::median(&gaps),
            "losses": self.losses,
            "rows_moved_l2": trainable.iter().zip(&self.initial_rows).map(|(t, i)| (&t.detach() - i).norm().double_value(&[]).powi(2)).sum::<f64>().sqrt(),
            "rows_l2": self.initial_rows.iter().map(|i| i.norm().double_value(&[]).powi(2)).sum::<f64>().sqrt(),
            "cuda_memory": crate::progress::cuda_memory(cfg.device),
        });
        crate::formats::atomic::write(path, serde_json::to_string_pretty(&stats)?.as_bytes())?;
        Ok(())
    }
}
