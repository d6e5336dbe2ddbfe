//! The run's plan, fixed before the first step: the script's step and epoch arithmetic (each
//! of `world` data-parallel processes runs its share of every epoch's batches, as accelerate
//! shards them), and how often validation runs.
use super::bucket_batches::BucketBatching;
use super::config::TrainConfig;

pub(super) struct Plan {
    /// Epochs of batches the stream may run (the script's `num_train_epochs`, recomputed from
    /// `max_train_steps`).
    pub(super) num_epochs: u64,
    /// Updates between validations (0: none).
    validation_steps: u64,
}

impl Plan {
    /// The plan of a run over a dataset of `len` items on `world` processes (with buckets, the
    /// epoch is their batches: each bucket's last one may be short).
    pub(super) fn new(cfg: &TrainConfig, len: usize, world: usize, buckets: Option<&BucketBatching>) -> Self {
        let optim = &cfg.optim;
        let batches_per_epoch = match buckets {
            Some(b) => b.batches_per_epoch(len, optim.batch_size, world),
            None => super::script_rng::batches_per_epoch(len, optim.batch_size, world),
        };
        let updates_per_epoch = batches_per_epoch.div_ceil(optim.gradient_accumulation_steps);
        let num_epochs = optim.max_train_steps.div_ceil(updates_per_epoch);
        let validation_steps = cfg.validation.as_ref().map_or(0, |v| v.every.steps(len));
        Plan { num_epochs, validation_steps }
    }

    /// Whether the run validates at all.
    pub(super) fn validates(&self) -> bool {
        self.validation_steps > 0
    }

    /// Whether update `global_step` is followed by a validation.
    pub(super) fn validates_at(&self, global_step: u64) -> bool {
        self.validation_steps > 0 && global_step % self.validation_steps == 0
    }

    /// The script's "Running training" lines, for a dataset of `len` items.
    pub(super) fn log(&self, cfg: &TrainConfig, len: usize, world: usize) {
        let optim = &cfg.optim;
        tracing::info!("***** Running training *****");
        tracing::info!("  Num examples = {len}");
        tracing::info!("  Num Epochs = {}", self.num_epochs);
        tracing::info!("  Instantaneous batch size per device = {}", optim.batch_size);
        tracing::info!(
            "  Total train batch size (w. parallel, distributed & accumulation) = {}",
            optim.batch_size as u64 * optim.gradient_accumulation_steps * world as u64
        );
        tracing::info!("  Gradient Accumulation steps = {}", optim.gradient_accumulation_steps);
        tracing::info!("  Total optimization steps = {}", optim.max_train_steps);
    }
}
