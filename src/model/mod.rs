//! PaliGemma's parts as typed structs of GPU buffers, each with `load` (shapes checked against
//! the config) and a forward pass that reads like the math it computes (transformers' modules).

pub(crate) mod checkpoint;
pub mod config;
pub(crate) mod decoder;
pub mod footprint;
pub(crate) mod gemma;
mod hub_config;
pub mod load;
pub(crate) mod pass;
mod presets;
pub(crate) mod projector;
pub mod quantize;
pub mod reference;
mod shard_bytes;
pub(crate) mod siglip;
pub mod state;

use crate::error::Result;
use crate::gpu::Gpu;
use crate::ops::linear::Linear;
use crate::ops::norm::{LayerNorm, RmsNorm};
use crate::ops::{ChunkedTable, HostWeight, Weight, WeightFormat};
use checkpoint::Checkpoint;

/// How a model's weights are kept on the GPU: the user's one choice for the whole model
/// (`--precision`). Each matrix then gets a [`WeightFormat`], the storage its kernels read,
/// from the precision, where it is in the model and how the checkpoint stores it
/// ([`format_for`](Self::format_for)). Activations and reductions are f32 either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Every weight widened to f32: for verification against the reference.
    F32,
    /// Matrices in 16 bits: bf16 checkpoints as they are, others as f16. Norms, biases and
    /// embeddings of positions stay f32 (they are small).
    F16,
    /// The decoder's matrices and its embedding table in 8-bit blocks ([`WeightFormat::Q8`]);
    /// the rest as [`F16`](Self::F16).
    Q8,
    /// As [`Q8`](Self::Q8) with 4-bit blocks ([`WeightFormat::Q4`]).
    Q4,
}

impl std::str::FromStr for Precision {
    type Err = crate::Error;

    /// `f32`, `f16`, `q8` or `q4` (any case), as the command line's `--precision` takes them.
    fn from_str(s: &str) -> crate::Result<Precision> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            "q8" => Ok(Precision::Q8),
            "q4" => Ok(Precision::Q4),
            _ => Err(crate::Error::invalid(format!(
                "precision {s:?}: expected f32, f16, q8 or q4"
            ))),
        }
    }
}

impl Precision {
    /// The GPU format of a `[rows, cols]` matrix stored as `stored` in the checkpoint.
    /// Quantized precisions apply to the decoder (`quantizable`: every weight a decode step
    /// reads) where rows are whole 32-weight blocks; the vision tower and the projector stay
    /// 16-bit: they run on hundreds of rows at once, where compute, not weight bytes, bounds
    /// the time, and SigLIP's 4304-wide MLP input is not a whole number of blocks.
    pub fn format_for(self, stored: WeightFormat, cols: usize, quantizable: bool) -> WeightFormat {
        let quantized = match self {
            Precision::Q8 => Some(WeightFormat::Q8),
            Precision::Q4 => Some(WeightFormat::Q4),
            _ => None,
        };
        match (self, quantized, stored) {
            (_, Some(q), _) if quantizable && q.holds(cols) => q,
            (Precision::F32, _, _) => WeightFormat::F32,
            (_, _, WeightFormat::Bf16) => WeightFormat::Bf16,
            _ => WeightFormat::F16,
        }
    }

    /// The precision a pre-quantized checkpoint was written in.
    pub(crate) fn of_quantized(format: WeightFormat) -> Precision {
        match format {
            WeightFormat::Q8 => Precision::Q8,
            _ => Precision::Q4,
        }
    }
}

/// Whether the loader stores matrix `name` at a quantized precision: the decoder's (its
/// projections and embedding table), not the vision tower's or the projector's.
pub(crate) fn quantizable(name: &str) -> bool {
    name.starts_with("text.")
}

/// Where weights come from.
pub(crate) enum WeightSource<'a> {
    /// A checkpoint folder.
    Checkpoint(&'a Checkpoint),
    /// Uniform random values in [-0.03, 0.03), stored as `format`, seeded per tensor name: a
    /// model at the published shapes with no download, for benchmarks.
    Random { seed: u64, format: WeightFormat },
}

/// Uploads tensors in the layout the kernels want. Its methods are async because a web page's
/// checkpoint is read tensor by tensor as they are uploaded; every other source's reads are
/// ready at once, and native loading drives them with `pollster::block_on`.
pub(crate) struct Loader<'a> {
    pub gpu: &'a Gpu,
    pub source: WeightSource<'a>,
    pub precision: Precision,
    /// Told (bytes read, bytes in all) after each tensor.
    pub progress: Option<&'a load::LoadProgress>,
}

impl<'a> Loader<'a> {
    pub fn new(
        gpu: &'a Gpu,
        source: WeightSource<'a>,
        precision: Precision,
        progress: Option<&'a load::LoadProgress>,
    ) -> Loader<'a> {
        Loader {
            gpu,
            source,
            precision,
            progress,
        }
    }
}

