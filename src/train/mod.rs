//! Training new tokens, as `textual_inversion.py`: the typed configuration ([`config`]), the
//! dataset, what happens before the first step ([`setup`]), the loop ([`trainer`]), one step's
//! loss ([`step`]), each step's random draws ([`draws`], [`script_rng`]), what an update
//! triggers ([`on_update`]: saves, checkpoints, [`validation`]), the optimizer and LR schedules,
//! checkpoints ([`state`]) and metrics.
//!
//! Where a second model family slots in (SDXL): [`config`] gains the SDXL script's flags, the
//! dataset its `original_size`/crop coordinates per image, [`step`] the added conditioning
//! (pooled embedding, time ids) and a second text encoder, [`setup`] the second tokenizer's
//! placeholder tokens and rows, [`on_update`] the second embedding file.
pub mod config;
pub mod dataset;
pub mod draws;
pub mod full_pipeline;
pub mod grad_scaler;
pub mod latent_cache;
pub mod lr_schedule;
pub mod metrics;
pub mod on_update;
pub mod optim;
pub mod output;
mod plan;
mod reporting;
mod run_state;
pub mod script_rng;
pub mod setup;
pub mod state;
pub mod step;
pub mod trainer;
pub mod validation;
