//! `--eval_loss_steps`: DVAR's deterministic evaluation loss (arXiv 2302.04841). A few training
//! images with their captions, posterior draws, noise and timesteps are fixed once at setup from
//! `--eval_seed`; every `--eval_loss_steps` updates the loss of that same batch is computed
//! without gradient and logged as `eval_loss`. With nothing random left in it, it moves only
//! because the embedding does, so its curve says when training has converged
//! ([`super::early_stopping`]).
//!
//! The draws come from libtorch's CPU generator seeded with `--eval_seed` (as a
//! `torch.Generator().manual_seed(eval_seed)` would), its state saved before and put back after,
//! so the training stream, and seed parity with the script, are untouched.
use super::early_stopping::DvarRule;
use super::setup::{Data, Model};
use super::state;
use super::step::{self, StepInputs};
use super::trainer::Trainer;
use crate::libtorch_extras::CpuRngState;
use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

/// `--eval_seed`'s default.
pub const DEFAULT_EVAL_SEED: u64 = 0;
/// `--eval_batch_size`'s default (DVAR's): at most this many images, fewer when the folder
/// has fewer.
pub const DEFAULT_EVAL_BATCH_SIZE: usize = 4;
/// The checkpoint file holding the evaluations so far (so that early stopping continues).
pub const HISTORY_FILE: &str = "eval_loss.json";

/// What `--eval_loss_steps` and `--early_stopping` ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalLossConfig {
    /// Updates between evaluations (at updates `every`, `2 every`, ...).
    pub every: u64,
    pub seed: u64,
    /// Images in the batch: the dataset's first `batch_size` (in its order), capped by its size.
    pub batch_size: usize,
    /// `--early_stopping`: DVAR's rule on the evaluations (window counted in evaluations).
    pub early_stopping: Option<DvarRule>,
}

/// One image of the fixed batch, ready for [`step::loss`].
struct EvalItem {
    input_ids: Tensor,
    input_ids_2: Option<Tensor>,
    time_ids: Option<Tensor>,
    /// Scaled latents: `(mean + std * posterior draw) * scaling_factor`.
    latents: Tensor,
    noise: Tensor,
    timestep: Tensor,
}

/// The fixed batch, the evaluations made and whether the rule has stopped the run.
pub(super) struct Evaluator {
    items: Vec<EvalItem>,
    every: u64,
    rule: Option<DvarRule>,
    /// `(update, eval_loss)`, oldest first, including those before a resume.
    history: Vec<(u64, f64)>,
    /// Why the run stops early, once it does.
    pub(super) stopped: Option<String>,
}

/// What each image of the batch draws, in this order: a template (`randint(templates, (1,))`),
/// the posterior's standard normal and the noise (each `randn` of the latent's shape, f32); then
/// `randperm(num_train_timesteps)`, whose first values are the timesteps (distinct, as DVAR's).
struct Drawn {
    templates: Vec<usize>,
    posteriors: Vec<Tensor>,
    noises: Vec<Tensor>,
    timesteps: Vec<i64>,
}

fn draw(seed: u64, shapes: &[Vec<i64>], num_templates: usize, num_train_timesteps: i64) -> Result<Drawn> {
    let saved = CpuRngState::save()?;
    tch::manual_seed(seed as i64);
    let mut d = Drawn { templates: Vec::new(), posteriors: Vec::new(), noises: Vec::new(), timesteps: Vec::new() };
    for shape in shapes {
        d.templates.push(Tensor::randint(num_templates.max(1) as i64, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]) as usize);
        d.posteriors.push(Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)));
        d.noises.push(Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)));
    }
    let perm = Tensor::randperm(num_train_timesteps, (Kind::Int64, Device::Cpu));
    d.timesteps = Vec::<i64>::try_from(perm.narrow(0, 0, shapes.len() as i64))?;
    saved.restore()?;
    Ok(d)
}

/// `(update, eval_loss)` pairs as the checkpoint file holds them.
#[derive(serde::Serialize, serde::Deserialize)]
struct HistoryFile {
    eval_loss: Vec<(u64, f64)>,
}

