//! One training step of `textual_inversion.py` (and `textual_inversion_sdxl.py`): where the
//! loss comes from.
//!
//! latents (a posterior draw, scaled) + noise at one timestep per sample → the UNet predicts
//! the noise (or v) conditioned on the caption, whose placeholder tokens read the trainable rows
//! → MSE in fp32 against the target. SDXL conditions on both encoders' `hidden_states[-2]`
//! concatenated, plus the second encoder's pooled output and each image's time ids: the
//! gradient reaches the second encoder's rows through both. Everything random is an input, so a
//! test can replay the Python script's exact draws.
use super::config::{HuberSchedule, LossConfig, LossKind};
use crate::models::clip::ClipTextModel;
use crate::models::unet::{AddedConditioning, UNet2DConditionModel};
use crate::schedulers::{DdpmScheduler, PredictionType};
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// The random and data inputs of one micro-step.
pub struct StepInputs {
    /// `[B, 77]` caption ids (the first tokenizer's).
    pub input_ids: Tensor,
    /// SDXL: `[B, 77]` the second tokenizer's ids of the same captions.
    pub input_ids_2: Option<Tensor>,
    /// SDXL: `[B, 6]` `[original h, w, crop top, left, target h, w]` per image.
    pub time_ids: Option<Tensor>,
    /// `[B, 4, h, w]` VAE latents already multiplied by `scaling_factor`.
    pub latents: Tensor,
    /// `[B, 4, h, w]` standard normal.
    pub noise: Tensor,
    /// `[B]` int64 in `0..num_train_timesteps`.
    pub timesteps: Tensor,
    /// `--alpha_mask`/`--mask_dir`: `[B, 1, H, W]` f32 weights in [0, 1] at the images'
    /// resolution; `None`: every element weighs 1.
    pub mask: Option<Tensor>,
}

