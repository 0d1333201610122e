//! What loading takes: its options, its progress callback, a model's files as bytes, and the
//! checks that a config, a tokenizer and a checkpoint belong together.

use std::path::Path;

use super::Precision;
use super::checkpoint::{Checkpoint, ShardBytes};
use super::config::PaliGemmaConfig;
use crate::error::{Error, Result};
use crate::gpu::GpuOptions;
use crate::tokenizer::PromptTokenizer;

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `None`: 16-bit weights (half the memory and bandwidth of f32; the shaders widen them from
    /// u32 words, so no device feature is needed), or the precision a checkpoint written by
    /// `paligemma quantize` was quantized in.
    pub precision: Option<Precision>,
    /// Which adapter to use when the library creates the device.
    pub gpu: GpuOptions,
    /// Told how far loading has come, after each tensor.
    pub progress: Option<LoadProgress>,
}

impl LoadOptions {
    /// The defaults with weights in `precision` (`None`: as [`precision`](Self::precision)
    /// says).
    pub fn in_precision(precision: Option<Precision>) -> LoadOptions {
        LoadOptions {
            precision,
            ..Default::default()
        }
    }
}

/// A loading-progress callback: (bytes of the checkpoint read, bytes in all).
#[derive(Clone)]
pub struct LoadProgress(pub std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>);

impl std::fmt::Debug for LoadProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoadProgress")
    }
}

/// A model's files as bytes, for [`PaliGemma::load_files`](crate::PaliGemma::load_files).
pub struct ModelFiles {
    /// `config.json`'s text.
    pub config: String,
    /// `tokenizer.json`'s bytes.
    pub tokenizer: Vec<u8>,
    /// The safetensors files, each with a name for errors (its file name or URL).
    pub shards: Vec<(std::path::PathBuf, ShardBytes)>,
}

/// A model's files opened and checked against each other, ready to upload.
pub(crate) struct Opened {
    pub config: PaliGemmaConfig,
    pub tokenizer: PromptTokenizer,
    pub checkpoint: Checkpoint,
    /// The precision to load in: the one asked for, or the checkpoint's own if quantized.
    pub precision: Option<Precision>,
}

impl Opened {
    /// `dir`'s config.json, tokenizer.json and safetensors.
    pub fn folder(dir: &Path, precision: Option<Precision>) -> Result<Opened> {
        let config = PaliGemmaConfig::from_file(&dir.join("config.json"))?;
        let tokenizer = PromptTokenizer::from_file(&dir.join("tokenizer.json"))?;
        let checkpoint = Checkpoint::open(dir)?;
        Opened::check(config, tokenizer, checkpoint, dir, precision)
    }

    /// The same files as bytes (a web page's); `origin` names them in errors.
    pub fn files(files: ModelFiles, origin: &Path, precision: Option<Precision>) -> Result<Opened> {
        let name = origin.join("config.json").display().to_string();
        let config = PaliGemmaConfig::from_json(&files.config, &name)?;
        let tokenizer =
            PromptTokenizer::from_bytes(&files.tokenizer, &origin.join("tokenizer.json"))?;
        let checkpoint = Checkpoint::from_shards(origin, files.shards)?;
        Opened::check(config, tokenizer, checkpoint, origin, precision)
    }

    /// The tokenizer's `<image>` must be the config's, and a quantized checkpoint loads only
    /// in its own precision (another cannot be made without the original weights).
    fn check(
        config: PaliGemmaConfig,
        tokenizer: PromptTokenizer,
        checkpoint: Checkpoint,
        dir: &Path,
        precision: Option<Precision>,
    ) -> Result<Opened> {
        let tokenizer = match &config.image_tokens {
            Some(_) => tokenizer.with_image_token(crate::tokenizer::SOFT_IMAGE_TOKEN)?,
            None => tokenizer,
        };
        if tokenizer.image_token_id() != config.image_token_index {
            return Err(Error::invalid(format!(
                "{}: the tokenizer's <image> is id {}, config.json's image_token_index is {}",
                dir.display(),
                tokenizer.image_token_id(),
                config.image_token_index
            )));
        }
        let quantized = checkpoint.quantized_format().map(Precision::of_quantized);
        let precision = match (quantized, precision) {
            (Some(q), Some(p)) if p != q => {
                return Err(Error::invalid(format!(
                    "{}: the checkpoint is quantized as {q:?}; it cannot be loaded as {p:?} \
                     (load the original checkpoint instead)",
                    dir.display()
                )));
            }
            (Some(q), _) => Some(q),
            (None, p) => p,
        };
        Ok(Opened {
            config,
            tokenizer,
            checkpoint,
            precision,
        })
    }
}
