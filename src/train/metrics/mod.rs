//! Training metrics: TensorBoard event files (as the Python script's `--report_to tensorboard`),
//! a JSON Lines log and a loss-curve PNG.
//!
//! Both streams (`metrics.jsonl`, the event file) are append-only and each record goes to the OS
//! in one write, so a crash loses at most the record being written; `loss.png` is written
//! atomically by [`Metrics::finish`].
mod grid;
mod plot;
mod tensorboard;

pub use grid::{image_grid, Rgb8};
pub use plot::{loss_plot, loss_plot_with_eval, smooth};
pub(crate) use plot::{text_width, ticks, Canvas, CHAR_H, CHAR_W};
pub use tensorboard::{crc32c, masked_crc32c, tfrecord, EventWriter};

use crate::formats::atomic;
use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;
use tch::Tensor;
use tensorboard::now_secs;

/// accelerate's run name for the script's trackers (`init_trackers("textual_inversion")`).
pub const RUN_NAME: &str = "textual_inversion";
/// The JSON Lines log in the output directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The loss curve written by [`Metrics::finish`].
pub const LOSS_PNG: &str = "loss.png";
/// Size of `loss.png` in pixels.
pub const LOSS_PNG_SIZE: (u32, u32) = (800, 400);

// ---------------------------------------------------------------------------------------------
// --report_to

/// Where `--report_to` sends the scalars. `metrics.jsonl` and `loss.png` are written either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReportTo {
    /// TensorBoard event files under `output_dir/logging_dir/textual_inversion` (the default).
    #[default]
    Tensorboard,
    /// No tracker.
    None,
}

