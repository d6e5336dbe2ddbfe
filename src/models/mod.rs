//! Stable Diffusion's parts (SD 1.x, 2.x and SDXL) on libtorch. One file per
//! diffusers/transformers module; tensor names equal the checkpoint keys.
//!
//! Loading runs one way: [`files`] finds a model's files (a folder, or the Hub), [`weights`]
//! and [`single_file`] read tensors, [`repo`] puts those together into the one model value
//! (where the files are, how they are laid out, any prediction-type override), and
//! [`stable_diffusion`] builds the modules from it. SDXL's second encoder is the CLIP text
//! model with its `text_projection` (`clip.rs`); its added conditioning is in
//! `timestep_embedding.rs`, read by `unet.rs` when `addition_embed_type` is `text_time`. The
//! whole `CLIPModel` (both towers, for scoring images) is `clip_model.rs`.
pub mod attention;
pub mod clip;
pub mod clip_image_processor;
pub mod clip_model;
pub mod clip_vision;
pub mod component;
pub mod config;
pub mod diffusers_folder;
pub mod files;
pub mod hub;
pub mod nn;
pub mod prediction;
pub mod repo;
pub mod resnet;
pub mod single_file;
pub mod stable_diffusion;
pub mod timestep_embedding;
pub mod tokenizer;
pub mod unet;
pub mod unet_blocks;
pub mod vae;
pub mod weights;
