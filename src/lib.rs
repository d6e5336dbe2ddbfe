//! Textual Inversion for Stable Diffusion on libtorch (through `tch`).
//!
//! Data flows one way: files ([`formats`], the libtorch-free crate: checkpoints, safetensors,
//! embedding layouts) → tensors ([`tensors`], [`device`]) → models ([`models`]: one file per
//! diffusers module) and text ([`text`]: tokenizer + encoder + learned tokens) → a pipeline
//! ([`pipeline`]: text to image) or a training run ([`train`]) → files ([`image_out`], the
//! embedding writers). [`cli`] turns flags into each command's typed configuration.
pub use ti_formats as formats;

pub mod cli;
pub mod device;
pub mod distributed;
pub mod eval;
pub mod image_in;
pub mod image_out;
pub mod libtorch_extras;
pub mod malloc;
pub mod models;
pub mod pipeline;
pub mod progress;
pub mod schedulers;
pub mod seed;
pub mod tensors;
pub mod text;
pub mod train;
