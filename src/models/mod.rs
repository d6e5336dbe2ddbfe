//! Stable Diffusion's parts on libtorch, loaded from a diffusers model folder. One file per
//! diffusers/transformers module; tensor names equal the checkpoint keys.
pub mod attention;
pub mod clip;
pub mod config;
pub mod embeddings;
pub mod nn;
pub mod repo;
pub mod resnet;
pub mod stable_diffusion;
pub mod tokenizer;
pub mod unet;
pub mod unet_blocks;
pub mod vae;
pub mod weights;
