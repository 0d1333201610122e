//! One error type for the whole library. Every variant names the file, tensor, option or GPU
//! operation at fault, so a user reading a one-line `error: ...` knows what to fix.

use std::path::PathBuf;

/// Everything that can go wrong, from a missing file to a lost GPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter matched, or none exists (e.g. no Vulkan driver installed).
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// `request_device` refused (limits or features the adapter cannot give).
    #[error("could not create the GPU device: {0}")]
    Device(String),
    /// A wgpu validation or out-of-memory error caught in an error scope, with the operation.
    #[error("GPU error during {op}: {message}")]
    Gpu { op: String, message: String },
    /// The device was lost (driver reset, GPU removed, or `destroy`).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `config.json` (or another JSON file) is malformed or inconsistent.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// A safetensors file is malformed.
    #[error("{path}: {message}")]
    Safetensors { path: PathBuf, message: String },
    /// A tensor is missing, or its shape or dtype does not match the config.
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
    /// The tokenizer could not be loaded or used.
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// The image could not be decoded.
    #[error("{path}: {source}")]
    Image {
        path: PathBuf,
        source: image::ImageError,
    },
    /// A hub model id could not be found in the cache or downloaded (feature `hub`).
    #[error("{id}: {message}")]
    Hub { id: String, message: String },
    /// A request the model cannot serve (too long, bad option, bad token id).
    #[error("{0}")]
    Invalid(String),
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}
