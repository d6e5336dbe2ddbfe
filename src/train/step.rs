//! One training step of `textual_inversion.py`: where the loss comes from.
//!
//! latents (a posterior draw, scaled) + noise at one timestep per sample → the UNet predicts
//! the noise (or v) conditioned on the caption, whose placeholder tokens read the trainable rows
//! → MSE in fp32 against the target. Everything random is an input, so a test can replay the
//! Python script's exact draws.
use crate::models::clip::ClipTextModel;
use crate::models::unet::UNet2DConditionModel;
use crate::schedulers::{DdpmScheduler, PredictionType};
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// The random and data inputs of one micro-step.
pub struct StepInputs {
    /// `[B, 77]` caption ids.
    pub input_ids: Tensor,
    /// `[B, 4, h, w]` VAE latents already multiplied by `scaling_factor`.
    pub latents: Tensor,
    /// `[B, 4, h, w]` standard normal.
    pub noise: Tensor,
    /// `[B]` int64 in `0..num_train_timesteps`.
    pub timesteps: Tensor,
}

/// The fp32 mean-squared error of one micro-step (not yet divided for accumulation), with the
/// graph back to the text encoder's trainable rows.
pub fn loss(text_encoder: &ClipTextModel, unet: &UNet2DConditionModel, ddpm: &DdpmScheduler, x: &StepInputs, kind: Kind) -> Result<Tensor> {
    let _span = tracing::trace_span!("train_step").entered();
    let latents = x.latents.to_kind(kind);
    let noise = x.noise.to_kind(kind);
    let noisy = ddpm.add_noise(&latents, &noise, &x.timesteps)?;
    let hidden = text_encoder.forward(&x.input_ids).last_hidden_state.to_kind(kind);
    let pred = unet.forward(&noisy, &x.timesteps, &hidden);
    let target = match ddpm.prediction_type() {
        PredictionType::Epsilon => noise,
        PredictionType::VPrediction => ddpm.get_velocity(&latents, &noise, &x.timesteps)?,
        other => bail!("Unknown prediction type {other:?}"),
    };
    Ok(pred.to_kind(Kind::Float).mse_loss(&target.to_kind(Kind::Float), tch::Reduction::Mean))
}
