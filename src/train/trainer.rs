//! The training loop of `textual_inversion.py`: accumulation with accelerate's sync rule, LR
//! schedule, `--save_steps` files, `checkpoint-N` folders and resume, validation images,
//! progress and metrics. One step's loss comes from [`super::step::loss`].
use super::dataset::{caption, placeholder_string, Dataset, ImageOrder};
use super::lr_schedule::{LrSchedule, LrScheduler, ScheduleArgs};
use super::optim::{AdamW, AdamWConfig};
use super::state::{self, Checkpoint, Position};
use super::script_rng::ScriptStream;
use super::step::{self, StepInputs};
use crate::cli::train::TrainArgs;
use crate::device::parse_device;
use crate::formats::embeddings::{self as emb_files, Embedding, Encoder, OutFormat, Part};
use crate::models::repo::{HubOptions, ModelRepo};
use crate::models::stable_diffusion::{self as sd, WeightOptions};
use crate::models::weights::Placement;
use crate::pipeline::{GenerateOptions, Models};
use crate::schedulers::{self, DdpmScheduler, SchedulerConfig, SchedulerKind};
use crate::textual_inversion::{vector_tokens, LoadedToken};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// What a finished run leaves behind.
pub struct TrainOutcome {
    pub embeddings_file: PathBuf,
    pub global_step: u64,
    /// Per micro-step loss, in order.
    pub losses: Vec<f64>,
}

fn check_args(a: &TrainArgs) -> Result<()> {
    if a.num_vectors < 1 {
        bail!("--num_vectors has to be larger or equal to 1, but is {}", a.num_vectors);
    }
    if a.report_to == "wandb" && a.hub_token.is_some() {
        bail!("You cannot use both --report_to=wandb and --hub_token due to a security risk of exposing your token. Please use `hf auth login` to authenticate with the Hub.");
    }
    if a.push_to_hub {
        bail!("--push_to_hub is not available: this tool does not upload. Train, then upload output_dir with `hf upload` (huggingface_hub's CLI)");
    }
    a.report_to.parse::<super::metrics::ReportTo>()?;
    if a.train_batch_size == 0 || a.gradient_accumulation_steps == 0 || a.max_train_steps == 0 {
        bail!("--train_batch_size, --gradient_accumulation_steps and --max_train_steps must be at least 1");
    }
    // The script computes `global_step % save_steps` (and checkpointing_steps, validation_steps):
    // 0 is a ZeroDivisionError there, not "every step".
    for (flag, v) in [("--save_steps", a.save_steps), ("--checkpointing_steps", a.checkpointing_steps)] {
        if v == 0 {
            bail!("{flag} must be at least 1 (it is the number of updates between saves), got 0");
        }
    }
    if a.validation_prompt.is_some() {
        match a.validation_epochs {
            Some(0) => bail!("--validation_epochs must be at least 1 when --validation_prompt is given, got 0"),
            None if a.validation_steps == 0 => bail!("--validation_steps must be at least 1 when --validation_prompt is given, got 0"),
            _ => {}
        }
    }
    if a.resolution == 0 || a.resolution % 8 != 0 {
        bail!("--resolution must be a positive multiple of 8, got {}", a.resolution);
    }
    if a.gradient_checkpointing {
        tracing::warn!("--gradient_checkpointing has no effect here: only the placeholder rows train, so activations are the UNet's forward/backward, which fits at 512 px");
    }
    if a.enable_xformers_memory_efficient_attention {
        tracing::info!("--enable_xformers_memory_efficient_attention: attention already runs through scaled_dot_product_attention");
    }
    Ok(())
}

