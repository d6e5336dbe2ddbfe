//! Everything before the first step: the inputs checked before any model loads, the model, the
//! placeholder tokens and their rows (in both text encoders for SDXL, as
//! `textual_inversion_sdxl.py`), a resumed checkpoint, AdamW and the LR schedule, the latent
//! cache, and the random stream up to where the run is.
use super::config::TrainConfig;
use super::dataset::{caption, placeholder_string, Dataset};
use super::draws::StepDraws;
use super::grad_scaler::GradScaler;
use super::latent_cache::LatentCache;
use super::lr_schedule::{LrSchedule, LrScheduler, ScheduleArgs};
use super::metrics::Metrics;
use super::optim::{AdamW, AdamWConfig};
use super::state::{self, Checkpoint, Position};
use super::trainer::Trainer;
use crate::models::stable_diffusion::{self as sd, LoadOptions, WeightOptions};
use crate::pipeline::Models;
use crate::schedulers::DdpmScheduler;
use crate::text::learned_tokens::{vector_tokens, LoadedToken};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Creates output_dir and proves it writable before any model loads.
fn prepare_output(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create --output_dir {}", dir.display()))?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"ok").with_context(|| format!("--output_dir {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// The placeholder tokens `P, P_1, ...` added to each tokenizer (the scripts' checks and error
/// texts), their ids per tokenizer, and the row every new vector starts from in each encoder
/// (the initializer token's).
fn add_placeholder_tokens(cfg: &TrainConfig, models: &mut Models) -> Result<(Vec<String>, Vec<Vec<i64>>, Vec<Tensor>)> {
    let tokens = vector_tokens(&cfg.placeholder_token, cfg.num_vectors);
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
    let mut init_ids = Vec::new();
    for text in &stacks {
        let ids = text.tokenizer.encode_unpadded(&cfg.initializer_token)?;
        let ids = ids[1..ids.len().saturating_sub(1)].to_vec();
        if ids.len() != 1 {
            bail!("The initializer token must be a single token. ({:?} is {} tokens)", cfg.initializer_token, ids.len());
        }
        init_ids.push(ids[0]);
    }
    let (mut all_ids, mut init_rows) = (Vec::new(), Vec::new());
    for (text, init) in stacks.iter_mut().zip(init_ids) {
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let ids = text.tokenizer.add_tokens(&refs)?;
        if ids.first() != Some(&text.encoder.base_vocab()) {
            bail!("placeholder ids {ids:?} do not follow the text encoder's {} rows", text.encoder.base_vocab());
        }
        init_rows.push(text.encoder.token_row(init)?);
        text.tokens = vec![LoadedToken { token: cfg.placeholder_token.clone(), vectors: cfg.num_vectors, file: PathBuf::new() }];
        all_ids.push(ids);
    }
    Ok((tokens, all_ids, init_rows))
}

/// `--resume_from_checkpoint`: the checkpoint to continue from, if it exists (the script
/// starts a new run when it does not).
fn find_checkpoint(cfg: &TrainConfig) -> Result<Option<Checkpoint>> {
    let Some(which) = &cfg.output.resume_from_checkpoint else { return Ok(None) };
    let Some(dir) = state::resolve(&cfg.output.dir, which)? else {
        tracing::info!("Checkpoint '{which}' does not exist. Starting a new training run.");
        return Ok(None);
    };
    tracing::info!("Resuming from checkpoint {}", dir.display());
    let checkpoint = state::load(&dir)?;
    let p = &checkpoint.position;
    if p.placeholder_token != cfg.placeholder_token || p.num_vectors != cfg.num_vectors {
        bail!("the checkpoint trains {} with {} vectors, not {} with {}", p.placeholder_token, p.num_vectors, cfg.placeholder_token, cfg.num_vectors);
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
    checkpoint.optimizer
        .iter()
        .filter_map(|(k, t)| match (k.strip_prefix("scaler."), scaler) {
            (Some(rest), true) => Some((rest.to_string(), t.shallow_clone())),
            (None, false) => Some((k.clone(), t.shallow_clone())),
            _ => None,
        })
        .collect()
}

impl<'c> Trainer<'c> {
    /// Loads and prepares everything; nothing is trained yet.
    pub(super) fn start(cfg: &'c TrainConfig) -> Result<Self> {
        let started = std::time::Instant::now();
        cfg.check()?;
        // Everything the user controls is checked before any model loads.
        let data = &cfg.data;
        let repo = cfg.model.resolve()?;
        let xl = sd::family(&repo)?.is_xl();
        // textual_inversion_sdxl.py resizes straight to the square (its crop is then a no-op).
        if xl && data.center_crop {
            tracing::warn!("--center_crop has no effect on SDXL: textual_inversion_sdxl.py resizes every image straight to the resolution");
        }
        let dataset = Dataset::load_ordered(&data.dir, data.resolution, data.center_crop && !xl, data.repeats, data.order)?;
        prepare_output(&cfg.output.dir)?;
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
        let (tokens, token_ids, init_rows) = add_placeholder_tokens(cfg, &mut models)?;
        let ddpm = DdpmScheduler::new(&models.scheduler_config)?;

        // Steps and epochs, as the script's arithmetic (one process).
        let optim = &cfg.optim;
        let batches_per_epoch = dataset.len().div_ceil(optim.batch_size) as u64;
        let updates_per_epoch = batches_per_epoch.div_ceil(optim.gradient_accumulation_steps);
        let num_epochs = optim.max_train_steps.div_ceil(updates_per_epoch);
        let validation_steps = cfg.validation.as_ref().map_or(0, |v| v.every.steps(dataset.len()));
        let lr = optim.base_lr();

        // State: fresh or resumed.
        let n = cfg.num_vectors;
        let resumed = find_checkpoint(cfg)?;
        let (rows, position) = match &resumed {
            Some(checkpoint) => {
                if checkpoint.rows.len() != init_rows.len() {
                    bail!("the checkpoint holds rows for {} text encoder(s); this model has {}", checkpoint.rows.len(), init_rows.len());
                }
                (checkpoint.rows.iter().map(|r| r.to_kind(Kind::Float)).collect::<Vec<_>>(), checkpoint.position.clone())
            }
            None => (
                init_rows.iter().map(|r| r.detach().to_kind(Kind::Float).unsqueeze(0).repeat([n as i64, 1])).collect(),
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
            &ScheduleArgs { num_warmup_steps: optim.lr_warmup_steps, num_training_steps: optim.max_train_steps as i64, num_cycles: optim.lr_num_cycles, learning_rate: lr },
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

        let cache = if cfg.cache_latents { LatentCache::build(&models.vae, &dataset, cfg.device, kind)? } else { LatentCache::default() };
        // What training no longer needs goes (the VAE is a tenth of SD 1.5's weights): the
        // encoder once every latent is cached, the decoder when nothing is validated.
        if cfg.cache_latents {
            models.vae.release_encoder();
        }
        if cfg.validation.is_none() {
            models.vae.release_decoder();
        }
        let templates = cfg.data.property.templates();
        let placeholder = placeholder_string(&tokens);
        // Captions are template x placeholder: tokenize each once, with each tokenizer.
        let caption_ids: Vec<Vec<Vec<i64>>> = models
            .stacks()
            .iter()
            .map(|text| templates.iter().map(|t| text.tokenizer.encode(&caption(t, &placeholder))).collect::<Result<_>>())
            .collect::<Result<_>>()?;
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
            dataset_len: dataset.len(),
            batch_size: optim.batch_size,
            templates: templates.len(),
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
            caption_ids,
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