impl Loader<'_> {
    /// Reports the loading progress after a tensor.
    fn loaded<T>(&self, t: T) -> T {
        if let (Some(p), WeightSource::Checkpoint(c)) = (self.progress, &self.source) {
            let (done, total) = c.progress();
            (p.0)(done, total);
        }
        t
    }

    /// Whether the source holds tensor `name` (random sources hold every tensor asked for).
    pub fn has(&self, name: &str) -> bool {
        match &self.source {
            WeightSource::Checkpoint(c) => c.contains(name),
            WeightSource::Random { .. } => false,
        }
    }

    /// A small tensor (norm, bias, embedding of positions), always f32.
    pub async fn f32(&self, name: &str, shape: &[usize]) -> Result<wgpu::Buffer> {
        let b = self
            .gpu
            .upload_f32(name, &self.values(name, shape).await?)?;
        Ok(self.loaded(b))
    }

    /// The values of tensor `name`, widened to f32.
    pub async fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match &self.source {
            WeightSource::Checkpoint(c) => c.read(name, shape).await?.to_f32(),
            WeightSource::Random { seed, .. } => {
                Ok(random_values(*seed, name, shape.iter().product()))
            }
        }
    }

    /// How the source stores tensor `name` of `shape`.
    fn stored_format(&self, name: &str, shape: &[usize]) -> Result<WeightFormat> {
        match &self.source {
            WeightSource::Checkpoint(c) => c.stored_format(name, shape),
            WeightSource::Random { format, .. } => Ok(*format),
        }
    }

    /// Matrix `name` [rows, cols] in the format the precision gives it, or as the checkpoint
    /// holds it when `paligemma quantize` wrote it quantized.
    async fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<HostWeight<'_>> {
        let quantizable = quantizable(name);
        match &self.source {
            WeightSource::Checkpoint(c) => {
                if let Some(q) = c.quantized(name, rows, cols).await? {
                    return Ok(q);
                }
                let t = c.read(name, &[rows, cols]).await?;
                let format = self.precision.format_for(t.format()?, cols, quantizable);
                t.into_host(format, rows, cols)
            }
            WeightSource::Random { seed, format } => {
                let format = self.precision.format_for(*format, cols, quantizable);
                let values = random_values(*seed, name, rows * cols);
                Ok(HostWeight::encode(&values, format, rows, cols))
            }
        }
    }

    /// A matrix [rows, cols] in the precision's format.
    pub async fn weight(&self, name: &str, rows: usize, cols: usize) -> Result<Weight> {
        let w = Weight::upload(self.gpu, name, &self.matrix(name, rows, cols).await?)?;
        Ok(self.loaded(w))
    }

    /// The linear layer `{name}.weight` `[rows, cols]` with `{name}.bias` `[rows]` when `bias`.
    pub async fn linear(&self, name: &str, rows: usize, cols: usize, bias: bool) -> Result<Linear> {
        Ok(Linear {
            weight: self.weight(&format!("{name}.weight"), rows, cols).await?,
            bias: if bias {
                Some(self.f32(&format!("{name}.bias"), &[rows]).await?)
            } else {
                None
            },
        })
    }

    /// The LayerNorm `{name}.weight`, `{name}.bias` `[n]`.
    pub async fn layer_norm(&self, name: &str, n: usize, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.f32(&format!("{name}.weight"), &[n]).await?,
            bias: self.f32(&format!("{name}.bias"), &[n]).await?,
            n,
            eps,
        })
    }

    /// The RMSNorm `{name}.weight` `[n]`.
    pub async fn rms_norm(&self, name: &str, n: usize, eps: f32) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: self.f32(&format!("{name}.weight"), &[n]).await?,
            n,
            eps,
        })
    }

    /// A large [rows, cols] table split into chunks that fit one binding.
    pub async fn table(&self, name: &str, rows: usize, cols: usize) -> Result<ChunkedTable> {
        let host = self.matrix(name, rows, cols).await?;
        let chunk_rows = ChunkedTable::max_chunk_rows(self.gpu, cols, host.format);
        let t = ChunkedTable::upload(self.gpu, name, &host, chunk_rows)?;
        Ok(self.loaded(t))
    }
}

/// `[rows, cols]` transposed to `[cols, rows]`.
pub(crate) fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            y[c * rows + r] = x[r * cols + c];
        }
    }
    y
}

/// `n` values uniform in [-0.03, 0.03), from generators seeded by `seed`, `name` and the index
/// of each chunk of 2^20 values, filled on every core: the 28B shapes hold 28 billion of them,
/// minutes on one core.
fn random_values(seed: u64, name: &str, n: usize) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    const CHUNK: usize = 1 << 20;
    let h = name.bytes().fold(seed ^ 0x9E37_79B9_7F4A_7C15, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    });
    let mut values = vec![0f32; n];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per_thread = n.div_ceil(CHUNK).div_ceil(threads).max(1) * CHUNK;
    std::thread::scope(|s| {
        for (t, part) in values.chunks_mut(per_thread).enumerate() {
            s.spawn(move || {
                for (c, chunk) in part.chunks_mut(CHUNK).enumerate() {
                    let index = (t * per_thread / CHUNK + c) as u64;
                    let seed = h ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
                    chunk.fill_with(|| rng.random_range(-0.03f32..0.03));
                }
            });
        }
    });
    values
}
