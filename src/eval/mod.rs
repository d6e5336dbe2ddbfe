//! Scoring images with CLIP: how close generated images are to the training images
//! (`image_similarity`) and to a prompt (`text_similarity`), as the Textual Inversion paper
//! measures its results. [`ClipScorer`] holds a transformers `CLIPModel` with its processor and
//! tokenizer; [`folder`] reads an image folder as the training dataset does (regular files,
//! non-images skipped with one warning); [`run_eval`] scores every saved step of a training run
//! and picks the best ([`best`]). docs/evaluating.md says what the numbers mean.
pub mod best;
pub mod folder;
pub mod inline;
pub mod plot;
pub mod prompts;
pub mod report;
pub mod run_eval;
pub mod run_folder;
pub mod scorer;
pub mod step_eval;

pub use scorer::{ClipScorer, Scores};
