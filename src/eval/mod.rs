//! Scoring images with CLIP: how close generated images are to the training images
//! (`image_similarity`) and to a prompt (`text_similarity`), as the Textual Inversion paper
//! measures its results. [`ClipScorer`] holds a transformers `CLIPModel` with its processor and
//! tokenizer; [`folder`] reads an image folder as the training dataset does (regular files,
//! non-images skipped with one warning). docs/evaluating.md says what the numbers mean.
pub mod folder;
pub mod scorer;

pub use scorer::{ClipScorer, Scores};
