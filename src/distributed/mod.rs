//! Data-parallel ranks on PyTorch's c10d, the engine under torchrun, accelerate and DDP: where
//! this process sits ([`World`], from torchrun's, SLURM's or hand-set variables), the store
//! the ranks meet through ([`Store`]), the collectives on Gloo ([`ProcessGroup`]), and
//! `--num_processes` ([`spawn_local_ranks`]). Users: docs/distributed.md.
//!
//! Gloo works on CPU tensors; a CUDA tensor goes through a host copy (NCCL is not wired: what
//! training reduces is a few KB of placeholder rows). Every wait is bounded by [`Timeouts`],
//! and a rank that dies is named in the error of those that waited for it. Built without
//! gloo's headers (see build.rs) the module still parses the environment and runs one
//! process; joining several ranks answers [`NO_C10D`].
//!
//! Depends on tch only: nothing here knows about models or training.
mod ffi;
mod heartbeat;
mod launch;
mod process_group;
mod store;
mod timeouts;
mod world;

pub use ffi::NO_C10D;
pub use launch::{free_port, spawn_local_ranks, without_flag};
pub use process_group::ProcessGroup;
pub use store::Store;
pub use timeouts::Timeouts;
pub use world::{Launcher, Master, World};

/// Whether this build has c10d (gloo's headers were found when it was compiled).
pub const AVAILABLE: bool = cfg!(ti_c10d);
