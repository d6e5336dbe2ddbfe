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
use super::draws::Draws;
use super::inline_eval::StepScorer;
use super::plan::Plan;
use super::reporting::Reporting;
use super::run_state::{Batch, RunState};
use super::setup::{Data, Model};
use super::step::{self, StepInputs};
use crate::distributed::{ProcessGroup, World};
use crate::models::component::Component;
use anyhow::{Context, Result};
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// What a finished run leaves behind.
pub struct TrainOutcome {
    pub embeddings_file: PathBuf,
    pub global_step: u64,
    /// Per micro-step loss, in order.
    pub losses: Vec<f64>,
}

/// Trains as `cfg` says in this one process and writes the final `learned_embeds` file.
pub fn train(cfg: &TrainConfig) -> Result<TrainOutcome> {
    let single = ProcessGroup::init(&World::single())?;
    train_on(cfg, &single)
}

/// Trains as one of `ranks`, data-parallel as accelerate runs the script: each rank its share
/// of every epoch's batches, the gradients averaged at each update, rank 0 writing the files.
pub fn train_on(cfg: &TrainConfig, ranks: &ProcessGroup) -> Result<TrainOutcome> {
    train_with(cfg, ranks, None)
}

/// [`train_on`] with an inline evaluation (`--eval_steps`, [`super::inline_eval`]) scoring the
/// embedding as it trains.
pub fn train_with<'c>(cfg: &'c TrainConfig, ranks: &'c ProcessGroup, scorer: Option<Box<dyn StepScorer + 'c>>) -> Result<TrainOutcome> {
    let mut trainer = Trainer::start(cfg, ranks, scorer.is_some())?;
    trainer.scorer = scorer;
    trainer.run()?;
    trainer.finish()
}

/// A run in progress, grouped by what changes each part: [`super::setup`] makes the model and
/// the data, which stay as made; the loop here changes the run state and the reporting;
/// [`super::on_update`] saves the run state and validates.
pub(super) struct Trainer<'c> {
    pub(super) cfg: &'c TrainConfig,
    /// The data-parallel ranks (one process: a group of one).
    pub(super) ranks: &'c ProcessGroup,
    /// The model with the placeholder tokens, its noise schedule.
    pub(super) model: Model,
    /// The images, their captions and cached latents.
    pub(super) data: Data,
    /// Position, trained rows, optimizer, random stream: what a checkpoint holds or replays.
    pub(super) run: RunState,
    /// Epochs and validation steps, fixed at start.
    pub(super) plan: Plan,
    /// Metrics, progress bar, losses and timings.
    pub(super) report: Reporting,
    /// `--eval_loss_steps`: the fixed evaluation batch and its history.
    pub(super) eval: Option<super::eval_loss::Evaluator>,
    /// `--eval_steps`: the CLIP scoring wired in by the command (every rank).
    pub(super) scorer: Option<Box<dyn StepScorer + 'c>>,
}

