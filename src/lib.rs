//! Textual Inversion for Stable Diffusion on libtorch.