/// Creates output_dir and proves it writable before any model loads.
fn prepare_output(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create --output_dir {}", dir.display()))?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"ok").with_context(|| format!("--output_dir {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Writes the `[n, D]` rows as the script's `save_progress` does.
fn save_embeddings(path: &Path, token: &str, rows: &Tensor) -> Result<()> {
    let tensor = crate::tensors::from_tch(&rows.detach().to_kind(Kind::Float).to_device(Device::Cpu))?;
    let e = Embedding { stored_token: Some(token.to_string()), parts: vec![Part { encoder: Encoder::TextEncoder, tensor }] };
    let format = if path.extension().is_some_and(|e| e == "bin") { OutFormat::DiffusersBin } else { OutFormat::Diffusers };
    emb_files::write(path, format, token, &e, None, None)?;
    tracing::info!("Saving embeddings to {}", path.display());
    Ok(())
}

pub fn train(a: &TrainArgs) -> Result<TrainOutcome> {
    check_args(a)?;
    // Everything the user controls is checked before any model loads.
    let order = if a.sort_images { ImageOrder::Sorted } else { ImageOrder::Directory };
    let dataset = Dataset::load_ordered(&a.train_data_dir, a.resolution, a.center_crop, a.repeats, order)?;
    prepare_output(&a.output_dir)?;
    if a.allow_tf32 {
        std::env::set_var("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1");
    }
    let device = parse_device(&a.device)?;
    let kind = crate::device::parse_kind(&a.mixed_precision)?;
    let mut seed = a.seed.unwrap_or_else(|| {
        let s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0) % 1_000_000_007;
        tracing::info!("no --seed given: using {s}");
        s
    });
    let n = a.num_vectors as usize;
    let ext = if a.no_safe_serialization { "bin" } else { "safetensors" };

    // Model.
    let repo = ModelRepo::resolve(&a.pretrained_model_name_or_path, a.revision.as_deref(), &HubOptions::from_env())?;
    sd::check_pipeline(&repo)?;
    let mut tokenizer = match &a.tokenizer_name {
        Some(dir) => crate::models::tokenizer::ClipTokenizer::from_folder(dir)?,
        None => sd::load_tokenizer(&repo)?,
    };
    let tokens = vector_tokens(&a.placeholder_token, n);
    if tokens.iter().any(|t| tokenizer.token_id(t).is_some()) {
        bail!(
            "The tokenizer already contains the token {}. Please pass a different `placeholder_token` that is not already in the tokenizer.",
            a.placeholder_token
        );
    }
    let init_ids = tokenizer.encode_unpadded(&a.initializer_token)?;
    let init_ids = &init_ids[1..init_ids.len().saturating_sub(1)];
    if init_ids.len() != 1 {
        bail!("The initializer token must be a single token. ({:?} is {} tokens)", a.initializer_token, init_ids.len());
    }
    let mut text_encoder = sd::load_text_encoder(&repo, &WeightOptions { variant: None, use_safetensors: None }, Placement { device, kind: Kind::Float })?;
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let ids = tokenizer.add_tokens(&refs)?;
    if ids.first() != Some(&text_encoder.base_vocab()) {
        bail!("placeholder ids {ids:?} do not follow the text encoder's {} rows", text_encoder.base_vocab());
    }
    let init_row = text_encoder.token_row(init_ids[0])?;
    let wopts = WeightOptions { variant: a.variant.clone(), use_safetensors: None };
    // The script asks for the variant for the UNet and VAE only (the text encoder trains from
    // its plain weights); the pipeline rule decides when one of them lacks it.
    sd::check_variant(&repo, &wopts, &["unet", "vae", "text_encoder"])?;
    let unet = sd::load_unet(&repo, &wopts, Placement { device, kind })?;
    let vae = sd::load_vae(&repo, &wopts, Placement { device, kind })?;
    let sched_path = repo.require("scheduler/scheduler_config.json")?;
    let sched_cfg = SchedulerConfig::read(&sched_path)?;
    let ddpm = DdpmScheduler::new(&sched_cfg)?;
    let scaling = vae.config.scaling_factor;

    // Arithmetic of steps and epochs, as the script (single process).
    let batches_per_epoch = dataset.len().div_ceil(a.train_batch_size) as u64;
    let updates_per_epoch = batches_per_epoch.div_ceil(a.gradient_accumulation_steps);
    let num_epochs = a.max_train_steps.div_ceil(updates_per_epoch);
    let validation_steps = match a.validation_epochs {
        Some(e) => {
            tracing::warn!("--validation_epochs is deprecated; using validation_steps = {} (epochs x dataset length, as the script)", e * dataset.len() as u64);
            e * dataset.len() as u64
        }
        None => a.validation_steps,
    };
    let lr = if a.scale_lr { a.learning_rate * (a.gradient_accumulation_steps * a.train_batch_size as u64) as f64 } else { a.learning_rate };

    // State: fresh or resumed.
    let mut rows = init_row.detach().to_kind(Kind::Float).unsqueeze(0).repeat([n as i64, 1]);
    let mut position =
        Position { global_step: 0, micro_step: 0, accumulation: 0, seed, placeholder_token: a.placeholder_token.clone(), num_vectors: n };
    let resumed = match &a.resume_from_checkpoint {
        Some(which) => match state::resolve(&a.output_dir, which)? {
            Some(dir) => {
                tracing::info!("Resuming from checkpoint {}", dir.display());
                Some(state::load(&dir)?)
            }
            None => {
                tracing::info!("Checkpoint '{which}' does not exist. Starting a new training run.");
                None
            }
        },
        None => None,
    };
    if let Some(c) = &resumed {
        if c.position.placeholder_token != a.placeholder_token || c.position.num_vectors != n {
            bail!(
                "the checkpoint trains {} with {} vectors, not {} with {n}",
                c.position.placeholder_token,
                c.position.num_vectors,
                a.placeholder_token
            );
        }
        rows = c.rows.to_kind(Kind::Float);
        position = c.position.clone();
        // The random stream is replayed from the run's own seed, whatever this run was given.
        if a.seed.is_some_and(|s| s != c.position.seed) {
            tracing::warn!("--seed {} differs from the checkpoint's {}: continuing with the checkpoint's", a.seed.unwrap_or_default(), c.position.seed);
        }
        seed = c.position.seed;
    }
    let rows = rows.to_device(device).set_requires_grad(true);
    text_encoder.set_new_rows(rows.shallow_clone())?;
    let trainable = text_encoder.new_rows().context("placeholder rows")?.shallow_clone();
    let cfg = AdamWConfig { lr, beta1: a.adam_beta1, beta2: a.adam_beta2, eps: a.adam_epsilon, weight_decay: a.adam_weight_decay };
    let mut opt = AdamW::new(vec![trainable.shallow_clone()], cfg)?;
    let schedule = LrSchedule::from_name(
        &a.lr_scheduler,
        &ScheduleArgs { num_warmup_steps: a.lr_warmup_steps, num_training_steps: a.max_train_steps as i64, num_cycles: a.lr_num_cycles, learning_rate: lr },
    )?;
    let mut lr_sched = LrScheduler::new(schedule, lr);
    if let Some(c) = &resumed {
        let adam: Vec<(String, Tensor)> =
            c.optimizer.iter().filter(|(k, _)| !k.starts_with("scaler.")).map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
        opt.load_state(&adam)?;
        lr_sched.load_state(&c.scheduler)?;
    }
    opt.set_lr(lr_sched.lr());
    let mut scaler = (kind == Kind::Half).then(super::grad_scaler::GradScaler::default);
    if let (Some(s), Some(c)) = (scaler.as_mut(), &resumed) {
        let st: Vec<(String, Tensor)> =
            c.optimizer.iter().filter_map(|(k, t)| k.strip_prefix("scaler.").map(|k| (k.to_string(), t.shallow_clone()))).collect();
        s.load_state(&st)?;
    }
    let loaded = vec![LoadedToken { token: a.placeholder_token.clone(), vectors: n, file: PathBuf::new() }];
    let models = Models { tokenizer, text_encoder, unet, vae, device, kind, tokens: loaded };

    // Latents of each (image, flip), encoded once: the posterior's mean and std (a fresh draw
    // from them every step keeps the training distribution exactly the script's).
    let mut cache: HashMap<(usize, bool), (Tensor, Tensor)> = HashMap::new();
    if !a.no_cache_latents {
        let _g = tch::no_grad_guard();
        for i in 0..dataset.num_images() {
            for flip in [false, true] {
                let post = models.vae.encode(&dataset.pixels(i, flip).unsqueeze(0).to_device(device).to_kind(kind));
                cache.insert((i, flip), (post.mean, post.std));
            }
        }
    }

    let templates = a.learnable_property().templates();
    let placeholder = placeholder_string(&tokens);
    // Captions are template x placeholder: tokenize each once.
    let caption_ids: Vec<Vec<i64>> = templates.iter().map(|t| models.tokenizer.encode(&caption(t, &placeholder))).collect::<Result<_>>()?;
    tracing::info!("***** Running training *****");
    tracing::info!("  Num examples = {}", dataset.len());
    tracing::info!("  Num Epochs = {num_epochs}");
    tracing::info!("  Instantaneous batch size per device = {}", a.train_batch_size);
    tracing::info!("  Total train batch size (w. parallel, distributed & accumulation) = {}", a.train_batch_size as u64 * a.gradient_accumulation_steps);
    tracing::info!("  Gradient Accumulation steps = {}", a.gradient_accumulation_steps);
    tracing::info!("  Total optimization steps = {}", a.max_train_steps);
    let mut metrics = super::metrics::Metrics::new(&a.output_dir, &a.logging_dir, a.report_to.parse()?)?;
    let bar = indicatif::ProgressBar::new(a.max_train_steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template("Steps {pos}/{len} [{bar:30}] {per_sec} ETA {eta} {msg}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(position.global_step);
    let mut losses = Vec::new();
    let lat = a.resolution as i64 / models.vae_scale_factor();
    if position.global_step >= a.max_train_steps {
        // The script would still run one more update here (its stop check follows the step).
        tracing::info!("the checkpoint is already at step {} of {}: nothing to train", position.global_step, a.max_train_steps);
    }

    // The script's random stream, from set_seed on: replayed without computing up to the
    // checkpoint when resuming, so a resumed run continues the very same draws.
    let step_draws = |bsz: i64| {
        let posterior = Tensor::randn([bsz, 4, lat, lat], (kind, Device::Cpu));
        // The script's `randn_like(latents)`: with more than one image its latents come out of
        // the VAE channels-last, and libtorch fills such a tensor element by element (not in
        // the vectorised blocks of a contiguous one), which draws different numbers.
        let noise = if bsz > 1 {
            let mut t = Tensor::empty([bsz, lat, lat, 4], (kind, Device::Cpu)).permute([0, 3, 1, 2]);
            let _ = t.normal_(0.0, 1.0);
            t.contiguous()
        } else {
            Tensor::randn([bsz, 4, lat, lat], (kind, Device::Cpu))
        };
        let timesteps = Tensor::randint(ddpm.num_train_timesteps(), [bsz], (Kind::Int64, Device::Cpu));
        (posterior, noise, timesteps)
    };
    let (vocab_after, width) = (models.text_encoder.base_vocab() + n as i64, models.text_encoder.hidden_size());
    let replay = |micro_steps: u64| {
        ScriptStream::replay(seed, vocab_after, width, n as i64, dataset.len(), a.train_batch_size, templates.len(), micro_steps, &|b| {
            let _ = step_draws(b);
        })
    };
    let (mut stream, mut epoch) = replay(position.micro_step);
    let done = position.global_step >= a.max_train_steps;
    'epochs: while !done && epoch < num_epochs {
        if !stream.in_epoch() {
            stream.start_epoch();
        }
        while let Some((items, last_batch)) = stream.next_batch() {
            let mut ids = Vec::with_capacity(items.len() * 77);
            let mut means = Vec::new();
            let mut stds = Vec::new();
            let mut pixels = Vec::new();
            for item in &items {
                let image = dataset.image_index(item.index);
                ids.extend_from_slice(&caption_ids[item.template]);
                match cache.get(&(image, item.flip)) {
                    Some((m, s)) => {
                        means.push(m.shallow_clone());
                        stds.push(s.shallow_clone());
                    }
                    None => pixels.push(dataset.pixels(image, item.flip)),
                }
            }
            let bsz = items.len() as i64;
            let (posterior_noise, noise, timesteps) = step_draws(bsz);
            tracing::debug!(
                "micro-step {}: items {:?}, timesteps {:?}",
                position.micro_step,
                items.iter().map(|i| (i.index, i.template, i.flip)).collect::<Vec<_>>(),
                Vec::<i64>::try_from(&timesteps).unwrap_or_default()
            );
            let (posterior_noise, noise, timesteps) = (posterior_noise.to_device(device), noise.to_device(device), timesteps.to_device(device));
            let latents = tch::no_grad(|| {
                let (mean, std) = if pixels.is_empty() {
                    (Tensor::cat(&means, 0), Tensor::cat(&stds, 0))
                } else {
                    let post = models.vae.encode(&Tensor::stack(&pixels, 0).to_device(device).to_kind(kind));
                    (post.mean, post.std)
                };
                (mean.to_kind(Kind::Float) + std.to_kind(Kind::Float) * posterior_noise.to_kind(Kind::Float)) * scaling
            });
            let input_ids = Tensor::from_slice(&ids).reshape([bsz, -1]).to_device(device);
            let x = StepInputs { input_ids, latents, noise, timesteps };
            let loss = step::loss(&models.text_encoder, &models.unet, &ddpm, &x, kind)?;
            let scale = scaler.as_ref().map_or(1.0, |s| s.scale);
            (&loss * (scale / a.gradient_accumulation_steps as f64)).backward();
            let loss_value = loss.double_value(&[]);
            losses.push(loss_value);
            position.micro_step += 1;
            position.accumulation += 1;
            let sync = position.accumulation % a.gradient_accumulation_steps == 0 || last_batch;
            if last_batch {
                position.accumulation = 0;
            }
            if sync {
                let finite = match scaler.as_mut() {
                    Some(s) => s.unscale(std::slice::from_ref(&trainable))?,
                    None => true,
                };
                if finite {
                    opt.step()?;
                    opt.set_lr(lr_sched.step());
                } else {
                    tracing::warn!("fp16 gradient overflow: skipping this update, loss scale now {}", scaler.as_ref().map_or(0.0, |s| s.scale));
                }
                opt.zero_grad();
                position.global_step += 1;
                bar.set_position(position.global_step);
                let gs = position.global_step;
                if gs % a.save_steps == 0 {
                    save_embeddings(&a.output_dir.join(format!("learned_embeds-steps-{gs}.{ext}")), &a.placeholder_token, &trainable)?;
                }
                if gs % a.checkpointing_steps == 0 {
                    if let Some(limit) = a.checkpoints_total_limit {
                        state::prune(&a.output_dir, limit)?;
                    }
                    let dir = a.output_dir.join(format!("checkpoint-{gs}"));
                    let mut optimizer = opt.state()?;
                    if let Some(s) = &scaler {
                        optimizer.extend(s.state().into_iter().map(|(k, t)| (format!("scaler.{k}"), t)));
                    }
                    state::save(&dir, &Checkpoint { position: position.clone(), rows: trainable.detach(), optimizer, scheduler: lr_sched.state() })?;
                    tracing::info!("Saved state to {}", dir.display());
                }
                if let Some(prompt) = &a.validation_prompt {
                    if validation_steps > 0 && gs % validation_steps == 0 {
                        // A failed validation never ends the run: the embeddings are what
                        // the user waits for (libtorch failures arrive as panics: caught too).
                        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            validate(&models, &sched_cfg, prompt, a, seed, gs).and_then(|images| metrics.log_image_tensor(gs, &images))
                        }));
                        match run {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::warn!("validation at step {gs} failed, training goes on: {e:#}"),
                            Err(_) => tracing::warn!("validation at step {gs} failed (see the error above), training goes on"),
                        }
                        // Validation seeded the generator (the script uses its own): put the
                        // training stream back where it was.
                        stream = replay(position.micro_step).0;
                    }
                }
            }
            metrics.log(position.global_step, position.micro_step, epoch, loss_value, lr_sched.lr())?;
            bar.set_message(format!("loss={loss_value:.4} lr={:.3e}", lr_sched.lr()));
            if position.global_step >= a.max_train_steps {
                break 'epochs;
            }
        }
        epoch += 1;
    }
    bar.finish();
    metrics.finish()?;
    if a.save_as_full_pipeline {
        super::full_pipeline::save(&repo, &a.output_dir, a.variant.as_deref(), &tokens, &ids, &trainable)?;
    }
    let final_path = a.output_dir.join(format!("learned_embeds.{ext}"));
    save_embeddings(&final_path, &a.placeholder_token, &trainable)?;
    Ok(TrainOutcome { embeddings_file: final_path, global_step: position.global_step, losses })
}

