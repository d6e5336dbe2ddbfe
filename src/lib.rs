//! Textual Inversion for Stable Diffusion on libtorch (through `tch`).
//!
//! The file formats (PyTorch checkpoints, safetensors, embedding layouts) live in the
//! libtorch-free [`formats`] crate; this crate adds tensors, devices and the command line.
pub use ti_formats as formats;

pub mod cli;
pub mod device;
pub mod image_out;
pub mod models;
pub mod pipeline;
pub mod schedulers;
pub mod tensors;
pub mod textual_inversion;
pub mod train;
