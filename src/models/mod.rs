//! Stable Diffusion's parts on libtorch, loaded from a diffusers model folder. One file per
//! diffusers/transformers module; tensor names equal the checkpoint keys.
//!
//! Where a second model family slots in (SDXL): its second text encoder is a CLIP text model
//! with a `text_projection` (transformers' `CLIPTextModelWithProjection`) — `clip.rs`, beside
//! `ClipTextModel`; its added conditioning (`add_time_proj`, `add_embedding`) is a sinusoidal
//! projection and an MLP, as the timestep's — `timestep_embedding.rs`, read by `unet.rs` when
//! `addition_embed_type` is `text_time`; its components (`tokenizer_2`, `text_encoder_2`) load
//! in `stable_diffusion.rs` next to the others.
pub mod attention;
pub mod clip;
pub mod config;
pub mod nn;
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
