//! Everything before the first step, in this order (`Trainer::start`): the inputs checked
//! before any model loads, the model with the placeholder tokens and their rows (in both text
//! encoders for SDXL, as `textual_inversion_sdxl.py`), the plan, the run state (fresh or from a
//! checkpoint: rows, AdamW and the LR schedule), the latent cache, the reporting, and the
//! random stream up to where the run is. The `Model` and `Data` made here stay as they are
//! for the whole run.
use super::bucket_batches::BucketBatching;
use super::config::{InitFrom, TrainConfig};
use super::dataset::{captions, placeholder_string, Captions, Dataset};
use super::draws::{BucketShapes, StepDraws};
use super::latent_cache::LatentCache;
use super::plan::Plan;
use super::reporting::Reporting;
use super::run_state::{Rows, RunState, Stream};
use super::script_rng::{Shard, StreamShape};
use super::state::{self, Checkpoint, Position};
use super::trainer::Trainer;
use crate::distributed::ProcessGroup;
use crate::models::repo::ModelRepo;
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
fn find_checkpoint(cfg: &TrainConfig, n: usize, world: usize) -> Result<Option<Checkpoint>> {
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
    if p.world_size != world {
        bail!(
            "{} was written by a run of {} process(es); this run has {world}: each process's share of the data order and draws depends on their number, so resume with {} (--num_processes or the launcher's)",
            dir.display(),
            p.world_size,
            p.world_size
        );
    }
    let buckets = cfg.data.buckets.as_ref().map(|b| b.describe());
    if p.buckets != buckets {
        let say = |b: &Option<String>| b.as_ref().map_or("without --enable_bucket".to_string(), |b| format!("with --enable_bucket {b}"));
        bail!(
            "{} was written by a run {}; this run is {}: the batches replayed depend on the buckets, so resume with the same bucket flags",
            dir.display(),
            say(&p.buckets),
            say(&buckets)
        );
    }
    // The random stream is replayed from the run's own seed, whatever this run was given.
    if cfg.seed.is_some_and(|s| s != p.seed) {
        tracing::warn!("--seed {} differs from the checkpoint's {}: continuing with the checkpoint's", cfg.seed.unwrap_or_default(), p.seed);
    }
    Ok(Some(checkpoint))
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

/// The model trained: its tokenizers hold the placeholder tokens and its text encoders their
/// rows; the noise schedule of its training. Stays as [`Model::load`] and [`Data::prepare`]
/// leave it.
pub(super) struct Model {
    pub(super) repo: ModelRepo,
    pub(super) models: Models,
    pub(super) ddpm: DdpmScheduler,
    /// `P, P_1, ...` and their ids in each tokenizer.
    pub(super) tokens: Vec<String>,
    pub(super) token_ids: Vec<Vec<i64>>,
}

/// The training data, as loaded.
pub(super) struct Data {
    pub(super) dataset: Dataset,
    /// Each item's caption (template, caption file, tags).
    pub(super) captions: Captions,
    /// All placeholder tokens, as captions write the concept.
    pub(super) placeholder: String,
    pub(super) cache: LatentCache,
}

/// What the user controls, checked before any model loads.
struct Inputs {
    repo: ModelRepo,
    dataset: Dataset,
    captions: Captions,
    /// `--seed`, or one from the clock.
    seed: u64,
}

/// The configuration, the model's files, the images and captions; then the output folder made
/// ready, the device, TF32 and the seed.
fn check_inputs(cfg: &TrainConfig, ranks: &ProcessGroup) -> Result<Inputs> {
    cfg.check()?;
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
    let data_dir = train_data_dir(&data.dir, ranks)?;
    let dataset = match &data.buckets {
        Some(b) => Dataset::load_bucketed(&data_dir, b, data.repeats, data.order, caption_ext.as_deref())?,
        None => Dataset::load_with(&data_dir, data.resolution, data.center_crop && !xl, data.repeats, data.order, caption_ext.as_deref())?,
    };
    let loss = &cfg.loss;
    let dataset = dataset.with_masks(data.mask.as_ref(), loss.normalize_masked_area_loss && loss.unmasked_weight == 0.0)?;
    let captions = Captions::load(&cfg.captions, data.property, &dataset, &cfg.placeholder_token)?;
    if ranks.rank() == 0 {
        super::output::prepare(cfg, &repo, xl)?;
        super::run_record::RunRecord::new(cfg, &data_dir, xl).write(&cfg.output.dir)?;
        write_buckets(cfg, &dataset)?;
    }
    crate::device::ensure_available(cfg.device)?;
    // The script's `torch.backends.cuda.matmul.allow_tf32 = True`, set on libtorch's context.
    if cfg.allow_tf32 {
        crate::libtorch_extras::set_allow_tf32(true)?;
    }
    let seed = match cfg.seed {
        Some(s) => s,
        None => {
            // Every rank draws alike (accelerate's set_seed on each): rank 0's clock decides.
            let mut s = Tensor::from(crate::seed::clock_seed() as i64);
            ranks.broadcast(&mut s, 0).context("sharing rank 0's seed")?;
            let s = s.int64_value(&[]) as u64;
            tracing::info!("no --seed given: using {s}");
            s
        }
    };
    Ok(Inputs { repo, dataset, captions, seed })
}

impl Model {
    /// Loads the model of `repo` and adds the placeholder tokens; returns it with the number
    /// of vectors and each text encoder's starting rows ([`initial_vectors`]).
    fn load(cfg: &TrainConfig, repo: ModelRepo) -> Result<(Self, usize, Vec<Tensor>)> {
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
        Ok((Model { repo, models, ddpm, tokens, token_ids }, n, init_rows))
    }
}

/// The run's position and rows: a resumed checkpoint's, else step 0 (from `seed`) and
/// `init_rows`. The rows go into the text encoders, which train them, and AdamW with the LR
/// schedule over them (their states from the checkpoint).
fn restore_or_start(cfg: &TrainConfig, models: &mut Models, n: usize, init_rows: &[Tensor], seed: u64, world: usize) -> Result<(Position, Rows)> {
    let resumed = find_checkpoint(cfg, n, world)?;
    let (rows, position) = match &resumed {
        Some(checkpoint) => {
            if checkpoint.rows.len() != init_rows.len() {
                bail!("the checkpoint holds rows for {} text encoder(s); this model has {}", checkpoint.rows.len(), init_rows.len());
            }
            (checkpoint.rows.iter().map(|r| r.to_kind(Kind::Float)).collect::<Vec<_>>(), checkpoint.position.clone())
        }
        None => (
            init_rows.iter().map(|r| r.detach().to_kind(Kind::Float)).collect(),
            Position {
                global_step: 0,
                micro_step: 0,
                accumulation: 0,
                seed,
                placeholder_token: cfg.placeholder_token.clone(),
                num_vectors: n,
                world_size: world,
                buckets: cfg.data.buckets.as_ref().map(|b| b.describe()),
            },
        ),
    };
    let mut trainable = Vec::new();
    for (text, rows) in models.stacks_mut().into_iter().zip(rows) {
        text.encoder.set_new_rows(rows.to_device(cfg.device).set_requires_grad(true))?;
        trainable.push(text.encoder.new_rows().context("placeholder rows")?.shallow_clone());
    }
    let rows = Rows::new(trainable, &cfg.optim, cfg.precision.kind(), resumed.as_ref(), world)?;
    Ok((position, rows))
}

impl Data {
    /// The latent cache (when it fits: [`latent_cache_fits`]) and the placeholder string;
    /// the VAE parts training no longer needs let go (`generates`: images are made during the
    /// run besides validation's, e.g. by an inline evaluation).
    fn prepare(cfg: &TrainConfig, dataset: Dataset, captions: Captions, model: &mut Model, generates: bool) -> Result<Self> {
        let kind = cfg.precision.kind();
        let models = &mut model.models;
        let cache_latents = cfg.cache_latents && latent_cache_fits(models, &dataset, kind);
        let cache = if cache_latents { LatentCache::build(&models.vae, &dataset, cfg.device, kind)? } else { LatentCache::default() };
        // What training no longer needs goes (the VAE is a tenth of SD 1.5's weights): the
        // encoder once every latent is cached, the decoder when no image is generated.
        if cache_latents {
            models.vae.release_encoder();
        }
        if cfg.validation.is_none() && !generates {
            models.vae.release_decoder();
        }
        let placeholder = placeholder_string(&model.tokens);
        Ok(Data { dataset, captions, placeholder, cache })
    }
}

/// `--enable_bucket`: the bucket table logged (kohya's lines) and `buckets.json` written
/// (atomically) in the output folder.
fn write_buckets(cfg: &TrainConfig, dataset: &Dataset) -> Result<()> {
    let (Some(table), Some(json)) = (dataset.bucket_table(), dataset.buckets_json()) else {
        return Ok(());
    };
    tracing::info!("number of images (including repeats) per bucket:");
    for (i, ((w, h), n)) in table.iter().enumerate() {
        tracing::info!("bucket {i}: resolution ({w}, {h}), count: {n}");
    }
    let path = cfg.output.dir.join(super::output::BUCKETS_FILE);
    crate::formats::atomic::write(&path, serde_json::to_string_pretty(&json)?.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// `--enable_bucket`: which bucket each image is in (the batching, shuffled from `seed`) and
/// each image's latent `(height, width)`.
fn bucket_shapes(dataset: &Dataset, models: &Models, seed: u64) -> Option<BucketShapes> {
    let image_bucket = dataset.image_buckets()?;
    let f = models.vae_scale_factor().max(1);
    let latent = (0..dataset.num_images()).map(|i| dataset.geometry(i).map_or((0, 0), |g| (i64::from(g.size().1) / f, i64::from(g.size().0) / f))).collect();
    Some(BucketShapes { batching: BucketBatching { image_bucket, seed }, latent })
}

/// What the script's random stream depends on: the seed, the resized embedding matrices, the
/// data order's and captions' draws, each step's shapes.
fn step_draws(cfg: &TrainConfig, model: &Model, data: &Data, seed: u64, n: usize, ranks: &ProcessGroup) -> StepDraws {
    let models = &model.models;
    StepDraws {
        kind: cfg.precision.kind(),
        latent_size: cfg.data.resolution as i64 / models.vae_scale_factor(),
        num_train_timesteps: model.ddpm.num_train_timesteps(),
        seed,
        resized: models.stacks().iter().map(|t| (t.encoder.base_vocab() + n as i64, t.encoder.hidden_size())).collect(),
        num_vectors: n as i64,
        shape: StreamShape {
            len: data.dataset.len(),
            batch_size: cfg.optim.batch_size,
            templates: data.captions.num_templates(),
            tags: data.captions.tag_draws(),
            shard: (ranks.world_size() > 1).then(|| Shard { rank: ranks.rank(), world: ranks.world_size() }),
        },
        noise_offset: cfg.loss.noise_offset > 0.0,
    }
}

impl<'c> Trainer<'c> {
    /// Loads and prepares everything; nothing is trained yet.
    /// Loads and prepares everything on one of `ranks` (one process: a group of one); nothing
    /// is trained yet. Every rank must be started with the same configuration (checked).
    /// `generates`: images are made during the run besides validation's (the VAE's decoder
    /// is kept).
    pub(super) fn start(cfg: &'c TrainConfig, ranks: &'c ProcessGroup, generates: bool) -> Result<Self> {
        let started = std::time::Instant::now();
        let world = ranks.world_size();
        if world > 1 {
            ranks.check_same_config(&config_hash(cfg)).context("the ranks were started with different arguments")?;
        }
        let Inputs { repo, mut dataset, captions, seed } = check_inputs(cfg, ranks)?;
        let (mut model, n, init_rows) = Model::load(cfg, repo)?;
        let (position, rows) = restore_or_start(cfg, &mut model.models, n, &init_rows, seed, world)?;
        // Drawn from the run's own seed (a checkpoint's when resuming).
        dataset.choose_random_crops(position.seed)?;
        let buckets = bucket_shapes(&dataset, &model.models, position.seed);
        let plan = Plan::new(cfg, dataset.len(), world, buckets.as_ref().map(|b| &b.batching));
        let data = Data::prepare(cfg, dataset, captions, &mut model, generates)?;
        plan.log(cfg, data.dataset.len(), world);
        let report = Reporting::start(cfg, started, position.global_step, &rows.trainable, ranks.rank() == 0)?;
        // The script's random stream, from set_seed on: replayed without computing up to the
        // checkpoint when resuming, so a resumed run continues the very same draws.
        let stream = Stream::replay(step_draws(cfg, &model, &data, position.seed, n, ranks), buckets, position.micro_step);
        // `--eval_loss_steps`: the batch fixed now, on rank 0 (which evaluates).
        let eval =
            cfg.eval_loss.as_ref().map(|e| super::eval_loss::Evaluator::new(cfg, e, &model, &data, position.global_step, ranks.rank() == 0)).transpose()?;
        Ok(Trainer { cfg, ranks, model, data, run: RunState { position, rows, stream }, plan, report, eval, scorer: None })
    }
}

/// What every rank must agree on: the whole configuration but the device (each rank has its
/// own), hashed (std's SipHash with its fixed keys: the same on every rank of one build).
fn config_hash(cfg: &TrainConfig) -> String {
    use std::hash::{Hash, Hasher};
    let text = format!("{cfg:?}");
    let device = format!("device: {:?}", cfg.device);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.replacen(&device, "device: <per rank>", 1).hash(&mut h);
    format!("{:016x}", h.finish())
}

/// `--train_data_dir`, or a Hub dataset's snapshot folder ([`crate::models::hub::train_data_dir`]):
/// rank 0 fetches it, the other ranks then find it in the cache.
fn train_data_dir(dir: &Path, ranks: &ProcessGroup) -> Result<PathBuf> {
    let is_hub = dir.to_str().is_some_and(crate::models::hub::is_hub_id);
    let hub = crate::models::files::HubOptions::from_env();
    if !is_hub || ranks.world_size() == 1 {
        return crate::models::hub::train_data_dir(dir, None, &hub);
    }
    if ranks.rank() != 0 {
        ranks.barrier().context("waiting for rank 0 to fetch the Hub dataset")?;
        return crate::models::hub::train_data_dir(dir, None, &hub);
    }
    let resolved = crate::models::hub::train_data_dir(dir, None, &hub)?;
    ranks.barrier().context("sharing the fetched Hub dataset")?;
    Ok(resolved)
}
