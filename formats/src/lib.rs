//! Reading and writing the files Textual Inversion users exchange, without executing anything.
//!
//! - [`pickle`]: a safe unpickler (allow-listed globals only) producing a [`pickle::Value`] tree,
//!   and the small pickler the writer needs.
//! - [`torch_file`]: `torch.save` containers (zip of any prefix, and the legacy pre-1.6 stream),
//!   their storages turned into [`RawTensor`]s; and a writer whose files
//!   `torch.load(weights_only=True)` reads.
//! - [`safetensors_io`]: memory-mapped safetensors reading, atomic writing with metadata.
//! - [`regular`]: opening only regular files (never a FIFO or device), reading up to a bound.
//! - [`embeddings`]: every embedding layout in the wild, detected by content.
//!
//! This crate has no libtorch dependency, so its readers can be fuzzed and tested quickly; the
//! main crate turns [`RawTensor`]s into `tch::Tensor`s.

pub mod atomic;
pub mod embeddings;
pub mod error;
pub mod pickle;
pub mod regular;
pub mod safetensors_io;
pub mod tensor;
pub mod torch_file;

pub use error::{Error, Result};
pub use tensor::{DType, RawTensor};
