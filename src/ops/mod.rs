//! The kernel set: for each `shaders/<name>.wgsl`, its host side and its CPU reference live in
//! `ops/<name>.rs` under the same names (`RmsNorm::forward` dispatches `rms_norm`,
//! `rms_norm_ref` is the oracle), with the constants the shader is compiled with and its
//! [`Shader`](crate::shaders::Shader). References are plain loops with f64 accumulators.
//!
//! Ops read and write [`View`]s: rows of f32 activations inside a buffer, checked against the
//! buffer and the op's expected shape in one place ([`View::expect`]).

pub mod activation;
pub mod add;
pub mod argmax;
pub mod attention;
pub mod gather;
pub mod linear;
pub mod norm;
pub mod patch_embed;
pub mod rope;
pub mod softmax;

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// How a weight matrix is stored on the GPU (the `W_DTYPE` override in weight_format.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    Bf16,
}

impl WeightFormat {
    /// The shaders' `W_DTYPE` override constant for this format (weight_format.wgsl).
    pub(crate) fn overrides(self) -> &'static [(&'static str, u32)] {
        match self {
            WeightFormat::F32 => &[("W_DTYPE", 0)],
            WeightFormat::F16 => &[("W_DTYPE", 1)],
            WeightFormat::Bf16 => &[("W_DTYPE", 2)],
        }
    }

    pub fn bytes_per_element(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::F16 | WeightFormat::Bf16 => 2,
        }
    }

    /// Whether rows of `k` weights start on 16-byte boundaries, as the vectorised GEMVs load
    /// them (k a multiple of 8 in 16 bits, of 4 in f32).
    pub fn rows_vec4_aligned(self, k: usize) -> bool {
        k.is_multiple_of(16 / self.bytes_per_element())
    }

    /// Encodes f32 values in this format (round to nearest even for 16-bit formats).
    pub fn encode(self, data: &[f32]) -> Vec<u8> {
        match self {
            WeightFormat::F32 => bytemuck::cast_slice(data).to_vec(),
            WeightFormat::F16 => data
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            WeightFormat::Bf16 => data
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }

    /// Widens bytes stored in this format to f32 (exact for f16 and bf16).
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            WeightFormat::F32 => bytemuck::pod_collect_to_vec(bytes),
            WeightFormat::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            WeightFormat::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }

    /// What the GPU will read back for `data` after encoding: the values a reference must use.
    pub fn round_trip(self, data: &[f32]) -> Vec<f32> {
        self.decode(&self.encode(data))
    }
}

/// A weight matrix [rows, cols] (row-major, PyTorch's `[out_features, in_features]`) on the GPU.
#[derive(Clone, Debug)]
pub struct Weight {
    pub buffer: wgpu::Buffer,
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
}

impl Weight {
    /// Uploads raw bytes already in `format`.
    pub fn from_bytes(
        gpu: &Gpu,
        label: &str,
        bytes: &[u8],
        format: WeightFormat,
        rows: usize,
        cols: usize,
    ) -> Result<Weight> {
        if bytes.len() as u64 > gpu.max_binding_bytes() {
            return Err(Error::Tensor {
                name: label.to_string(),
                message: format!(
                    "{} bytes are over this device's largest storage binding ({} bytes); try 16-bit weights",
                    bytes.len(),
                    gpu.max_binding_bytes()
                ),
            });
        }
        if bytes.len() != rows * cols * format.bytes_per_element() {
            return Err(Error::Tensor {
                name: label.to_string(),
                message: format!(
                    "{} bytes do not hold [{rows}, {cols}] in {format:?}",
                    bytes.len()
                ),
            });
        }
        Ok(Weight {
            buffer: gpu.storage_init(label, bytes)?,
            format,
            rows,
            cols,
        })
    }

    /// Encodes f32 values in `format` and uploads them.
    pub fn from_f32(
        gpu: &Gpu,
        label: &str,
        data: &[f32],
        format: WeightFormat,
        rows: usize,
        cols: usize,
    ) -> Result<Weight> {
        Self::from_bytes(gpu, label, &format.encode(data), format, rows, cols)
    }
}

/// A [rows, cols] table split into row chunks that each fit one storage binding: PaliGemma's
/// 257216 x 2048 embedding is over 1 GiB in 16 bits, more than many devices can bind at once
/// (128 MiB on lavapipe). Used both for the token embedding and, tied, for the logits.
#[derive(Clone, Debug)]
pub struct ChunkedTable {
    /// (first row, chunk) in row order.
    pub chunks: Vec<(usize, Weight)>,
    pub rows: usize,
    pub cols: usize,
}