/// The history file's bytes (`{"eval_loss": [[update, value], ...]}`), for a checkpoint.
pub fn history_json(history: &[(u64, f64)]) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&HistoryFile { eval_loss: history.to_vec() })?)
}

/// The evaluations saved in checkpoint folder `dir` (none when it has no history file).
pub fn read_history(dir: &std::path::Path) -> Result<Vec<(u64, f64)>> {
    let path = dir.join(HISTORY_FILE);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(Vec::new());
    }
    let text = crate::formats::regular::read_to_string(&path, 64 << 20).with_context(|| format!("reading {}", path.display()))?;
    let file: HistoryFile = serde_json::from_str(&text).with_context(|| format!("{}: expected {{\"eval_loss\": [[update, value], ...]}}", path.display()))?;
    Ok(file.eval_loss)
}

impl Evaluator {
    /// The fixed batch of `data` for `model`, and the evaluations of the checkpoint this run
    /// resumes at update `global_step` (none for a fresh run).
    /// Only rank 0 (`main`) evaluates: the others hold no batch.
    pub(super) fn new(cfg: &super::config::TrainConfig, e: &EvalLossConfig, model: &Model, data: &Data, global_step: u64, main: bool) -> Result<Self> {
        if !main {
            return Ok(Evaluator { items: Vec::new(), every: e.every.max(1), rule: e.early_stopping, history: Vec::new(), stopped: None });
        }
        let (device, kind) = (cfg.device, cfg.precision.kind());
        let models = &model.models;
        let n = e.batch_size.min(data.dataset.num_images()).min(model.ddpm.num_train_timesteps() as usize).max(1);
        let mut posteriors = Vec::new();
        for i in 0..n {
            let image = data.dataset.image_index(i);
            let (mean, std) = match data.cache.get(image, false) {
                Some((m, s)) => (m.shallow_clone(), s.shallow_clone()),
                None => {
                    let post = tch::no_grad(|| models.vae.encode(&data.dataset.pixels(image, false)?.unsqueeze(0).to_device(device).to_kind(kind)))?;
                    (post.mean, post.std)
                }
            };
            posteriors.push((image, mean, std));
        }
        let shapes: Vec<Vec<i64>> = posteriors.iter().map(|(_, m, _)| m.size()).collect();
        let d = draw(e.seed, &shapes, data.captions.num_templates(), model.ddpm.num_train_timesteps())?;
        let stacks = models.stacks();
        let res = cfg.data.resolution as i64;
        let scaling = models.vae.config.scaling_factor;
        let mut items = Vec::new();
        for (i, (image, mean, std)) in posteriors.into_iter().enumerate() {
            let text = data.captions.text(image, d.templates[i], None, &data.placeholder);
            tracing::debug!("eval item {i}: image {image}, caption {text:?}, timestep {}", d.timesteps[i]);
            let mut ids = Vec::new();
            for stack in &stacks {
                ids.push(Tensor::from_slice(&stack.tokenizer.encode(&text)?).reshape([1, -1]).to_device(device));
            }
            let mut ids = ids.into_iter();
            let input_ids = ids.next().context("no tokenizer")?;
            let (oh, ow) = data.dataset.images()[image].original_size;
            let time_ids = models
                .text_2
                .is_some()
                .then(|| Tensor::from_slice(&[oh as i64, ow as i64, 0, 0, res, res]).reshape([1, 6]).to_kind(Kind::Float).to_device(device));
            let latents = tch::no_grad(|| (mean.to_kind(Kind::Float) + std.to_kind(Kind::Float) * d.posteriors[i].to_device(device)) * scaling);
            let timestep = Tensor::from_slice(&[d.timesteps[i]]).to_device(device);
            items.push(EvalItem { input_ids, input_ids_2: ids.next(), time_ids, latents, noise: d.noises[i].to_device(device), timestep });
        }
        let history = if global_step > 0 { resumed_history(cfg, global_step)? } else { Vec::new() };
        Ok(Evaluator { items, every: e.every.max(1), rule: e.early_stopping, history, stopped: None })
    }

