//! Everything before the first step: the inputs checked before any model loads, the model, the
//! placeholder tokens and their rows (in both text encoders for SDXL, as
//! `textual_inversion_sdxl.py`), a resumed checkpoint, AdamW and the LR schedule, the latent
//! cache, and the random stream up to where the run is.
use super::config::{InitFrom, TrainConfig};
use super::dataset::{captions, placeholder_string, Captions, Dataset};
use super::draws::StepDraws;
use super::grad_scaler::GradScaler;
use super::latent_cache::LatentCache;
use super::lr_schedule::{LrSchedule, LrScheduler, ScheduleArgs};
use super::metrics::Metrics;
use super::optim::{AdamW, AdamWConfig};
use super::script_rng::StreamShape;
use super::state::{self, Checkpoint, Position};
use super::trainer::Trainer;
use crate::models::stable_diffusion::{self as sd, LoadOptions, WeightOptions};
use crate::pipeline::Models;
use crate::schedulers::DdpmScheduler;
use crate::text::learned_tokens::{vector_tokens, LoadedToken};
use crate::text::TextStack;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Ids of `text` in a tokenizer, without the start and end tokens.
fn word_ids(text: &TextStack, words: &str) -> Result<Vec<i64>> {
    let ids = text.tokenizer.encode_unpadded(words)?;
    Ok(ids[1..ids.len().saturating_sub(1)].to_vec())
}

/// How many vectors, and each text encoder's `[n, D]` starting rows (see [`InitFrom`]).
fn initial_vectors(cfg: &TrainConfig, models: &Models) -> Result<(usize, Vec<Tensor>)> {
    let stacks = models.stacks();
    let asked = cfg.num_vectors;
    match &cfg.init {
        InitFrom::Token(token) => {
            let n = asked.max(1);
            let mut rows = Vec::new();
            for text in &stacks {
                let ids = word_ids(text, token)?;
                if ids.len() != 1 {
                    bail!("The initializer token must be a single token. ({token:?} is {} tokens)", ids.len());
                }
                rows.push(text.encoder.token_row(ids[0])?.unsqueeze(0).repeat([n as i64, 1]));
            }
            Ok((n, rows))
        }
        InitFrom::Text(words) => {
            let first = word_ids(stacks[0], words)?;
            if first.is_empty() {
                bail!("--initializer_text {words:?} has no tokens");
            }
            let n = if asked > 0 { asked } else { first.len() };
            let mut rows = Vec::new();
            for text in &stacks {
                let ids = word_ids(text, words)?;
                if ids.len() > n {
                    tracing::warn!("--initializer_text {words:?} is {} tokens, more than the {n} vectors: the last {} are not used", ids.len(), ids.len() - n);
                }
                let picked: Vec<Tensor> = (0..n).map(|i| text.encoder.token_row(ids[i % ids.len()])).collect::<Result<_>>()?;
                rows.push(Tensor::stack(&picked, 0));
            }
            Ok((n, rows))
        }
        InitFrom::Embedding(path) => {
            let rows = embedding_rows(path, &stacks)?;
            let n = rows[0].size()[0] as usize;
            if asked > 0 && asked != n {
                bail!("--num_vectors {asked} but --initial_embedding {} holds {n} vector(s)", path.display());
            }
            tracing::info!("starting the {n} vector(s) from {}", path.display());
            Ok((n, rows))
        }
    }
}

/// The vectors of an embedding file for each text encoder: an SD file's one part (or an SDXL
/// file's clip_l) for SD; clip_l/clip_g, or a training folder's learned_embeds(_2) pair, for
/// SDXL.
fn embedding_rows(path: &Path, stacks: &[&TextStack]) -> Result<Vec<Tensor>> {
    use crate::formats::embeddings::{self, Encoder};
    let files = crate::text::learned_tokens::resolve_files(path)?;
    let mut parts: Vec<Option<embeddings::Part>> = vec![None; stacks.len()];
    for (file, slot) in files {
        let ef = embeddings::read(&file)?;
        let e = ef.embeddings.first().with_context(|| format!("{}: no embedding", file.display()))?;
        if ef.embeddings.len() > 1 {
            bail!("{} holds {} embeddings; --initial_embedding takes one", file.display(), ef.embeddings.len());
        }
        for part in &e.parts {
            let i = match (part.encoder, stacks.len(), slot) {
                (Encoder::ClipG, 1, _) => continue,
                (Encoder::ClipL, _, _) => 0,
                (Encoder::ClipG, _, _) => 1,
                (Encoder::TextEncoder, _, Some(i)) => i,
                (Encoder::TextEncoder, _, None) => 0,
            };
            parts[i] = Some(part.clone());
        }
    }
    let mut rows = Vec::new();
    for (i, (text, part)) in stacks.iter().zip(parts).enumerate() {
        let part = part.with_context(|| format!("{}: no vectors for text encoder {} ({} wide)", path.display(), i + 1, text.encoder.hidden_size()))?;
        if part.width() as i64 != text.encoder.hidden_size() {
            bail!("{}: {}-wide vectors, but text encoder {} is {} wide", path.display(), part.width(), i + 1, text.encoder.hidden_size());
        }
        let t = crate::tensors::to_tch(&part.tensor)?.to_kind(Kind::Float).reshape([part.vectors() as i64, part.width() as i64]);
        rows.push(t);
    }
    if rows.windows(2).any(|w| w[0].size()[0] != w[1].size()[0]) {
        bail!("{}: the text encoders' parts have different vector counts", path.display());
    }
    Ok(rows)
}