impl ChunkedTable {
    /// The most rows one chunk may hold on `gpu`.
    pub fn max_chunk_rows(gpu: &Gpu, cols: usize, format: WeightFormat) -> usize {
        let row_bytes = (cols * format.bytes_per_element()) as u64;
        // Keep 16 bytes of slack: buffers are padded to whole 16-byte vectors.
        ((gpu.max_binding_bytes() - 16) / row_bytes).max(1) as usize
    }

    /// Uploads `bytes` (a [rows, cols] table in `format`) in chunks of at most `chunk_rows`.
    pub fn from_bytes(
        gpu: &Gpu,
        label: &str,
        bytes: &[u8],
        format: WeightFormat,
        rows: usize,
        cols: usize,
        chunk_rows: usize,
    ) -> Result<ChunkedTable> {
        let row_bytes = cols * format.bytes_per_element();
        if bytes.len() != rows * row_bytes {
            return Err(Error::Tensor {
                name: label.to_string(),
                message: format!(
                    "{} bytes do not hold [{rows}, {cols}] in {format:?}",
                    bytes.len()
                ),
            });
        }
        let chunk_rows = chunk_rows.max(1);
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < rows {
            let n = chunk_rows.min(rows - start);
            let part = &bytes[start * row_bytes..(start + n) * row_bytes];
            let w = Weight::from_bytes(
                gpu,
                &format!("{label}[{start}..{}]", start + n),
                part,
                format,
                n,
                cols,
            )?;
            chunks.push((start, w));
            start += n;
        }
        Ok(ChunkedTable { chunks, rows, cols })
    }
}

/// `rows` rows of `width` f32 values inside a buffer, row r starting at element
/// `offset + r * stride`: an operand of an op. Lets kernels read or write a slice of a larger
/// buffer (a KV-cache row, the last prompt row, one vocabulary chunk of the logits) without
/// copies, and carries the shape every op checks.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub rows: usize,
    pub width: usize,
    pub offset: usize,
    pub stride: usize,
}

impl<'a> View<'a> {
    /// `[rows, width]` packed from the start of `buffer`.
    pub fn new(buffer: &'a wgpu::Buffer, rows: usize, width: usize) -> View<'a> {
        View {
            buffer,
            rows,
            width,
            offset: 0,
            stride: width,
        }
    }

    /// `n` rows from row `first`.
    pub fn rows(self, first: usize, n: usize) -> View<'a> {
        View {
            offset: self.offset + first * self.stride,
            rows: n,
            ..self
        }
    }

    /// Row `r` alone.
    pub fn row(self, r: usize) -> View<'a> {
        self.rows(r, 1)
    }

    /// Columns `first..first + width` of every row.
    pub fn cols(self, first: usize, width: usize) -> View<'a> {
        View {
            offset: self.offset + first,
            width,
            ..self
        }
    }

    /// f32 elements the view covers, gaps between rows included.
    pub fn span(&self) -> usize {
        match self.rows {
            0 => 0,
            r => self.offset + (r - 1) * self.stride + self.width,
        }
    }

    /// Whether the rows are back to back from the buffer's start (what elementwise kernels,
    /// norms and the softmax take).
    pub fn is_packed(&self) -> bool {
        self.offset == 0 && (self.stride == self.width || self.rows <= 1)
    }

    /// Checks that the view is `[rows, width]`, lies inside its buffer and is indexable by the
    /// shaders' u32; `what` names the operand in the error.
    pub fn expect(&self, what: &str, rows: usize, width: usize) -> Result<()> {
        if (self.rows, self.width) != (rows, width) {
            return Err(Error::invalid(format!(
                "{what} is [{}, {}], expected [{rows}, {width}]",
                self.rows, self.width
            )));
        }
        if self.width > self.stride && self.rows > 1 {
            return Err(Error::invalid(format!(
                "{what}: rows of {} overlap at stride {}",
                self.width, self.stride
            )));
        }
        let bytes = self.span() as u64 * 4;
        if bytes > self.buffer.size() {
            return Err(Error::invalid(format!(
                "{what} needs {bytes} bytes, its buffer has {}",
                self.buffer.size()
            )));
        }
        u32_of(what, self.span())?;
        Ok(())
    }

    /// [`expect`](Self::expect), and packed.
    pub fn expect_packed(&self, what: &str, rows: usize, width: usize) -> Result<()> {
        self.expect(what, rows, width)?;
        if !self.is_packed() {
            return Err(Error::invalid(format!(
                "{what} must be packed rows: {self:?}"
            )));
        }
        Ok(())
    }
}

/// Checks that a size fits the u32 the shaders index with.
pub(crate) fn u32_of(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(format!("{what} = {v} does not fit in u32")))
}

/// Workgroups for one invocation per element of `n`, in workgroups of `wg`.
pub(crate) fn grid_for(gpu: &Gpu, n: usize, wg: u32) -> [u32; 3] {
    gpu.grid(n.div_ceil(wg as usize) as u32)
}