    /// The mean over the batch's images of each one's MSE (in f64), without gradient.
    pub(super) fn loss(&self, model: &Model, kind: Kind) -> Result<f64> {
        let encoders: Vec<&crate::models::clip::ClipTextModel> = model.models.stacks().into_iter().map(|t| &t.encoder).collect();
        let _g = tch::no_grad_guard();
        let mut sum = 0.0;
        for it in &self.items {
            let x = StepInputs {
                input_ids: it.input_ids.shallow_clone(),
                input_ids_2: it.input_ids_2.as_ref().map(Tensor::shallow_clone),
                time_ids: it.time_ids.as_ref().map(Tensor::shallow_clone),
                latents: it.latents.shallow_clone(),
                noise: it.noise.shallow_clone(),
                timesteps: it.timestep.shallow_clone(),
                mask: None,
            };
            sum += step::loss(&encoders, &model.models.unet, &model.ddpm, &x, kind)?.double_value(&[]);
        }
        Ok(sum / self.items.len() as f64)
    }

    /// The evaluations so far, `(update, eval_loss)`.
    pub(super) fn history(&self) -> &[(u64, f64)] {
        &self.history
    }
}

/// The evaluations saved with the checkpoint this run resumed from, up to its update.
fn resumed_history(cfg: &super::config::TrainConfig, global_step: u64) -> Result<Vec<(u64, f64)>> {
    let Some(which) = &cfg.output.resume_from_checkpoint else { return Ok(Vec::new()) };
    let Some(dir) = state::resolve(&cfg.output.dir, which)? else { return Ok(Vec::new()) };
    let mut history = read_history(&dir)?;
    history.retain(|(s, _)| *s <= global_step);
    if !history.is_empty() {
        tracing::info!("continuing {} evaluation loss value(s) from {}", history.len(), dir.display());
    }
    Ok(history)
}

impl Trainer<'_> {
    /// After an update: the evaluation loss when one is due, and DVAR's rule on it. Rank 0
    /// evaluates; with several processes it tells the others whether to stop (they wait for it).
    pub(super) fn evaluate(&mut self) -> Result<()> {
        let Some(ev) = self.eval.as_mut() else { return Ok(()) };
        let gs = self.run.position.global_step;
        if gs % ev.every != 0 {
            return Ok(());
        }
        let mut stop = None;
        if self.ranks.rank() == 0 {
            let started = std::time::Instant::now();
            let value = ev.loss(&self.model, self.cfg.precision.kind())?;
            tracing::debug!("eval_loss of {} image(s) took {:.3} s", ev.items.len(), started.elapsed().as_secs_f64());
            ev.history.push((gs, value));
            let values: Vec<f64> = ev.history.iter().map(|h| h.1).collect();
            let ratio = ev.rule.and_then(|r| r.normalized_variance(&values));
            self.report.eval_loss(value, ratio);
            if let (Some(rule), Some(r)) = (ev.rule, ratio) {
                if r < rule.threshold {
                    stop = Some(format!(
                        "early stopping at step {gs}: the variance of the last {} eval_loss values is {r:.4} of all {}'s (below --early_stopping_threshold {})",
                        rule.window,
                        values.len(),
                        rule.threshold
                    ));
                }
            }
        }
        if self.ranks.world_size() > 1 {
            let mut flag = Tensor::from(i64::from(stop.is_some()));
            self.ranks.broadcast(&mut flag, 0).context("sharing rank 0's early-stopping decision")?;
            if flag.int64_value(&[]) != 0 && stop.is_none() {
                stop = Some(format!("early stopping at step {gs} (rank 0's decision)"));
            }
        }
        if let Some(why) = &stop {
            tracing::info!("{why}");
        }
        ev.stopped = stop;
        Ok(())
    }

    /// Whether DVAR's rule has stopped the run.
    pub(super) fn stopped_early(&self) -> bool {
        self.eval.as_ref().is_some_and(|e| e.stopped.is_some())
    }
}
