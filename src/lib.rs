//! PaliGemma on any GPU through wgpu: a SigLIP vision encoder, a linear projector and a Gemma
//! (or Gemma 2) decoder, every layer a WGSL compute shader, the KV cache resident on the GPU.
//!
//! ```no_run
//! use paligemma::{GenerateOptions, LoadOptions, PaliGemma};
//! let model = PaliGemma::load("paligemma-3b-pt-224".as_ref(), &LoadOptions::default())?;
//! let image = paligemma::preprocess::load_image("cat.jpg".as_ref())?;
//! let out = model.generate(&image, "caption en", &GenerateOptions::default(), |_, piece| {
//!     print!("{piece}");
//!     true
//! })?;
//! println!("\n{} tokens", out.generated_ids.len());
//! # Ok::<(), paligemma::Error>(())
//! ```
//!
//! Layers of the crate, bottom up:
//! - [`gpu`]: the device (the library's or the caller's), pipelines, a recorder of dispatches;
//! - [`ops`]: one module per kernel family in `shaders/`, each with its CPU reference;
//! - [`model`]: config, checkpoint loading, the SigLIP tower and the Gemma decoder;
//! - [`preprocess`], [`tokenizer`], [`sampling`]: what surrounds the network;
//! - [`PaliGemma`]: load, generate, or drive prefill and steps yourself.

pub mod error;
pub mod gpu;
pub mod model;
pub mod ops;
mod paligemma;
pub mod preprocess;
pub mod sampling;
pub mod shaders;
pub mod tokenizer;

pub use error::{Error, Result};
pub use gpu::{Gpu, GpuOptions};
pub use model::Precision;
pub use paligemma::{GenerateOptions, Generation, ImageFeatures, LoadOptions, PaliGemma, Timings};
