//! What an update triggers, in the script's order: `learned_embeds-steps-N` every
//! `--save_steps` (SDXL: also `learned_embeds_2-steps-N`), `checkpoint-N` (pruned to
//! `--checkpoints_total_limit`) every `--checkpointing_steps`, validation images every
//! `--validation_steps`. Also where the embedding files are written.
use super::state;
use super::trainer::Trainer;
use crate::formats::embeddings::{self as emb_files, Embedding, Encoder, OutFormat, Part};
use crate::libtorch_extras::CpuRngState;
use anyhow::{Context, Result};
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

/// The trigger word files are named after, as the web UIs name an embedding after its file:
/// the placeholder without its brackets, path separators as `_`.
pub fn trigger_name(placeholder: &str) -> String {
    let trigger: String = placeholder.trim_matches(|c| c == '<' || c == '>').chars().map(|c| if c == '/' || c == '\\' { '_' } else { c }).collect();
    if trigger.is_empty() || trigger.starts_with('.') || trigger.starts_with("learned_embeds") {
        format!("embedding-{trigger}")
    } else {
        trigger
    }
}

/// `--save_format a1111|kohya` for SD 1.x/2.x: the web UI's `.pt` (`string_to_param`, `name`,
/// `step`, `sd_checkpoint_name`) or kohya's `{emb_params}` safetensors.
fn save_extra(path: &Path, format: OutFormat, name: &str, rows: &Tensor, step: u64, model: &str) -> Result<()> {
    let tensor = crate::tensors::from_tch(&rows.detach().to_kind(Kind::Float).to_device(Device::Cpu))?;
    let e = Embedding { stored_token: Some(name.to_string()), parts: vec![Part { encoder: Encoder::TextEncoder, tensor }] };
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("step".to_string(), step.to_string());
    metadata.insert("sd_checkpoint_name".to_string(), model.to_string());
    let source =
        emb_files::EmbeddingFile { kind: emb_files::FileKind::TorchZip("archive".into()), layout: emb_files::Layout::A1111, metadata, embeddings: Vec::new() };
    emb_files::write(path, format, name, &e, Some(&source), None)?;
    tracing::info!("Saving the {} embedding to {}", format.name(), path.display());
    Ok(())
}

/// SDXL's one-file layout, `{clip_l: [n, 768], clip_g: [n, 1280]}`, which the A1111 web UI,
/// kohya and ComfyUI load (ours, beside the script's pair of files).
fn save_sdxl_pair(path: &Path, rows: &[Tensor]) -> Result<()> {
    let parts = [Encoder::ClipL, Encoder::ClipG]
        .into_iter()
        .zip(rows)
        .map(|(encoder, r)| Ok(Part { encoder, tensor: crate::tensors::from_tch(&r.detach().to_kind(Kind::Float).to_device(Device::Cpu))? }))
        .collect::<Result<Vec<_>>>()?;
    let e = Embedding { stored_token: None, parts };
    let stem = crate::formats::embeddings::file_stem(path);
    emb_files::write(path, OutFormat::Sdxl, &stem, &e, None, None)?;
    tracing::info!("Saving the {{clip_l, clip_g}} embedding to {}", path.display());
    Ok(())
}

