//! Stable Diffusion's parts on libtorch, loaded from a diffusers model folder. One file per
//! diffusers/transformers module; tensor names equal the checkpoint keys.
pub mod nn;
pub mod tokenizer;
pub mod weights;
