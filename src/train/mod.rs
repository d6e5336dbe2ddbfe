//! Training new tokens: the dataset, the optimizer and LR schedules, the step (where the loss
//! comes from), checkpoints, and the loop.
pub mod dataset;
pub mod full_pipeline;
pub mod grad_scaler;
pub mod lr_schedule;
pub mod metrics;
pub mod optim;
pub mod script_rng;
pub mod state;
pub mod step;
pub mod trainer;
