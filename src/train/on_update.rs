//! What an update triggers, in the script's order: `learned_embeds-steps-N` every
//! `--save_steps`, `checkpoint-N` (pruned to `--checkpoints_total_limit`) every
//! `--checkpointing_steps`, validation images every `--validation_steps`.
use super::state::{self, Checkpoint};
use super::trainer::Trainer;
use crate::formats::embeddings::{self as emb_files, Embedding, Encoder, OutFormat, Part};
use crate::libtorch_extras::CpuRngState;
use anyhow::Result;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Writes the `[n, D]` rows as the script's `save_progress` does (`.bin`: a `torch.save` dict).
pub fn save_embeddings(path: &Path, token: &str, rows: &Tensor) -> Result<()> {
    let tensor = crate::tensors::from_tch(&rows.detach().to_kind(Kind::Float).to_device(Device::Cpu))?;
    let e = Embedding { stored_token: Some(token.to_string()), parts: vec![Part { encoder: Encoder::TextEncoder, tensor }] };
    let format = if path.extension().is_some_and(|e| e == "bin") { OutFormat::DiffusersBin } else { OutFormat::Diffusers };
    emb_files::write(path, format, token, &e, None, None)?;
    tracing::info!("Saving embeddings to {}", path.display());
    Ok(())
}

impl Trainer<'_> {
    pub(super) fn on_update(&mut self) -> Result<()> {
        let gs = self.position.global_step;
        let out = &self.cfg.output;
        if gs % out.save_steps == 0 {
            let path = out.dir.join(format!("learned_embeds-steps-{gs}.{}", out.embedding_format.extension()));
            save_embeddings(&path, &self.cfg.placeholder_token, &self.trainable)?;
        }
        if gs % out.checkpointing_steps == 0 {
            self.save_checkpoint()?;
        }
        if self.validation_steps > 0 && gs % self.validation_steps == 0 {
            self.validate()?;
        }
        Ok(())
    }

    fn save_checkpoint(&self) -> Result<()> {
        let out = &self.cfg.output;
        if let Some(limit) = out.checkpoints_total_limit {
            state::prune(&out.dir, limit)?;
        }
        let dir = out.dir.join(format!("checkpoint-{}", self.position.global_step));
        let mut optimizer = self.opt.state()?;
        if let Some(s) = &self.scaler {
            optimizer.extend(s.state().into_iter().map(|(k, t)| (format!("scaler.{k}"), t)));
        }
        let checkpoint = Checkpoint { position: self.position.clone(), rows: self.trainable.detach(), optimizer, scheduler: self.lr_sched.state() };
        state::save(&dir, &checkpoint)?;
        tracing::info!("Saved state to {}", dir.display());
        Ok(())
    }

    /// A failed validation never ends the run: the embeddings are what the user waits for
    /// (libtorch failures arrive as panics: caught too).
    fn validate(&mut self) -> Result<()> {
        let Some(v) = &self.cfg.validation else { return Ok(()) };
        let (gs, seed) = (self.position.global_step, self.position.seed);
        // The script draws validation latents from a generator of its own; ours come from the
        // global CPU generator (on a GPU, from the device's), so its state is put back after.
        let training_stream = CpuRngState::save()?;
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            super::validation::validate(&self.models, v, &self.cfg.output.dir, seed, gs).and_then(|images| self.metrics.log_image_tensor(gs, &images))
        }));
        match run {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("validation at step {gs} failed, training goes on: {e:#}"),
            Err(_) => tracing::warn!("validation at step {gs} failed (see the error above), training goes on"),
        }
        training_stream.restore()
    }
}