impl Trainer<'_> {
    /// Epochs of batches until `max_train_steps` updates. The next batch and its random draws
    /// (CPU work, in the script's order) are made while the device still computes this one,
    /// before the loss is read back.
    fn run(&mut self) -> Result<()> {
        let optim = &self.cfg.optim;
        if self.run.done(optim.max_train_steps) {
            return Ok(());
        }
        // The embedding the run starts from: the baseline of the best rule.
        self.score_inline(true)?;
        let mut next = self.run.stream.fetch(self.plan.num_epochs);
        while let Some(batch) = next.take() {
            let loss = self.forward_backward(&batch)?;
            let sync = self.run.syncs(&batch, optim.gradient_accumulation_steps);
            if self.run.position.global_step + u64::from(sync) < optim.max_train_steps {
                next = self.run.stream.fetch(self.plan.num_epochs);
            }
            self.finish_micro_step(&batch, &loss)?;
            if self.stopped_early() {
                break;
            }
        }
        Ok(())
    }

    /// Latents from the cache (or the VAE), the loss and its backward, queued on the device.
    fn forward_backward(&self, batch: &Batch) -> Result<Tensor> {
        let (device, kind) = (self.cfg.device, self.cfg.precision.kind());
        let (models, data) = (&self.model.models, &self.data);
        let stacks = models.stacks();
        let mut ids: Vec<Vec<i64>> = vec![Vec::with_capacity(batch.items.len() * 77); stacks.len()];
        let mut time_ids = Vec::new();
        let (mut means, mut stds, mut pixels, mut masks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for item in &batch.items {
            let image = data.dataset.image_index(item.index);
            let text = data.captions.text(image, item.template, item.tags.as_deref(), &data.placeholder);
            tracing::trace!("item {} caption {text:?}", item.index);
            for (ids, stack) in ids.iter_mut().zip(&stacks) {
                ids.extend_from_slice(&stack.tokenizer.encode(&text)?);
            }
            // SDXL's size conditioning: the image's size, its crop, the size trained at.
            time_ids.extend_from_slice(&data.dataset.time_ids(image, item.flip));
            match data.cache.get(image, item.flip) {
                Some((m, s)) => {
                    means.push(m.shallow_clone());
                    stds.push(s.shallow_clone());
                }
                None => pixels.push(data.dataset.pixels(image, item.flip)?),
            }
            masks.extend(data.dataset.mask(image, item.flip)?);
        }
        let bsz = batch.items.len() as i64;
        if data.dataset.bucket_config().is_some() {
            let sizes: Vec<(u32, u32)> =
                batch.items.iter().filter_map(|i| data.dataset.geometry(data.dataset.image_index(i.index)).map(|g| g.size())).collect();
            if sizes.windows(2).any(|w| w[0] != w[1]) {
                anyhow::bail!("internal error: a batch mixes buckets {sizes:?}");
            }
            tracing::debug!("micro-step {}: bucket {:?}, {} items", self.run.position.micro_step, sizes.first(), sizes.len());
        }
        let Draws { posterior, noise, timesteps, offset } = &batch.draws;
        tracing::debug!(
            "micro-step {}: items {:?}, timesteps {:?}",
            self.run.position.micro_step,
            batch.items.iter().map(|i| (i.index, i.template, i.flip)).collect::<Vec<_>>(),
            Vec::<i64>::try_from(timesteps).unwrap_or_default()
        );
        let (posterior, noise, timesteps) = (posterior.to_device(device), noise.to_device(device), timesteps.to_device(device));
        // `noise += noise_offset * randn(B, C, 1, 1)`, in the noise's dtype.
        let noise = match offset {
            Some(o) => (noise.to_kind(Kind::Float) + o.to_device(device) * self.cfg.loss.noise_offset).to_kind(noise.kind()),
            None => noise,
        };
        let scaling = models.vae.config.scaling_factor;
        let latents = tch::no_grad(|| {
            let (mean, std) = if pixels.is_empty() {
                (Tensor::cat(&means, 0), Tensor::cat(&stds, 0))
            } else {
                let post = models.vae.encode(&Tensor::stack(&pixels, 0).to_device(device).to_kind(kind))?;
                (post.mean, post.std)
            };
            Ok::<_, anyhow::Error>((mean.to_kind(Kind::Float) + std.to_kind(Kind::Float) * posterior.to_kind(Kind::Float)) * scaling)
        })?;
        let mut ids = ids.into_iter().map(|ids| Tensor::from_slice(&ids).reshape([bsz, -1]).to_device(device));
        let input_ids = ids.next().unwrap_or_else(|| Tensor::zeros([bsz, 77], (Kind::Int64, device)));
        let xl = models.text_2.is_some();
        let time_ids = xl.then(|| Tensor::from_slice(&time_ids).reshape([bsz, 6]).to_kind(Kind::Float).to_device(device));
        let mask = (!masks.is_empty()).then(|| Tensor::stack(&masks, 0).to_device(device));
        let x = StepInputs { input_ids, input_ids_2: ids.next(), time_ids, latents, noise, timesteps, mask };
        let scale = self.run.rows.loss_scale() / self.cfg.optim.gradient_accumulation_steps as f64;
        let recompute = self.cfg.gradient_checkpointing;
        let encoders: Vec<&crate::models::clip::ClipTextModel> = models.stacks().into_iter().map(|t| &t.encoder).collect();
        step::loss_and_backward(&encoders, &models.unet, &self.model.ddpm, &x, kind, &self.cfg.loss, scale, recompute)
    }

    /// Reads the loss back, and updates when accelerate would sync (every
    /// `gradient_accumulation_steps` batches and at an epoch's last batch).
    fn finish_micro_step(&mut self, batch: &Batch, loss: &Tensor) -> Result<()> {
        let loss_value = loss.double_value(&[]);
        self.report.loss_read(loss_value);
        if self.run.end_micro_step(batch, self.cfg.optim.gradient_accumulation_steps) {
            self.update()?;
        }
        self.report.log(&self.run.position, batch.epoch, loss_value, self.run.rows.lr())
    }

    /// The optimizer and LR steps (skipped on an fp16 overflow), then what the update triggers.
    fn update(&mut self) -> Result<()> {
        self.run.update(self.cfg.loss.max_grad_norm, self.ranks)?;
        self.report.updated(self.run.position.global_step);
        // Evaluated first, so that a checkpoint of this update holds its evaluation.
        self.evaluate()?;
        self.score_inline(false)?;
        self.on_update()
    }

    /// The end of the run: loss.png, the full pipeline if asked, the final `learned_embeds`,
    /// written by rank 0 once every rank has finished (the script's `wait_for_everyone`).
    fn finish(mut self) -> Result<TrainOutcome> {
        self.report.finish()?;
        if let Some(scorer) = self.scorer.as_mut() {
            scorer.finish(self.ranks)?;
        }
        self.ranks.barrier().context("waiting for every rank to finish")?;
        let out = &self.cfg.output;
        if self.ranks.rank() != 0 {
            let embeddings_file = out.dir.join(format!("learned_embeds.{}", out.embedding_format.extension()));
            return Ok(TrainOutcome { embeddings_file, global_step: self.run.position.global_step, losses: self.report.take_losses() });
        }
        if self.model.models.family.is_xl() && self.plan.validates() {
            // textual_inversion_sdxl.py validates once more at the end.
            self.validate_final()?;
        }
        if out.save_as_full_pipeline {
            let folders = [Component::TextEncoder, Component::TextEncoder2];
            let model = &self.model;
            let encoders: Vec<(Component, &[i64], &Tensor)> =
                folders.iter().zip(model.token_ids.iter().zip(&self.run.rows.trainable)).map(|(&e, (ids, rows))| (e, ids.as_slice(), rows)).collect();
            super::full_pipeline::save(&model.repo, &out.dir, self.cfg.variant.as_deref(), &model.tokens, &encoders)?;
        }
        let final_path = self.save_embeddings(None)?;
        if let Some(path) = &out.stats_json {
            self.report.write_stats(self.cfg, path, &self.run.rows.trainable)?;
        }
        if let Some(push) = &out.push {
            super::push::publish(push, &out.dir)?;
        }
        Ok(TrainOutcome { embeddings_file: final_path, global_step: self.run.position.global_step, losses: self.report.take_losses() })
    }
}
