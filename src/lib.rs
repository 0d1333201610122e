//! PaliGemma on any GPU through wgpu: a SigLIP vision encoder, a linear projector and a Gemma
//! (or Gemma 2) decoder, every layer a WGSL compute shader, the KV cache resident on the GPU.
//!
//! ```no_run
//! use paligemma::{GenerateOptions, LoadOptions, PaliGemma};
//! let model = PaliGemma::load("paligemma-3b-pt-224".as_ref(), &LoadOptions::default())?;
//! let image = paligemma::preprocess::load_image("cat.jpg".as_ref())?;
//! let opts = GenerateOptions::default();
//! let out = model.block_on(model.generate(&image, "caption en", &opts, |_, piece| {
//!     print!("{piece}");
//!     true
//! }))?;
//! println!("\n{} tokens", out.generated_ids.len());
//! # Ok::<(), paligemma::Error>(())
//! ```
//!
//! The public API is what a user needs: [`PaliGemma`] (load, [`generate`](PaliGemma::generate),
//! or [`encode`](PaliGemma::encode), [`new_state`](PaliGemma::new_state),
//! [`prefill`](PaliGemma::prefill), [`step`](PaliGemma::step) to drive decoding yourself; every
//! operation that waits is awaitable, [`block_on`](PaliGemma::block_on) its blocking form),
//! [`Scheduler`] (many generations in flight: continuous batching),
//! [`Gpu`] (the library's device or the caller's), [`preprocess`], [`tokenizer`],
//! [`detection`], [`sampling`], [`config`], and [`Reference`], the whole model on the CPU
//! for verification. `docs/ARCHITECTURE.md` follows an image and a prompt through the crate.

mod error;
mod generation;
mod gpu;
mod model;
mod ops;
mod paligemma;
mod scheduler;
mod shaders;

pub mod chat;
pub mod detection;
#[cfg(feature = "draw")]
pub mod draw;
#[cfg(feature = "hub")]
pub mod hub;
pub mod logprobs;
pub mod preprocess;
pub mod sampling;
pub mod segmentation;
mod sequence;
#[cfg(feature = "serve")]
pub mod serve;
#[doc(hidden)]
pub mod testing;
pub mod tokenizer;
#[cfg(all(target_arch = "wasm32", feature = "web"))]
pub mod web;

pub use error::{Error, Result};
pub use generation::{
    FinishReason, GenerateOptions, Generation, ImageInput, Prompt, Timings, Token,
};
pub use gpu::{Gpu, GpuOptions};
pub use model::Precision;
pub use model::checkpoint::ShardBytes;
pub use model::config;
pub use model::decoder::StepInput;
pub use model::load::{LoadOptions, LoadProgress, ModelFiles};
pub use model::quantize::{QuantizeReport, quantize_checkpoint};
pub use model::reference::Reference;
pub use model::state::{DecodeScratch, DecoderState};
pub use ops::WeightFormat;
pub use paligemma::{ImageFeatures, PaliGemma};
pub use scheduler::{Event, Request, RequestId, Scheduler, SchedulerOptions};
pub use sequence::Sequence;