/// The placeholder tokens `P, P_1, ...` (`n` of them) added to each tokenizer, with the
/// scripts' checks and error texts, and their ids per tokenizer.
fn add_placeholder_tokens(cfg: &TrainConfig, n: usize, models: &mut Models) -> Result<(Vec<String>, Vec<Vec<i64>>)> {
    let tokens = vector_tokens(&cfg.placeholder_token, n);
    let mut stacks = models.stacks_mut();
    for (i, text) in stacks.iter().enumerate() {
        if tokens.iter().any(|t| text.tokenizer.token_id(t).is_some()) {
            bail!(
                "The {}tokenizer already contains the token {}. Please pass a different `placeholder_token` that is not already in the tokenizer.",
                if i == 0 { "" } else { "2nd " },
                cfg.placeholder_token
            );
        }
    }
    let mut all_ids = Vec::new();
    for text in stacks.iter_mut() {
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let ids = text.tokenizer.add_tokens(&refs)?;
        if ids.first() != Some(&text.encoder.base_vocab()) {
            bail!("placeholder ids {ids:?} do not follow the text encoder's {} rows", text.encoder.base_vocab());
        }
        text.tokens = vec![LoadedToken { token: cfg.placeholder_token.clone(), vectors: n, file: PathBuf::new() }];
        all_ids.push(ids);
    }
    Ok((tokens, all_ids))
}

/// `--resume_from_checkpoint`: the checkpoint to continue from, if it exists (the script
/// starts a new run when it does not).
fn find_checkpoint(cfg: &TrainConfig, n: usize) -> Result<Option<Checkpoint>> {
    let Some(which) = &cfg.output.resume_from_checkpoint else {
        return Ok(None);
    };
    let Some(dir) = state::resolve(&cfg.output.dir, which)? else {
        tracing::info!("Checkpoint '{which}' does not exist. Starting a new training run.");
        return Ok(None);
    };
    tracing::info!("Resuming from checkpoint {}", dir.display());
    let checkpoint = state::load(&dir)?;
    let p = &checkpoint.position;
    if p.placeholder_token != cfg.placeholder_token || p.num_vectors != n {
        bail!("the checkpoint trains {} with {} vectors, not {} with {n}", p.placeholder_token, p.num_vectors, cfg.placeholder_token);
    }
    // The random stream is replayed from the run's own seed, whatever this run was given.
    if cfg.seed.is_some_and(|s| s != p.seed) {
        tracing::warn!("--seed {} differs from the checkpoint's {}: continuing with the checkpoint's", cfg.seed.unwrap_or_default(), p.seed);
    }
    Ok(Some(checkpoint))
}

/// The optimizer-state tensors of a checkpoint: AdamW's (no prefix) or the loss scaler's
/// (`scaler.` prefix).
fn split_optimizer_state(checkpoint: &Checkpoint, scaler: bool) -> Vec<(String, Tensor)> {
    checkpoint
        .optimizer
        .iter()
        .filter_map(|(k, t)| match (k.strip_prefix("scaler."), scaler) {
            (Some(rest), true) => Some((rest.to_string(), t.shallow_clone())),
            (None, false) => Some((k.clone(), t.shallow_clone())),
            _ => None,
        })
        .collect()
}

/// The most the latent cache may hold (mean and std of every image, flipped and not).
pub const LATENT_CACHE_BYTES: i64 = 1 << 30;