impl Trainer<'_> {
    /// The script's files for update `step` (`learned_embeds-steps-N.*`; the final
    /// `learned_embeds.*` for None): one per text encoder, SDXL's second `learned_embeds_2`.
    /// Returns the first one's path.
    pub(super) fn save_embeddings(&self, step: Option<u64>) -> Result<std::path::PathBuf> {
        let out = &self.cfg.output;
        let suffix = step.map(|s| format!("-steps-{s}")).unwrap_or_default();
        let mut first = None;
        for (i, rows) in self.run.rows.trainable.iter().enumerate() {
            let name = if i == 0 { "learned_embeds" } else { "learned_embeds_2" };
            let path = out.dir.join(format!("{name}{suffix}.{}", out.embedding_format.extension()));
            save_embeddings(&path, &self.cfg.placeholder_token, rows)?;
            first.get_or_insert(path);
        }
        self.save_extra_formats(step)?;
        first.context("no text encoder rows to save")
    }

    /// The files named after the trigger word: SDXL's `{clip_l, clip_g}` file at the end (and
    /// at each save step with `--save_format`), SD's `--save_format` files (`<trigger>.pt`,
    /// `<trigger>-N.pt` as the web UI names them; kohya's `<trigger>.safetensors`,
    /// `<trigger>-step0000000N.safetensors`).
    fn save_extra_formats(&self, step: Option<u64>) -> Result<()> {
        use super::config::SaveFormat;
        let out = &self.cfg.output;
        let trigger = trigger_name(&self.cfg.placeholder_token);
        let extra: Vec<SaveFormat> = out.extra_formats.iter().copied().filter(|f| *f != SaveFormat::Diffusers).collect();
        let trainable = &self.run.rows.trainable;
        if trainable.len() == 2 {
            if step.is_none() || !extra.is_empty() {
                let suffix = step.map(|s| format!("-{s}")).unwrap_or_default();
                save_sdxl_pair(&out.dir.join(format!("{trigger}{suffix}.safetensors")), trainable)?;
            }
            return Ok(());
        }
        // A1111's sd_checkpoint_name: the model's name (its last path component).
        let described = self.model.repo.describe();
        let model = described.trim_end_matches('/').rsplit('/').next().unwrap_or(&described).to_string();
        let step_n = step.unwrap_or(self.run.position.global_step);
        for format in extra {
            let (format, file) = match (format, step) {
                (SaveFormat::A1111, None) => (OutFormat::A1111, format!("{trigger}.pt")),
                (SaveFormat::A1111, Some(s)) => (OutFormat::A1111, format!("{trigger}-{s}.pt")),
                (SaveFormat::Kohya, None) => (OutFormat::Kohya, format!("{trigger}.safetensors")),
                (SaveFormat::Kohya, Some(s)) => (OutFormat::Kohya, format!("{trigger}-step{s:08}.safetensors")),
                (SaveFormat::Diffusers, _) => continue,
            };
            save_extra(&out.dir.join(file), format, &trigger, &trainable[0], step_n, &model)?;
        }
        Ok(())
    }

    /// Rank 0's: the other data-parallel ranks write nothing (the script's `--save_steps`
    /// files come from every rank, the same bytes to the same names; one writer is enough).
    pub(super) fn on_update(&mut self) -> Result<()> {
        if self.ranks.rank() != 0 {
            return Ok(());
        }
        let gs = self.run.position.global_step;
        let out = &self.cfg.output;
        if gs % out.save_steps == 0 {
            self.save_embeddings(Some(gs))?;
        }
        if gs % out.checkpointing_steps == 0 {
            self.save_checkpoint()?;
        }
        if self.plan.validates_at(gs) {
            self.validate()?;
        }
        Ok(())
    }

    fn save_checkpoint(&self) -> Result<()> {
        let out = &self.cfg.output;
        if let Some(limit) = out.checkpoints_total_limit {
            state::prune(&out.dir, limit)?;
        }
        let dir = out.dir.join(format!("checkpoint-{}", self.run.position.global_step));
        let mut checkpoint = self.run.checkpoint()?;
        checkpoint.eval_history = self.eval.as_ref().map(|e| e.history().to_vec()).unwrap_or_default();
        state::save(&dir, &checkpoint)?;
        tracing::info!("Saved state to {}", dir.display());
        Ok(())
    }

    /// A failed validation never ends the run: the embeddings are what the user waits for
    /// (libtorch failures arrive as panics: caught too).
    fn validate(&mut self) -> Result<()> {
        self.validate_at(self.run.position.global_step)
    }

    /// textual_inversion_sdxl.py's last validation, after training.
    pub(super) fn validate_final(&mut self) -> Result<()> {
        self.validate_at(self.run.position.global_step)
    }

    fn validate_at(&mut self, gs: u64) -> Result<()> {
        let Some(v) = &self.cfg.validation else { return Ok(()) };
        let seed = self.run.position.seed;
        // The script draws validation latents from a generator of its own; ours come from the
        // global CPU generator (on a GPU, from the device's), so its state is put back after.
        let training_stream = CpuRngState::save()?;
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            super::validation::validate(&self.model.models, v, &self.cfg.output.dir, seed, gs).and_then(|images| self.report.log_images(gs, &images))
        }));
        match run {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("validation at step {gs} failed, training goes on: {e:#}"),
            Err(_) => tracing::warn!("validation at step {gs} failed (see the error above), training goes on"),
        }
        training_stream.restore()
    }
}
