//! What a run is at a given update: its [`Position`], the trained rows and what updates them
//! (AdamW, the LR schedule, fp16's loss scaler), and the script's random stream. The first two
//! are what a `checkpoint-N` holds ([`RunState::checkpoint`], [`Rows::new`] reading one back);
//! the stream is replayed from the position's seed and micro-step ([`Stream::replay`]).
use super::config::OptimConfig;
use super::draws::{BucketShapes, Draws, StepDraws};
use super::grad_scaler::GradScaler;
use super::lr_schedule::{LrSchedule, LrScheduler, ScheduleArgs};
use super::optim::{AdamW, AdamWConfig};
use super::script_rng::{Item, ScriptStream};
use super::state::{Checkpoint, Position};
use crate::distributed::ProcessGroup;
use anyhow::{Context, Result};
use tch::{Kind, Tensor};

/// The run's state: changed by each micro-step and update ([`super::trainer`]), saved by
/// [`super::on_update`], made (fresh or from a checkpoint) by [`super::setup`].
pub(super) struct RunState {
    pub(super) position: Position,
    pub(super) rows: Rows,
    pub(super) stream: Stream,
}

/// The trained rows and what updates them.
pub(super) struct Rows {
    /// The `[n, D]` placeholder rows of each text encoder: the only tensors with gradient.
    pub(super) trainable: Vec<Tensor>,
    opt: AdamW,
    lr_sched: LrScheduler,
    /// fp16 loss scaling (None in fp32 and bf16, as accelerate).
    scaler: Option<GradScaler>,
    /// LR scheduler steps per update: the world size, as accelerate's scheduler steps once per
    /// process (its schedule is built for that many steps).
    sched_steps: usize,
}

/// The script's random stream: each micro-step's items and draws, in its order.
pub(super) struct Stream {
    draws: StepDraws,
    stream: ScriptStream,
    /// The epoch of the next batch fetched.
    epoch: u64,
    /// `--enable_bucket`: batches of one bucket, drawn at its latent size.
    buckets: Option<BucketShapes>,
}

/// One micro-step's data: the items, whether it ends its epoch, its draws.
pub(super) struct Batch {
    pub(super) items: Vec<Item>,
    pub(super) last: bool,
    pub(super) draws: Draws,
    pub(super) epoch: u64,
}

impl RunState {
    /// Whether the run has made its `max_train_steps` updates.
    pub(super) fn done(&self, max_train_steps: u64) -> bool {
        self.position.global_step >= max_train_steps
    }

    /// Whether `batch`'s micro-step will end in an update: accelerate syncs every
    /// `accumulation_steps` batches and at an epoch's last batch.
    pub(super) fn syncs(&self, batch: &Batch, accumulation_steps: u64) -> bool {
        (self.position.accumulation + 1) % accumulation_steps == 0 || batch.last
    }

    /// Counts a finished micro-step; returns whether it updates (see [`RunState::syncs`]).
    pub(super) fn end_micro_step(&mut self, batch: &Batch, accumulation_steps: u64) -> bool {
        let p = &mut self.position;
        p.micro_step += 1;
        p.accumulation += 1;
        let sync = p.accumulation % accumulation_steps == 0 || batch.last;
        if batch.last {
            p.accumulation = 0;
        }
        sync
    }

    /// The gradients averaged over the ranks (as DDP: each divided by the world size, then
    /// summed; only the placeholder rows, where DDP reduces the whole embedding matrix), the
    /// optimizer and LR steps (skipped on an fp16 overflow, with a warning), the gradients
    /// zeroed, and one more update counted.
    pub(super) fn update(&mut self, max_grad_norm: Option<f64>, ranks: &ProcessGroup) -> Result<()> {
        let r = &mut self.rows;
        if ranks.world_size() > 1 {
            for t in &r.trainable {
                let mut grad = t.grad();
                if grad.defined() {
                    ranks.all_reduce_mean(&mut grad).context("averaging the gradients over the ranks")?;
                }
            }
        }
        let finite = match r.scaler.as_mut() {
            Some(s) => s.unscale(&r.trainable)?,
            None => true,
        };
        if finite {
            if let Some(max) = max_grad_norm {
                super::optim::clip_grad_norm(&r.trainable, max);
            }
            r.opt.step()?;
            let mut lr = r.lr_sched.lr();
            for _ in 0..r.sched_steps {
                lr = r.lr_sched.step();
            }
            r.opt.set_lr(lr);
        } else {
            tracing::warn!("fp16 gradient overflow: skipping this update, loss scale now {}", r.scaler.as_ref().map_or(0.0, |s| s.scale));
        }
        r.opt.zero_grad();
        self.position.global_step += 1;
        Ok(())
    }

