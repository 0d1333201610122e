//! PaliGemma on any GPU through wgpu: a SigLIP vision encoder, a linear projector and a Gemma
//! decoder, every layer a WGSL compute shader, the KV cache resident on the GPU.
//!
//! Layers of the crate, bottom up:
//! - [`gpu`]: the device, pipelines and a recorder that batches dispatches;
//! - [`ops`]: one module per kernel family in `shaders/`, each with its CPU reference;

pub mod error;
pub mod gpu;
pub mod ops;
pub mod shaders;

pub use error::{Error, Result};
pub use gpu::{Gpu, GpuOptions};
