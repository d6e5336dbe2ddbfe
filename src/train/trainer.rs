//! The training loop of `textual_inversion.py`: epochs of batches in the script's order, each
//! micro-step's loss ([`super::step::loss`]) and backward, accelerate's sync rule for gradient
//! accumulation, and on each update the optimizer and LR steps followed by what the update
//! triggers ([`super::on_update`]: `--save_steps` files, `checkpoint-N`, validation). What comes
//! before the first step is [`super::setup`].
//!
//! SDXL (`textual_inversion_sdxl.py`): the step gets each tokenizer's caption ids and each
//! image's time ids, and the trainable rows are one tensor per text encoder, both in the one
//! AdamW.
use super::config::TrainConfig;
use super::draws::{Draws, StepDraws};
use super::grad_scaler::GradScaler;
use super::latent_cache::LatentCache;
use super::lr_schedule::LrScheduler;
use super::metrics::Metrics;
use super::optim::AdamW;
use super::script_rng::{Item, ScriptStream};
use super::state::Position;
use super::step::{self, StepInputs};
use crate::models::repo::ModelRepo;
use crate::pipeline::Models;
use crate::schedulers::DdpmScheduler;
use anyhow::Result;
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// What a finished run leaves behind.
pub struct TrainOutcome {
    pub embeddings_file: PathBuf,
    pub global_step: u64,
    /// Per micro-step loss, in order.
    pub losses: Vec<f64>,
}

/// Trains as `cfg` says and writes the final `learned_embeds` file.
pub fn train(cfg: &TrainConfig) -> Result<TrainOutcome> {
    let mut trainer = Trainer::start(cfg)?;
    trainer.run()?;
    trainer.finish()
}

/// One micro-step's data: the items, whether it ends its epoch, its draws.
pub(super) struct Batch {
    items: Vec<Item>,
    last: bool,
    draws: Draws,
    epoch: u64,
}

/// A run in progress.
pub(super) struct Trainer<'c> {
    pub(super) cfg: &'c TrainConfig,
    pub(super) repo: ModelRepo,
    pub(super) dataset: super::dataset::Dataset,
    pub(super) models: Models,
    pub(super) ddpm: DdpmScheduler,
    /// `P, P_1, ...` and their ids in each tokenizer.
    pub(super) tokens: Vec<String>,
    pub(super) token_ids: Vec<Vec<i64>>,
    /// The `[n, D]` placeholder rows of each text encoder: the only tensors with gradient.
    pub(super) trainable: Vec<Tensor>,
    pub(super) opt: AdamW,
    pub(super) lr_sched: LrScheduler,
    /// fp16 loss scaling (None in fp32 and bf16, as accelerate).
    pub(super) scaler: Option<GradScaler>,
    pub(super) position: Position,
    pub(super) cache: LatentCache,
    /// Each item's caption (template, caption file, tags).
    pub(super) captions: super::dataset::Captions,
    /// All placeholder tokens, as captions write the concept.
    pub(super) placeholder: String,
    pub(super) draws: StepDraws,
    pub(super) stream: ScriptStream,
    /// The epoch of the next batch fetched.
    pub(super) epoch: u64,
    pub(super) num_epochs: u64,
    /// Updates between validations (0: none).
    pub(super) validation_steps: u64,
    pub(super) metrics: Metrics,
    pub(super) bar: indicatif::ProgressBar,
    pub(super) losses: Vec<f64>,
    /// When the run started, and when each micro-step's loss was read (for `--stats_json`).
    pub(super) started: std::time::Instant,
    pub(super) step_times: Vec<std::time::Instant>,
    /// The rows this run started from (for `--stats_json`: how far training moved them).
    pub(super) initial_rows: Vec<Tensor>,
}