    /// What `checkpoint-N` holds: the position, the rows, AdamW's state with the loss scaler's
    /// beside it (`scaler.` prefix), the LR schedule's.
    pub(super) fn checkpoint(&self) -> Result<Checkpoint> {
        let r = &self.rows;
        let mut optimizer = r.opt.state()?;
        if let Some(s) = &r.scaler {
            optimizer.extend(s.state().into_iter().map(|(k, t)| (format!("scaler.{k}"), t)));
        }
        let rows = r.trainable.iter().map(Tensor::detach).collect();
        Ok(Checkpoint { position: self.position.clone(), rows, optimizer, scheduler: r.lr_sched.state(), eval_history: Vec::new() })
    }
}

impl Rows {
    /// One AdamW over every encoder's `trainable` rows (as the SDXL script's one optimizer over
    /// both), the LR schedule, the loss scaler when `kind` is fp16; their states from
    /// `resumed` when there is one. On `world` processes, as accelerate: `--scale_lr` also
    /// multiplies by `world`, and the schedule runs `world` steps per update (warmup and length
    /// multiplied alike), so update k uses the LR one process would.
    pub(super) fn new(trainable: Vec<Tensor>, optim: &OptimConfig, kind: Kind, resumed: Option<&Checkpoint>, world: usize) -> Result<Self> {
        let lr = if optim.scale_lr {
            optim.learning_rate * (optim.gradient_accumulation_steps * optim.batch_size as u64 * world as u64) as f64
        } else {
            optim.base_lr()
        };
        let per_update = world.max(1) as i64;
        let adam_cfg = AdamWConfig { lr, beta1: optim.adam_beta1, beta2: optim.adam_beta2, eps: optim.adam_epsilon, weight_decay: optim.adam_weight_decay };
        let mut opt = AdamW::new(trainable.iter().map(Tensor::shallow_clone).collect(), adam_cfg)?;
        let schedule = LrSchedule::new(
            optim.lr_schedule,
            &ScheduleArgs {
                num_warmup_steps: optim.lr_warmup_steps * per_update,
                num_training_steps: optim.max_train_steps as i64 * per_update,
                num_cycles: optim.lr_num_cycles,
                learning_rate: lr,
            },
        )?;
        let mut lr_sched = LrScheduler::new(schedule, lr);
        let mut scaler = (kind == Kind::Half).then(GradScaler::default);
        if let Some(checkpoint) = resumed {
            opt.load_state(&split_optimizer_state(checkpoint, false))?;
            lr_sched.load_state(&checkpoint.scheduler)?;
            if let Some(s) = scaler.as_mut() {
                s.load_state(&split_optimizer_state(checkpoint, true))?;
            }
        }
        opt.set_lr(lr_sched.lr());
        Ok(Rows { trainable, opt, lr_sched, scaler, sched_steps: world.max(1) })
    }

    /// The learning rate of the next update.
    pub(super) fn lr(&self) -> f64 {
        self.lr_sched.lr()
    }

    /// What the loss is multiplied by before its backward: fp16's loss scale, else 1.
    pub(super) fn loss_scale(&self) -> f64 {
        self.scaler.as_ref().map_or(1.0, |s| s.scale)
    }
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

impl Stream {
    /// The stream after `micro_steps` micro-steps from `set_seed`: every draw made again
    /// without computing, so a resumed run continues the very same draws.
    pub(super) fn replay(draws: StepDraws, buckets: Option<BucketShapes>, micro_steps: u64) -> Self {
        let (stream, epoch) = draws.replay_with(buckets.as_ref(), micro_steps);
        Stream { draws, stream, epoch, buckets }
    }

    /// The next batch of the script's stream and its draws (starting the next epoch when one
    /// ends); None after epoch `num_epochs`.
    pub(super) fn fetch(&mut self, num_epochs: u64) -> Option<Batch> {
        if !self.stream.in_epoch() {
            if self.epoch >= num_epochs {
                return None;
            }
            self.stream.start_epoch();
        }
        let (items, last) = self.stream.next_batch()?;
        let draws = self.draws.draw_items(&items, self.buckets.as_ref());
        let batch = Batch { items, last, draws, epoch: self.epoch };
        if last {
            self.epoch += 1;
        }
        Some(batch)
    }
}