/// The script's `log_validation`: DPM-Solver++ from the model's scheduler config, 25 steps,
/// guidance 7.5, the default size; one seeded generator for all images of a call.
fn validate(models: &Models, sched_cfg: &SchedulerConfig, prompt: &str, a: &TrainArgs, seed: u64, step: u64) -> Result<Tensor> {
    tracing::info!("Running validation... Generating {} images with prompt: {prompt}.", a.num_validation_images);
    let dir = a.output_dir.join("validation");
    std::fs::create_dir_all(&dir)?;
    let size = models.default_size();
    let scale = models.vae_scale_factor();
    let o = GenerateOptions { prompt: prompt.to_string(), steps: 25, guidance_scale: 7.5, seed, ..GenerateOptions::default() };
    tch::manual_seed(seed as i64);
    let mut all = Vec::new();
    for i in 0..a.num_validation_images {
        let mut s = schedulers::load(sched_cfg, Some(SchedulerKind::DpmSolverMultistep))?;
        let latents = schedulers::randn(&[1, models.unet.config.in_channels, size / scale, size / scale], models.kind, models.device);
        let out = models.generate_from(s.as_mut(), &o, Some(latents), &mut |_, _| {})?;
        let pixels = crate::image_out::to_pixels(&out.decoded);
        let path = dir.join(format!("step-{step}-{i}.png"));
        let text = vec![("prompt".to_string(), prompt.to_string()), ("step".to_string(), step.to_string()), ("seed".to_string(), seed.to_string())];
        crate::image_out::save_png(&path, &pixels.get(0), &text)?;
        all.push(pixels);
    }
    Ok(Tensor::cat(&all, 0))
}