impl StepInputs {
    /// SD 1.x/2.x inputs (one tokenizer, no time ids).
    pub fn sd(input_ids: Tensor, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Self {
        StepInputs { input_ids, input_ids_2: None, time_ids: None, latents, noise, timesteps, mask: None }
    }
}

/// The UNet's conditioning, with the graph back to the trainable rows: per-token states, and
/// SDXL's pooled embedding (with the time ids).
struct TextConditioning {
    hidden: Tensor,
    added: Option<AddedConditioning>,
}

/// `encoders`: the one text encoder, or SDXL's two (the second with its projection).
fn text_conditioning(encoders: &[&ClipTextModel], x: &StepInputs, kind: Kind) -> Result<TextConditioning> {
    match (encoders, &x.input_ids_2, &x.time_ids) {
        ([te], None, None) => Ok(TextConditioning { hidden: te.forward(&x.input_ids).last_hidden_state.to_kind(kind), added: None }),
        ([te, te2], Some(ids_2), Some(time_ids)) => {
            let penultimate = |out: &crate::models::clip::ClipOutput| out.hidden_states[out.hidden_states.len() - 2].shallow_clone();
            let h1 = penultimate(&te.forward(&x.input_ids)).to_kind(kind);
            let out2 = te2.forward(ids_2);
            let h2 = penultimate(&out2).to_kind(kind);
            let text_embeds = te2.pooled(&out2.last_hidden_state, ids_2);
            let time_ids = time_ids.to_kind(kind);
            Ok(TextConditioning { hidden: Tensor::cat(&[h1, h2], -1), added: Some(AddedConditioning { text_embeds, time_ids }) })
        }
        _ => bail!("a training step needs one text encoder (SD) or two with second ids and time ids (SDXL)"),
    }
}

/// The fp32 mean-squared error of one micro-step (not yet divided for accumulation), with the
/// graph back to the text encoders' trainable rows.
pub fn loss(encoders: &[&ClipTextModel], unet: &UNet2DConditionModel, ddpm: &DdpmScheduler, x: &StepInputs, kind: Kind) -> Result<Tensor> {
    loss_with(encoders, unet, ddpm, x, kind, &LossConfig::default())
}

/// [`loss`] with `--loss_type`, `--snr_gamma` and the huber settings of `objective`.
pub fn loss_with(
    encoders: &[&ClipTextModel],
    unet: &UNet2DConditionModel,
    ddpm: &DdpmScheduler,
    x: &StepInputs,
    kind: Kind,
    objective: &LossConfig,
) -> Result<Tensor> {
    let _span = tracing::trace_span!("train_step").entered();
    let (noisy, target) = noisy_and_target(ddpm, x, kind)?;
    let cond = text_conditioning(encoders, x, kind)?;
    let pred = unet.forward(&noisy, &x.timesteps, &cond.hidden, cond.added.as_ref())?;
    loss_of_masked(&pred, &target, x.mask.as_ref(), &x.timesteps, ddpm, objective)
}

/// The loss, and its gradient times `scale` accumulated into the trainable rows' `.grad` (as
/// `(loss * scale).backward()`). With `recompute` (`--gradient_checkpointing`) the UNet keeps
/// only its blocks' inputs and recomputes each block during the backward pass (see
/// `models/unet/checkpointing.rs`): less memory, one more forward pass of compute.
#[allow(clippy::too_many_arguments)] // the step's inputs, each used once: a struct would only rename them
pub fn loss_and_backward(
    encoders: &[&ClipTextModel],
    unet: &UNet2DConditionModel,
    ddpm: &DdpmScheduler,
    x: &StepInputs,
    kind: Kind,
    objective: &LossConfig,
    scale: f64,
    recompute: bool,
) -> Result<Tensor> {
    if !recompute {
        let loss = loss_with(encoders, unet, ddpm, x, kind, objective)?;
        (&loss * scale).backward();
        return Ok(loss.detach());
    }
    let _span = tracing::trace_span!("train_step_recomputed").entered();
    let (noisy, target) = noisy_and_target(ddpm, x, kind)?;
    let cond = text_conditioning(encoders, x, kind)?;
    let unet_pass = unet.forward_recomputable(&noisy, &x.timesteps, &cond.hidden, cond.added.as_ref())?;
    // The gradient of the scaled loss at the UNet's output, then through the UNet block by
    // block to the conditioning, then through the text encoders to the rows.
    let pred = unet_pass.output().detach().set_requires_grad(true);
    let loss = loss_of_masked(&pred, &target, x.mask.as_ref(), &x.timesteps, ddpm, objective)?;
    let grad_pred = Tensor::f_run_backward(&[&loss * scale], &[&pred], false, false)?.remove(0);
    let grads = unet_pass.backward(&grad_pred)?;
    let mut total = (&cond.hidden * grads.context).sum(Kind::Float);
    if let (Some(added), Some(g)) = (&cond.added, grads.text_embeds) {
        // Out of place, as the script's `+` (tch's `+=` would add into `total` in place).
        total = total.f_add(&(&added.text_embeds * g.to_kind(added.text_embeds.kind())).sum(Kind::Float))?;
    }
    total.backward();
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

/// The loss to minimise: the script's MSE, or kohya's huber/smooth_l1 (per-sample c from the
/// huber schedule), each optionally min-SNR weighted per sample as diffusers' scripts do
/// (`loss.mean(dims 1..) * weights`, then the mean).
pub fn loss_of(pred: &Tensor, target: &Tensor, timesteps: &Tensor, ddpm: &DdpmScheduler, objective: &LossConfig) -> Result<Tensor> {
    loss_of_masked(pred, target, None, timesteps, ddpm, objective)
}

/// [`loss_of`] with each element weighted by `mask` (`[B, 1, H, W]` in [0, 1]) brought to the
/// latent grid, before any reduction: kohya's `apply_masked_loss` (see [`latent_mask`]). The
/// plain MSE stays `F.mse_loss` of `pred·√w` and `target·√w` (`mean(w·(pred - target)²)`), so
/// that an all-ones mask computes exactly what the unmasked loss does.
pub fn loss_of_masked(
    pred: &Tensor,
    target: &Tensor,
    mask: Option<&Tensor>,
    timesteps: &Tensor,
    ddpm: &DdpmScheduler,
    objective: &LossConfig,
) -> Result<Tensor> {
    let weight = mask.map(|m| latent_mask(m, pred, objective)).transpose()?;
    if objective.is_plain_mse() {
        return Ok(match &weight {
            None => mse(pred, target),
            Some(w) => {
                let root = w.sqrt();
                mse(&(pred.to_kind(Kind::Float) * &root), &(target.to_kind(Kind::Float) * &root))
            }
        });
    }
    let (p, t) = (pred.to_kind(Kind::Float), target.to_kind(Kind::Float));
    let b = p.size()[0];
    let per_element = match objective.kind {
        LossKind::L2 => (&p - &t).square(),
        LossKind::Huber | LossKind::SmoothL1 => {
            let c = huber_c(timesteps, ddpm, objective)?.reshape([b, 1, 1, 1]).to_device(p.device());
            let r = ((&p - &t).square() + c.square()).sqrt() - &c;
            if objective.kind == LossKind::Huber {
                r * c * 2.0
            } else {
                r * 2.0
            }
        }
    };
    let per_element = match &weight {
        Some(w) => per_element * w,
        None => per_element,
    };
    let dims: Vec<i64> = (1..per_element.dim() as i64).collect();
    let per_sample = per_element.mean_dim(dims.as_slice(), false, Kind::Float);
    let per_sample = match objective.snr_gamma {
        Some(gamma) => per_sample * snr_weights(timesteps, ddpm, gamma)?.to_device(p.device()),
        None => per_sample,
    };
    Ok(per_sample.mean(Kind::Float))
}

/// The per-element loss weight of a `[B, 1, H, W]` pixel mask: kohya's
/// `F.interpolate(mask, size=latent hw, mode="area")` (an adaptive average pool), then
/// OneTrainer's `clamp(mask, unmasked_weight, 1)` and, with `normalize_masked_area_loss`, each
/// sample's weights divided by their mean. `[B, 1, h, w]` f32 on `pred`'s device.
pub fn latent_mask(mask: &Tensor, pred: &Tensor, objective: &LossConfig) -> Result<Tensor> {
    let (ms, ps) = (mask.size(), pred.size());
    if ms.len() != 4 || ps.len() != 4 || ms[0] != ps[0] || ms[1] != 1 {
        bail!("a loss mask must be [B, 1, H, W] for a [B, C, h, w] prediction, got {ms:?} for {ps:?}");
    }
    let m = mask.to_device(pred.device()).to_kind(Kind::Float).f_adaptive_avg_pool2d([ps[2], ps[3]])?;
    let m = m.clamp(objective.unmasked_weight, 1.0);
    Ok(if objective.normalize_masked_area_loss { &m / m.mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float) } else { m })
}

/// `alphas_cumprod` at each timestep, in f32 on the CPU.
fn alphas_at(timesteps: &Tensor, ddpm: &DdpmScheduler) -> Tensor {
    ddpm.alphas_cumprod().index_select(0, &timesteps.to_device(tch::Device::Cpu).to_kind(Kind::Int64).flatten(0, -1))
}

/// diffusers' `compute_snr`: `(sqrt(a_t) / sqrt(1 - a_t))²` at each timestep, f32 on the CPU.
pub fn snr(timesteps: &Tensor, ddpm: &DdpmScheduler) -> Tensor {
    let a = ddpm.alphas_cumprod();
    let (sqrt_a, sqrt_1ma) = (a.pow_tensor_scalar(0.5), (a.neg() + 1.0).pow_tensor_scalar(0.5));
    let idx = timesteps.to_device(tch::Device::Cpu).to_kind(Kind::Int64).flatten(0, -1);
    (sqrt_a.index_select(0, &idx) / sqrt_1ma.index_select(0, &idx)).pow_tensor_scalar(2.0)
}

/// Min-SNR weights from [`snr`], as diffusers' training scripts: `min(snr, gamma) / snr` for
/// epsilon, `/ (snr + 1)` for v_prediction.
pub fn snr_weights(timesteps: &Tensor, ddpm: &DdpmScheduler, gamma: f64) -> Result<Tensor> {
    let snr = snr(timesteps, ddpm);
    let min = snr.clamp_max(gamma);
    Ok(match ddpm.prediction_type() {
        PredictionType::Epsilon => min / &snr,
        PredictionType::VPrediction => min / (&snr + 1.0),
        other => bail!("--snr_gamma is defined for epsilon and v_prediction, not {other:?}"),
    })
}

/// kohya's huber threshold per sample for `--huber_schedule`.
pub fn huber_c(timesteps: &Tensor, ddpm: &DdpmScheduler, objective: &LossConfig) -> Result<Tensor> {
    let (c, scale) = (objective.huber_c, objective.huber_scale);
    let t = timesteps.to_device(tch::Device::Cpu).to_kind(Kind::Float).flatten(0, -1);
    Ok(match objective.huber_schedule {
        HuberSchedule::Constant => t.ones_like() * (c * scale),
        HuberSchedule::Exponential => {
            let alpha = -c.ln() / ddpm.num_train_timesteps() as f64;
            (t * -alpha).exp() * scale
        }
        HuberSchedule::Snr => {
            let a = alphas_at(timesteps, ddpm);
            let sigmas = ((a.neg() + 1.0) / &a).pow_tensor_scalar(0.5);
            (sigmas + 1.0).pow_tensor_scalar(2.0).reciprocal() * (1.0 - c) + c
        }
    })
}
