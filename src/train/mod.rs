//! Training new tokens, as `textual_inversion.py`: the typed configuration ([`config`]), the
//! dataset, what happens before the first step ([`setup`]), the loop ([`trainer`]), one step's
//! loss ([`step`]), each step's random draws ([`draws`], [`script_rng`]), what an update
//! triggers ([`on_update`]: saves, checkpoints, [`validation`]), the optimizer and LR schedules,
//! checkpoints ([`state`]) and metrics.
//!
//! A run in progress is grouped by what changes each part: the run state a checkpoint holds
//! or replays (`run_state`), the plan fixed at start (`plan`), the reporting (`reporting`), and
//! the model and data that [`setup`] makes and nothing changes after.
//!
//! SDXL (`textual_inversion_sdxl.py`) runs through the same modules, chosen by the model's
//! family rather than by flags: the dataset keeps each image's `original_size`, [`setup`] adds
//! the placeholder tokens and rows to both tokenizers and text encoders, one AdamW trains both
//! row tensors, [`trainer`] gives each item its second tokenizer's ids and time ids, [`step`]
//! adds the conditioning (the second encoder's pooled embedding, the time ids), and
//! [`on_update`] writes `learned_embeds_2` and the `{clip_l, clip_g}` file.
pub mod bucket_batches;
pub mod config;
pub mod dataset;
pub mod draws;
pub mod early_stopping;
pub mod eval_loss;
pub mod full_pipeline;
pub mod grad_scaler;
pub mod inline_eval;
pub mod latent_cache;
pub mod lr_schedule;
pub mod metrics;
pub mod on_update;
pub mod optim;
pub mod output;
mod plan;
pub mod push;
mod reporting;
pub mod run_record;
mod run_state;
pub mod script_rng;
pub mod setup;
pub mod state;
pub mod step;
pub mod trainer;
pub mod validation;