impl FromStr for ReportTo {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tensorboard" => Ok(Self::Tensorboard),
            "none" => Ok(Self::None),
            "wandb" | "comet_ml" | "all" => {
                bail!("--report_to {s} is not available in this tool; use tensorboard or none")
            }
            _ => bail!("unknown --report_to value `{s}`; use tensorboard or none"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The facade

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Optimizer step (the script's `global_step`, the TensorBoard step).
    pub step: u64,
    /// Micro-step (batches seen, counting gradient-accumulation steps).
    pub micro_step: u64,
    pub epoch: u64,
    /// `null` when not finite.
    pub loss: Option<f64>,
    pub lr: Option<f64>,
    /// Seconds since [`Metrics::new`].
    pub elapsed_s: f64,
    /// Micro-steps per second over the last (up to) 20 micro-steps.
    pub it_per_s: f64,
    /// `--eval_loss_steps`: the fixed batch's loss after this micro-step's update (absent on
    /// the other lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// `--early_stopping`: DVAR's `Var(last window) / Var(all)` of the evaluation losses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_normalized_var: Option<f64>,
    /// `--eval_steps`: the CLIP scores of update `scored_step`'s embedding (0: the
    /// initializer's), on the record of the micro-step that made that update (the first
    /// record for update 0; absent on the other lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_similarity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_similarity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_step: Option<u64>,
}

const RATE_WINDOW: usize = 20;

/// What the trainer logs to: TensorBoard (per `--report_to`), `metrics.jsonl`, `loss.png`.
pub struct Metrics {
    output_dir: PathBuf,
    events: Option<EventWriter>,
    jsonl: File,
    jsonl_path: PathBuf,
    start: Instant,
    recent: VecDeque<Instant>,
    losses: Vec<(u64, f64)>,
    /// `(micro_step, eval_loss)` for the plot.
    eval_losses: Vec<(u64, f64)>,
    /// `--eval_steps`: `(update, image_similarity, text_similarity)` for the next record.
    pending_clip: Option<(u64, f64, f64)>,
}

impl Metrics {
    /// Opens `output_dir/metrics.jsonl` for appending (a resumed run continues it) and, for
    /// TensorBoard, a new event file in `output_dir/logging_dir/textual_inversion` (an absolute
    /// `logging_dir` is used as is, like the script's `Path(output_dir, logging_dir)`).
    pub fn new(output_dir: &Path, logging_dir: &str, report_to: ReportTo) -> Result<Self> {
        atomic::ensure_dir(output_dir, Path::new("")).with_context(|| format!("creating {}", output_dir.display()))?;
        let jsonl_path = output_dir.join(METRICS_FILE);
        // Never through a link planted at the name (an append would write wherever it points).
        let mut jsonl = atomic::open_append(&jsonl_path).with_context(|| format!("opening {}", jsonl_path.display()))?;
        // A crash mid-line leaves a partial last line: end it so the next record starts clean.
        let len = jsonl.metadata()?.len();
        if len > 0 {
            let mut last = [0u8];
            jsonl.seek(SeekFrom::Start(len - 1))?;
            jsonl.read_exact(&mut last)?;
            if last[0] != b'\n' {
                jsonl.write_all(b"\n").with_context(|| format!("writing {}", jsonl_path.display()))?;
            }
        }
        let events = match report_to {
            ReportTo::Tensorboard => {
                let rel = Path::new(logging_dir).join(RUN_NAME);
                // A relative logging_dir lies inside the output folder: created without
                // following links; an absolute one is the user's own choice.
                let dir = if rel.is_absolute() { rel } else { atomic::ensure_dir(output_dir, &rel)? };
                Some(EventWriter::create(&dir)?)
            }
            ReportTo::None => None,
        };
        let start = Instant::now();
        Ok(Self {
            output_dir: output_dir.to_path_buf(),
            events,
            jsonl,
            jsonl_path,
            start,
            recent: VecDeque::from([start]),
            losses: Vec::new(),
            eval_losses: Vec::new(),
            pending_clip: None,
        })
    }

    /// The TensorBoard event file, if `--report_to tensorboard`.
    pub fn event_file(&self) -> Option<&Path> {
        self.events.as_ref().map(|e| e.path())
    }

    /// Logs one micro-step: `loss` and `lr` at `step` to TensorBoard, a line to `metrics.jsonl`.
    pub fn log(&mut self, step: u64, micro_step: u64, epoch: u64, loss: f64, lr: f64) -> Result<()> {
        self.log_with_eval(step, micro_step, epoch, loss, lr, None)
    }

    /// [`Self::log`] with `--eval_loss_steps`' evaluation loss and DVAR's normalized variance
    /// (`eval_loss` and `eval_normalized_var` in both streams).
    pub fn log_with_eval(&mut self, step: u64, micro_step: u64, epoch: u64, loss: f64, lr: f64, eval: Option<(f64, Option<f64>)>) -> Result<()> {
        let now = Instant::now();
        self.recent.push_back(now);
        if self.recent.len() > RATE_WINDOW + 1 {
            self.recent.pop_front();
        }
        let span = now.duration_since(self.recent[0]).as_secs_f64();
        let clip = self.pending_clip.take();
        let it_per_s = if span > 0.0 { (self.recent.len() - 1) as f64 / span } else { 0.0 };
        let record = Record {
            step,
            micro_step,
            epoch,
            loss: loss.is_finite().then_some(loss),
            lr: lr.is_finite().then_some(lr),
            elapsed_s: now.duration_since(self.start).as_secs_f64(),
            it_per_s,
            eval_loss: eval.map(|e| e.0).filter(|v| v.is_finite()),
            eval_normalized_var: eval.and_then(|e| e.1).filter(|v| v.is_finite()),
            image_similarity: clip.map(|c| c.1).filter(|v| v.is_finite()),
            text_similarity: clip.map(|c| c.2).filter(|v| v.is_finite()),
            scored_step: clip.map(|c| c.0),
        };
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        self.jsonl.write_all(&line).and_then(|()| self.jsonl.flush()).with_context(|| format!("writing {}", self.jsonl_path.display()))?;
        if let Some(ev) = &mut self.events {
            let t = now_secs();
            ev.add_scalar("loss", loss as f32, step, t)?;
            ev.add_scalar("lr", lr as f32, step, t)?;
            if let Some((value, ratio)) = eval {
                ev.add_scalar("eval_loss", value as f32, step, t)?;
                if let Some(r) = ratio {
                    ev.add_scalar("eval_normalized_var", r as f32, step, t)?;
                }
            }
        }
        if let Some((value, _)) = eval.filter(|e| e.0.is_finite()) {
            self.eval_losses.push((micro_step, value));
        }
        if loss.is_finite() {
            self.losses.push((micro_step, loss));
        }
        Ok(())
    }

    /// `--eval_steps`: the CLIP scores of update `step`, as TensorBoard scalars
    /// `image_similarity` and `text_similarity` at that step now, and in `metrics.jsonl` on the
    /// next record.
    pub fn log_clip_scores(&mut self, step: u64, image_similarity: f64, text_similarity: f64) -> Result<()> {
        self.pending_clip = Some((step, image_similarity, text_similarity));
        if let Some(ev) = &mut self.events {
            let t = now_secs();
            ev.add_scalar("image_similarity", image_similarity as f32, step, t)?;
            ev.add_scalar("text_similarity", text_similarity as f32, step, t)?;
        }
        Ok(())
    }

    /// Logs validation images as one grid tagged `validation` at `step` (the script passes the
    /// epoch). Does nothing without TensorBoard.
    pub fn log_images(&mut self, step: u64, images: &[Rgb8]) -> Result<()> {
        let Some(ev) = &mut self.events else {
            return Ok(());
        };
        ev.add_image("validation", &image_grid(images)?, step, now_secs())
    }

    /// [`Self::log_images`] for `[n, H, W, 3]` u8 pixels.
    pub fn log_image_tensor(&mut self, step: u64, pixels: &Tensor) -> Result<()> {
        if self.events.is_none() {
            return Ok(());
        }
        let images = Rgb8::from_tensor(pixels)?;
        self.log_images(step, &images)
    }

    /// Writes `output_dir/loss.png` (atomically) from this run's losses.
    pub fn finish(&mut self) -> Result<()> {
        let path = self.output_dir.join(LOSS_PNG);
        let png = loss_plot_with_eval(&self.losses, &self.eval_losses, LOSS_PNG_SIZE.0, LOSS_PNG_SIZE.1).to_png()?;
        atomic::write(&path, &png).with_context(|| format!("writing {}", path.display()))
    }
}
