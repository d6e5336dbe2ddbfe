//! Training new tokens: the dataset, the optimizer and LR schedules, the step, the loop.
pub mod dataset;
pub mod lr_schedule;
pub mod optim;