/// Whether the latent cache of this folder stays under [`LATENT_CACHE_BYTES`]; a larger folder
/// encodes its images every step instead (the script's way), so memory does not grow with it.
fn latent_cache_fits(models: &Models, dataset: &Dataset, kind: Kind) -> bool {
    let side = i64::from(dataset.resolution()) / models.vae_scale_factor().max(1);
    let per = 2 * 2 * models.vae.config.latent_channels * side * side * kind.elt_size_in_bytes() as i64;
    let bytes = per.saturating_mul(dataset.num_images() as i64);
    if bytes > LATENT_CACHE_BYTES {
        tracing::warn!(
            "caching the latents of {} images would take {} MiB (more than {} MiB): they are encoded every step instead",
            dataset.num_images(),
            bytes >> 20,
            LATENT_CACHE_BYTES >> 20
        );
        return false;
    }
    true
}

impl<'c> Trainer<'c> {
    /// Loads and prepares everything; nothing is trained yet.
    pub(super) fn start(cfg: &'c TrainConfig) -> Result<Self> {
        let started = std::time::Instant::now();
        cfg.check()?;
        // Everything the user controls is checked before any model loads.
        let data = &cfg.data;
        let repo = cfg.model.resolve()?;
        if let (true, Some(file)) = (cfg.output.save_as_full_pipeline, repo.single_file()) {
            bail!(
                "--save_as_full_pipeline copies the model folder's weight files, and {} is a single file: convert it first (`textual-inversion convert-model {} DIR`) and train from DIR",
                file.path.display(),
                file.path.display()
            );
        }
        let xl = sd::family(&repo)?.is_xl();
        // textual_inversion_sdxl.py resizes straight to the square (its crop is then a no-op).
        if xl && data.center_crop {
            tracing::warn!("--center_crop has no effect on SDXL: textual_inversion_sdxl.py resizes every image straight to the resolution");
        }
        let caption_ext = captions::caption_extension(&cfg.captions);
        let dataset = Dataset::load_with(&data.dir, data.resolution, data.center_crop && !xl, data.repeats, data.order, caption_ext.as_deref())?;
        let captions = Captions::load(&cfg.captions, data.property, &dataset, &cfg.placeholder_token)?;
        super::output::prepare(cfg, &repo, xl)?;
        crate::device::ensure_available(cfg.device)?;
        // The script's `torch.backends.cuda.matmul.allow_tf32 = True`, set on libtorch's context.
        if cfg.allow_tf32 {
            crate::libtorch_extras::set_allow_tf32(true)?;
        }
        let kind = cfg.precision.kind();
        let seed = cfg.seed.unwrap_or_else(|| {
            let s = crate::seed::clock_seed();
            tracing::info!("no --seed given: using {s}");
            s
        });

        let load = LoadOptions {
            weights: WeightOptions { variant: cfg.variant.clone(), use_safetensors: None },
            text_encoder_variant: false,
            tokenizer_dir: cfg.tokenizer_dir.clone(),
            device: cfg.device,
            precision: cfg.precision,
        };
        let mut models = Models::load(&repo, &load)?;
        let (n, init_rows) = initial_vectors(cfg, &models)?;
        let (tokens, token_ids) = add_placeholder_tokens(cfg, n, &mut models)?;
        let ddpm = DdpmScheduler::new(&models.scheduler_config)?;

        // Steps and epochs, as the script's arithmetic (one process).
        let optim = &cfg.optim;
        let batches_per_epoch = dataset.len().div_ceil(optim.batch_size) as u64;
        let updates_per_epoch = batches_per_epoch.div_ceil(optim.gradient_accumulation_steps);
        let num_epochs = optim.max_train_steps.div_ceil(updates_per_epoch);
        let validation_steps = cfg.validation.as_ref().map_or(0, |v| v.every.steps(dataset.len()));
        let lr = optim.base_lr();

        // State: fresh or resumed.
        let resumed = find_checkpoint(cfg, n)?;
        let (rows, position) = match &resumed {
            Some(checkpoint) => {
                if checkpoint.rows.len() != init_rows.len() {
                    bail!("the checkpoint holds rows for {} text encoder(s); this model has {}", checkpoint.rows.len(), init_rows.len());
                }
                (checkpoint.rows.iter().map(|r| r.to_kind(Kind::Float)).collect::<Vec<_>>(), checkpoint.position.clone())
            }
            None => (
                init_rows.iter().map(|r| r.detach().to_kind(Kind::Float)).collect(),
                Position { global_step: 0, micro_step: 0, accumulation: 0, seed, placeholder_token: cfg.placeholder_token.clone(), num_vectors: n },
            ),
        };
        let seed = position.seed;
        let mut trainable = Vec::new();
        for (text, rows) in models.stacks_mut().into_iter().zip(rows) {
            text.encoder.set_new_rows(rows.to_device(cfg.device).set_requires_grad(true))?;
            trainable.push(text.encoder.new_rows().context("placeholder rows")?.shallow_clone());
        }
        let initial_rows: Vec<Tensor> = trainable.iter().map(|t| t.detach().copy()).collect();
        let adam_cfg = AdamWConfig { lr, beta1: optim.adam_beta1, beta2: optim.adam_beta2, eps: optim.adam_epsilon, weight_decay: optim.adam_weight_decay };
        // One AdamW over every encoder's rows, as the SDXL script's one optimizer over both.
        let mut opt = AdamW::new(trainable.iter().map(Tensor::shallow_clone).collect(), adam_cfg)?;
        let schedule = LrSchedule::new(
            optim.lr_schedule,
            &ScheduleArgs {
                num_warmup_steps: optim.lr_warmup_steps,
                num_training_steps: optim.max_train_steps as i64,
                num_cycles: optim.lr_num_cycles,
                learning_rate: lr,
            },
        )?;
        let mut lr_sched = LrScheduler::new(schedule, lr);
        let mut scaler = (kind == Kind::Half).then(GradScaler::default);
        if let Some(checkpoint) = &resumed {
            opt.load_state(&split_optimizer_state(checkpoint, false))?;
            lr_sched.load_state(&checkpoint.scheduler)?;
            if let Some(s) = scaler.as_mut() {
                s.load_state(&split_optimizer_state(checkpoint, true))?;
            }
        }
        opt.set_lr(lr_sched.lr());

        let cache_latents = cfg.cache_latents && latent_cache_fits(&models, &dataset, kind);
        let cache = if cache_latents { LatentCache::build(&models.vae, &dataset, cfg.device, kind)? } else { LatentCache::default() };
        // What training no longer needs goes (the VAE is a tenth of SD 1.5's weights): the
        // encoder once every latent is cached, the decoder when nothing is validated.
        if cache_latents {
            models.vae.release_encoder();
        }
        if cfg.validation.is_none() {
            models.vae.release_decoder();
        }
        let placeholder = placeholder_string(&tokens);
        tracing::info!("***** Running training *****");
        tracing::info!("  Num examples = {}", dataset.len());
        tracing::info!("  Num Epochs = {num_epochs}");
        tracing::info!("  Instantaneous batch size per device = {}", optim.batch_size);
        tracing::info!("  Total train batch size (w. parallel, distributed & accumulation) = {}", optim.batch_size as u64 * optim.gradient_accumulation_steps);
        tracing::info!("  Gradient Accumulation steps = {}", optim.gradient_accumulation_steps);
        tracing::info!("  Total optimization steps = {}", optim.max_train_steps);
        let metrics = Metrics::new(&cfg.output.dir, &cfg.output.logging_dir, cfg.output.report_to)?;
        let bar = crate::progress::bar(optim.max_train_steps, "Steps {pos}/{len} [{bar:30}] {per_sec} ETA {eta} {msg}");
        bar.set_position(position.global_step);
        if position.global_step >= optim.max_train_steps {
            // The script would still run one more update here (its stop check follows the step).
            tracing::info!("the checkpoint is already at step {} of {}: nothing to train", position.global_step, optim.max_train_steps);
        }

        // The script's random stream, from set_seed on: replayed without computing up to the
        // checkpoint when resuming, so a resumed run continues the very same draws.
        let draws = StepDraws {
            kind,
            latent_size: data.resolution as i64 / models.vae_scale_factor(),
            num_train_timesteps: ddpm.num_train_timesteps(),
            seed,
            resized: models.stacks().iter().map(|t| (t.encoder.base_vocab() + n as i64, t.encoder.hidden_size())).collect(),
            num_vectors: n as i64,
            shape: StreamShape { len: dataset.len(), batch_size: optim.batch_size, templates: captions.num_templates(), tags: captions.tag_draws() },
            noise_offset: cfg.loss.noise_offset > 0.0,
        };
        let (stream, epoch) = draws.replay(position.micro_step);
        Ok(Trainer {
            cfg,
            repo,
            dataset,
            models,
            ddpm,
            tokens,
            token_ids,
            trainable,
            opt,
            lr_sched,
            scaler,
            position,
            cache,
            captions,
            placeholder,
            draws,
            stream,
            epoch,
            num_epochs,
            validation_steps,
            metrics,
            bar,
            losses: Vec::new(),
            started,
            step_times: Vec::new(),
            initial_rows,
        })
    }
}
