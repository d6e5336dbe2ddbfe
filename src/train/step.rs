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
    let (noisy, target) = noisy_and_target(ddpm, x, kind)?;
    let hidden = text_encoder.forward(&x.input_ids).last_hidden_state.to_kind(kind);
    let pred = unet.forward(&noisy, &x.timesteps, &hidden, None)?;
    Ok(mse(&pred, &target))
}

/// The loss, and its gradient times `scale` accumulated into the trainable rows' `.grad` (as
/// `(loss * scale).backward()`). With `recompute` (`--gradient_checkpointing`) the UNet keeps
/// only its blocks' inputs and recomputes each block during the backward pass (see
/// `models/unet/checkpointing.rs`): less memory, one more forward pass of compute.
pub fn loss_and_backward(
    text_encoder: &ClipTextModel,
    unet: &UNet2DConditionModel,
    ddpm: &DdpmScheduler,
    x: &StepInputs,
    kind: Kind,
    scale: f64,
    recompute: bool,
) -> Result<Tensor> {
    if !recompute {
        let loss = loss(text_encoder, unet, ddpm, x, kind)?;
        (&loss * scale).backward();
        return Ok(loss.detach());
    }
    let _span = tracing::trace_span!("train_step_recomputed").entered();
    let (noisy, target) = noisy_and_target(ddpm, x, kind)?;
    let hidden = text_encoder.forward(&x.input_ids).last_hidden_state.to_kind(kind);
    let unet_pass = unet.forward_recomputable(&noisy, &x.timesteps, &hidden, None)?;
    // The gradient of the scaled loss at the UNet's output, then through the UNet block by
    // block to the conditioning, then through the text encoder to the rows.
    let pred = unet_pass.output().detach().set_requires_grad(true);
    let loss = mse(&pred, &target);
    let grad_pred = Tensor::f_run_backward(&[&loss * scale], &[&pred], false, false)?.remove(0);
    let grad_hidden = unet_pass.backward(&grad_pred)?.context;
    (&hidden * grad_hidden).sum(hidden.kind()).backward();
    Ok(loss.detach())
}

/// The noised latents and what the UNet should predict for them.
fn noisy_and_target(ddpm: &DdpmScheduler, x: &StepInputs, kind: Kind) -> Result<(Tensor, Tensor)> {
    let latents = x.latents.to_kind(kind);
    let noise = x.noise.to_kind(kind);
    let noisy = ddpm.add_noise(&latents, &noise, &x.timesteps)?;
    let target = match ddpm.prediction_type() {
        PredictionType::Epsilon => noise,
        PredictionType::VPrediction => ddpm.get_velocity(&latents, &noise, &x.timesteps)?,
        other => bail!("Unknown prediction type {other:?}"),
    };
    Ok((noisy, target))
}

/// The script's `F.mse_loss(model_pred.float(), target.float(), reduction="mean")`.
fn mse(pred: &Tensor, target: &Tensor) -> Tensor {
    pred.to_kind(Kind::Float).mse_loss(&target.to_kind(Kind::Float), tch::Reduction::Mean)
}
