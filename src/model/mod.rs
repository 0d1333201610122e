//! PaliGemma's parts as typed structs of GPU buffers, each with `load` (shapes checked against
//! the config) and a forward pass that reads like `docs/paligemma.md`.

pub mod checkpoint;
pub mod config;
pub mod gemma;
pub mod siglip;

use crate::error::Result;
use crate::gpu::Gpu;
use crate::ops::{ChunkedTable, Weight, WeightFormat};
use checkpoint::Checkpoint;

/// How weights are kept on the GPU. Activations and reductions are f32 either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Every weight widened to f32: for verification against the reference.
    F32,
    /// Matrices in 16 bits: bf16 checkpoints as they are, others as f16. Norms, biases and
    /// embeddings of positions stay f32 (they are small).
    F16,
}

impl Precision {
    /// The GPU format of a matrix stored as `stored` in the checkpoint.
    pub fn format_for(self, stored: WeightFormat) -> WeightFormat {
        match (self, stored) {
            (Precision::F32, _) => WeightFormat::F32,
            (Precision::F16, WeightFormat::Bf16) => WeightFormat::Bf16,
            (Precision::F16, _) => WeightFormat::F16,
        }
    }
}

/// Uploads checkpoint tensors in the layout the kernels want.
pub struct Loader<'a> {
    pub gpu: &'a Gpu,
    pub ckpt: &'a Checkpoint,
    pub precision: Precision,
}

impl Loader<'_> {
    /// A small tensor (norm, bias, embedding of positions), always f32.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<wgpu::Buffer> {
        let t = self.ckpt.get(name, shape)?;
        self.gpu.upload_f32(name, &t.to_f32()?)
    }

    /// A matrix [rows, cols] in the precision's format.
    pub fn weight(&self, name: &str, rows: usize, cols: usize) -> Result<Weight> {
        let t = self.ckpt.get(name, &[rows, cols])?;
        let format = self.precision.format_for(t.format()?);
        Weight::from_bytes(self.gpu, name, &t.to_format(format)?, format, rows, cols)
    }

    /// A large [rows, cols] table split into chunks that fit one binding.
    pub fn table(&self, name: &str, rows: usize, cols: usize) -> Result<ChunkedTable> {
        let t = self.ckpt.get(name, &[rows, cols])?;
        let format = self.precision.format_for(t.format()?);
        let chunk_rows = ChunkedTable::max_chunk_rows(self.gpu, cols, format);
        ChunkedTable::from_bytes(
            self.gpu,
            name,
            &t.to_format(format)?,
            format,
            rows,
            cols,
            chunk_rows,
        )
    }
}