impl Trainer<'_> {
    fn done(&self) -> bool {
        self.position.global_step >= self.cfg.optim.max_train_steps
    }

    /// Epochs of batches until `max_train_steps` updates. The next batch and its random draws
    /// (CPU work, in the script's order) are made while the device still computes this one,
    /// before the loss is read back.
    fn run(&mut self) -> Result<()> {
        if self.done() {
            return Ok(());
        }
        let mut next = self.fetch();
        while let Some(batch) = next.take() {
            let loss = self.forward_backward(&batch)?;
            let sync = (self.position.accumulation + 1) % self.cfg.optim.gradient_accumulation_steps == 0 || batch.last;
            if self.position.global_step + u64::from(sync) < self.cfg.optim.max_train_steps {
                next = self.fetch();
            }
            self.finish_micro_step(&batch, &loss)?;
        }
        Ok(())
    }

    /// The next batch of the script's stream and its draws (starting the next epoch when one
    /// ends); None after the last epoch.
    fn fetch(&mut self) -> Option<Batch> {
        if !self.stream.in_epoch() {
            if self.epoch >= self.num_epochs {
                return None;
            }
            self.stream.start_epoch();
        }
        let (items, last) = self.stream.next_batch()?;
        let draws = self.draws.draw(items.len() as i64);
        let batch = Batch { items, last, draws, epoch: self.epoch };
        if last {
            self.epoch += 1;
        }
        Some(batch)
    }

    /// `--stats_json`: start-up, seconds per micro-step (the median, the first excluded: it
    /// includes warm-up), peak device memory, and the losses.
    fn write_stats(&self, path: &std::path::Path) -> Result<()> {
        let gaps: Vec<f64> = self.step_times.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        let stats = serde_json::json!({
            "command": "train",
            "device": crate::device::device_name(self.cfg.device),
            "precision": format!("{:?}", self.cfg.precision).to_lowercase(),
            "gradient_checkpointing": self.cfg.gradient_checkpointing,
            "batch_size": self.cfg.optim.batch_size,
            "resolution": self.cfg.data.resolution,
            "startup_s": self.step_times.first().map(|t| (*t - self.started).as_secs_f64()),
            "total_s": self.started.elapsed().as_secs_f64(),
            "micro_steps": self.step_times.len(),
            "s_per_micro_step": crate::progress::median(&gaps),
            "losses": self.losses,
            "rows_moved_l2": self.trainable.iter().zip(&self.initial_rows).map(|(t, i)| (&t.detach() - i).norm().double_value(&[]).powi(2)).sum::<f64>().sqrt(),
            "rows_l2": self.initial_rows.iter().map(|i| i.norm().double_value(&[]).powi(2)).sum::<f64>().sqrt(),
            "cuda_memory": crate::progress::cuda_memory(self.cfg.device),
        });
        crate::formats::atomic::write(path, serde_json::to_string_pretty(&stats)?.as_bytes())?;
        Ok(())
    }

    /// Latents from the cache (or the VAE), the loss and its backward, queued on the device.
    fn forward_backward(&self, batch: &Batch) -> Result<Tensor> {
        let (device, kind) = (self.cfg.device, self.cfg.precision.kind());
        let stacks = self.models.stacks();
        let mut ids: Vec<Vec<i64>> = vec![Vec::with_capacity(batch.items.len() * 77); stacks.len()];
        let mut time_ids = Vec::new();
        let (mut means, mut stds, mut pixels) = (Vec::new(), Vec::new(), Vec::new());
        let res = self.cfg.data.resolution as i64;
        for item in &batch.items {
            let image = self.dataset.image_index(item.index);
            let text = self.captions.text(image, item.template, item.tags.as_deref(), &self.placeholder);
            tracing::trace!("item {} caption {text:?}", item.index);
            for (ids, stack) in ids.iter_mut().zip(&stacks) {
                ids.extend_from_slice(&stack.tokenizer.encode(&text)?);
            }
            // SDXL's size conditioning: the image's size, crop (0, 0), the resolution.
            let (oh, ow) = self.dataset.images()[image].original_size;
            time_ids.extend_from_slice(&[oh as i64, ow as i64, 0, 0, res, res]);
            match self.cache.get(image, item.flip) {
                Some((m, s)) => {
                    means.push(m.shallow_clone());
                    stds.push(s.shallow_clone());
                }
                None => pixels.push(self.dataset.pixels(image, item.flip)?),
            }
        }
        let bsz = batch.items.len() as i64;
        let Draws { posterior, noise, timesteps, offset } = &batch.draws;
        tracing::debug!(
            "micro-step {}: items {:?}, timesteps {:?}",
            self.position.micro_step,
            batch.items.iter().map(|i| (i.index, i.template, i.flip)).collect::<Vec<_>>(),
            Vec::<i64>::try_from(timesteps).unwrap_or_default()
        );
        let (posterior, noise, timesteps) = (posterior.to_device(device), noise.to_device(device), timesteps.to_device(device));
        // `noise += noise_offset * randn(B, C, 1, 1)`, in the noise's dtype.
        let noise = match offset {
            Some(o) => (noise.to_kind(Kind::Float) + o.to_device(device) * self.cfg.loss.noise_offset).to_kind(noise.kind()),
            None => noise,
        };
        let scaling = self.models.vae.config.scaling_factor;
        let latents = tch::no_grad(|| {
            let (mean, std) = if pixels.is_empty() {
                (Tensor::cat(&means, 0), Tensor::cat(&stds, 0))
            } else {
                let post = self.models.vae.encode(&Tensor::stack(&pixels, 0).to_device(device).to_kind(kind))?;
                (post.mean, post.std)
            };
            Ok::<_, anyhow::Error>((mean.to_kind(Kind::Float) + std.to_kind(Kind::Float) * posterior.to_kind(Kind::Float)) * scaling)
        })?;
        let mut ids = ids.into_iter().map(|ids| Tensor::from_slice(&ids).reshape([bsz, -1]).to_device(device));
        let input_ids = ids.next().unwrap_or_else(|| Tensor::zeros([bsz, 77], (Kind::Int64, device)));
        let xl = self.models.text_2.is_some();
        let time_ids = xl.then(|| Tensor::from_slice(&time_ids).reshape([bsz, 6]).to_kind(Kind::Float).to_device(device));
        let x = StepInputs { input_ids, input_ids_2: ids.next(), time_ids, latents, noise, timesteps };
        let scale = self.scaler.as_ref().map_or(1.0, |s| s.scale) / self.cfg.optim.gradient_accumulation_steps as f64;
        let recompute = self.cfg.gradient_checkpointing;
        let encoders: Vec<&crate::models::clip::ClipTextModel> = self.models.stacks().into_iter().map(|t| &t.encoder).collect();
        step::loss_and_backward(&encoders, &self.models.unet, &self.ddpm, &x, kind, &self.cfg.loss, scale, recompute)
    }

    /// Reads the loss back, and updates when accelerate would sync (every
    /// `gradient_accumulation_steps` batches and at an epoch's last batch).
    fn finish_micro_step(&mut self, batch: &Batch, loss: &Tensor) -> Result<()> {
        let loss_value = loss.double_value(&[]);
        self.step_times.push(std::time::Instant::now());
        self.losses.push(loss_value);
        let p = &mut self.position;
        p.micro_step += 1;
        p.accumulation += 1;
        let sync = p.accumulation % self.cfg.optim.gradient_accumulation_steps == 0 || batch.last;
        if batch.last {
            p.accumulation = 0;
        }
        if sync {
            self.update()?;
        }
        let p = &self.position;
        self.metrics.log(p.global_step, p.micro_step, batch.epoch, loss_value, self.lr_sched.lr())?;
        self.bar.set_message(format!("loss={loss_value:.4} lr={:.3e}", self.lr_sched.lr()));
        Ok(())
    }

    /// The optimizer and LR steps (skipped on an fp16 overflow), then what the update triggers.
    fn update(&mut self) -> Result<()> {
        let finite = match self.scaler.as_mut() {
            Some(s) => s.unscale(&self.trainable)?,
            None => true,
        };
        if finite {
            if let Some(max) = self.cfg.loss.max_grad_norm {
                super::optim::clip_grad_norm(&self.trainable, max);
            }
            self.opt.step()?;
            self.opt.set_lr(self.lr_sched.step());
        } else {
            tracing::warn!("fp16 gradient overflow: skipping this update, loss scale now {}", self.scaler.as_ref().map_or(0.0, |s| s.scale));
        }
        self.opt.zero_grad();
        self.position.global_step += 1;
        self.bar.set_position(self.position.global_step);
        self.on_update()
    }

    /// The end of the run: loss.png, the full pipeline if asked, the final `learned_embeds`.
    fn finish(mut self) -> Result<TrainOutcome> {
        self.bar.finish();
        self.metrics.finish()?;
        let out = &self.cfg.output;
        if self.models.family.is_xl() && self.validation_steps > 0 {
            // textual_inversion_sdxl.py validates once more at the end.
            self.validate_final()?;
        }
        if out.save_as_full_pipeline {
            let folders = [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")];
            let encoders: Vec<(&str, &str, &[i64], &Tensor)> =
                folders.iter().zip(self.token_ids.iter().zip(&self.trainable)).map(|(&(t, e), (ids, rows))| (t, e, ids.as_slice(), rows)).collect();
            super::full_pipeline::save(&self.repo, &out.dir, self.cfg.variant.as_deref(), &self.tokens, &encoders)?;
        }
        let final_path = self.save_embeddings(None)?;
        if let Some(path) = &out.stats_json {
            self.write_stats(path)?;
        }
        Ok(TrainOutcome { embeddings_file: final_path, global_step: self.position.global_step, losses: std::mem::take(&mut self.losses) })
    }
}
