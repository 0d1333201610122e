//! Weight matrices: their formats (f32, f16, bf16, and 8- and 4-bit blocks), their bytes on the
//! host ([`HostWeight`]) and on the GPU ([`Weight`], [`ChunkedTable`]).
//!
//! The quantized formats split each row into blocks of [`BLOCK`] weights along the input
//! dimension, with one (scale, min) pair of f16 per block, packed in one u32:
//! - `Q8`: w = code * scale, codes int8 in -127..=127 (symmetric; min is 0);
//! - `Q4`: w = code * scale + min, codes 0..=15 (asymmetric: 4 bits lose too much with a
//!   symmetric grid on skewed blocks).
//!
//! Codes are packed little-endian, row-major (q8: one byte per weight, q4: two per byte, low
//! nibble first), so a row of k weights is k or k/2 bytes: with k a multiple of 32 every row and
//! every block starts on a 16-byte boundary, and a 16-byte load holds half a q8 block or one
//! whole q4 block. weight_format.wgsl reads exactly this.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Weights per quantization block (along the input dimension).
pub const BLOCK: usize = 32;

/// How one weight matrix is stored on the GPU (the `W_DTYPE` override in weight_format.wgsl):
/// what its kernels read. A model's [`Precision`](crate::Precision) chooses it per matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    Bf16,
    /// 8-bit codes in blocks of 32 with an f16 scale.
    Q8,
    /// 4-bit codes in blocks of 32 with an f16 scale and minimum.
    Q4,
}

impl WeightFormat {
    /// The shaders' `W_DTYPE` override constant for this format (weight_format.wgsl).
    pub(crate) fn overrides(self) -> &'static [(&'static str, u32)] {
        match self {
            WeightFormat::F32 => &[("W_DTYPE", 0)],
            WeightFormat::F16 => &[("W_DTYPE", 1)],
            WeightFormat::Bf16 => &[("W_DTYPE", 2)],
            WeightFormat::Q8 => &[("W_DTYPE", 3)],
            WeightFormat::Q4 => &[("W_DTYPE", 4)],
        }
    }

    /// The format's `W_DTYPE` (weight_format.wgsl).
    pub(crate) fn dtype(self) -> u32 {
        self.overrides()[0].1
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, WeightFormat::Q8 | WeightFormat::Q4)
    }

    /// Whether a row of `cols` weights can be stored in this format (quantized rows are whole
    /// blocks).
    pub fn holds(self, cols: usize) -> bool {
        !self.is_quantized() || cols.is_multiple_of(BLOCK)
    }

    /// Bytes of one row of `cols` weights (codes only, for the quantized formats).
    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            WeightFormat::F32 => 4 * cols,
            WeightFormat::F16 | WeightFormat::Bf16 => 2 * cols,
            WeightFormat::Q8 => cols,
            WeightFormat::Q4 => cols / 2,
        }
    }

    /// Bytes of the (scale, min) pairs of one row (0 unless quantized).
    pub fn row_scale_bytes(self, cols: usize) -> usize {
        if self.is_quantized() {
            4 * cols / BLOCK
        } else {
            0
        }
    }

    /// Whether rows of `k` weights start on 16-byte boundaries, as the vectorised GEMVs load
    /// them (k a multiple of 8 in 16 bits, of 4 in f32, of a block when quantized).
    pub fn rows_vec4_aligned(self, k: usize) -> bool {
        self.holds(k) && self.row_bytes(k).is_multiple_of(16)
    }

    /// What the GPU will read back for `data` stored in this format: the values a reference
    /// must use. Quantized formats take whole blocks (`data.len()` a multiple of 32).
    pub fn round_trip(self, data: &[f32]) -> Vec<f32> {
        HostWeight::encode(data, self, 1, data.len()).decode()
    }
}

/// A `[rows, cols]` matrix's bytes on the host, laid out as its GPU buffers will be.
#[derive(Clone, Debug)]
pub struct HostWeight<'a> {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    /// The values (f32, f16, bf16), or the codes.
    pub data: Cow<'a, [u8]>,
    /// Quantized formats: a (scale, min) pair of f16 per block, one u32 each; else empty.
    pub scales: Cow<'a, [u8]>,
}

impl HostWeight<'_> {
    /// Stores f32 values in `format`: rounded to nearest even for the 16-bit formats,
    /// quantized block by block for the others.
    pub fn encode(
        values: &[f32],
        format: WeightFormat,
        rows: usize,
        cols: usize,
    ) -> HostWeight<'static> {
        let (data, scales) = match format {
            WeightFormat::F32 => (bytemuck::cast_slice(values).to_vec(), Vec::new()),
            WeightFormat::F16 => (
                le_bytes(values, |v| half::f16::from_f32(v).to_bits()),
                Vec::new(),
            ),
            WeightFormat::Bf16 => (
                le_bytes(values, |v| half::bf16::from_f32(v).to_bits()),
                Vec::new(),
            ),
            WeightFormat::Q8 | WeightFormat::Q4 => quantize(values, format),
        };
        HostWeight {
            format,
            rows,
            cols,
            data: Cow::Owned(data),
            scales: Cow::Owned(scales),
        }
    }

    /// The values the GPU reads, widened to f32 exactly as the shaders do.
    pub fn decode(&self) -> Vec<f32> {
        let d = &self.data;
        match self.format {
            WeightFormat::F32 => bytemuck::pod_collect_to_vec(d),
            WeightFormat::F16 => d
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            WeightFormat::Bf16 => d
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            WeightFormat::Q8 | WeightFormat::Q4 => {
                let n = self.rows * self.cols;
                (0..n)
                    .map(|i| {
                        let s = &self.scales[4 * (i / BLOCK)..][..4];
                        let scale = half::f16::from_le_bytes([s[0], s[1]]).to_f32();
                        let min = half::f16::from_le_bytes([s[2], s[3]]).to_f32();
                        let code = match self.format {
                            WeightFormat::Q8 => d[i] as i8 as f32,
                            _ => ((d[i / 2] >> (4 * (i % 2))) & 15) as f32,
                        };
                        code * scale + min
                    })
                    .collect()
            }
        }
    }

    /// Checks that the bytes hold `[rows, cols]` in the format; `label` names the tensor.
    pub fn check(&self, label: &str) -> Result<()> {
        let f = self.format;
        let bad = |message: String| {
            Err(Error::Tensor {
                name: label.to_string(),
                message,
            })
        };
        if !f.holds(self.cols) {
            return bad(format!(
                "{f:?} needs rows of whole {BLOCK}-weight blocks, not {}",
                self.cols
            ));
        }
        let (want, want_scales) = (
            self.rows * f.row_bytes(self.cols),
            self.rows * f.row_scale_bytes(self.cols),
        );
        if self.data.len() != want || self.scales.len() != want_scales {
            return bad(format!(
                "{} + {} bytes do not hold [{}, {}] in {f:?}",
                self.data.len(),
                self.scales.len(),
                self.rows,
                self.cols
            ));
        }
        Ok(())
    }

    /// Rows `start..start + n`, borrowed.
    fn row_range(&self, start: usize, n: usize) -> HostWeight<'_> {
        let (rb, sb) = (
            self.format.row_bytes(self.cols),
            self.format.row_scale_bytes(self.cols),
        );
        HostWeight {
            format: self.format,
            rows: n,
            cols: self.cols,
            data: Cow::Borrowed(&self.data[start * rb..(start + n) * rb]),
            scales: Cow::Borrowed(&self.scales[start * sb..(start + n) * sb]),
        }
    }
}

/// Quantizes `values` (a whole number of blocks) into codes and (scale, min) pairs. The scale
/// and min are rounded to f16 first and the codes chosen against the rounded values, so that
/// decoding reproduces the nearest grid point the stored numbers can express.
fn quantize(values: &[f32], format: WeightFormat) -> (Vec<u8>, Vec<u8>) {
    assert!(
        values.len().is_multiple_of(BLOCK),
        "{format:?} stores whole blocks of {BLOCK} weights, not {}",
        values.len()
    );
    let q4 = format == WeightFormat::Q4;
    let mut codes = vec![0u8; format.row_bytes(values.len())];
    let mut scales = Vec::with_capacity(values.len() / BLOCK * 4);
    for (b, block) in values.chunks(BLOCK).enumerate() {
        let (lo, hi) = block
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        let (scale, min) = if q4 {
            (
                half::f16::from_f32((hi - lo) / 15.0),
                half::f16::from_f32(lo),
            )
        } else {
            let amax = lo.abs().max(hi.abs());
            (half::f16::from_f32(amax / 127.0), half::f16::ZERO)
        };
        scales.extend(scale.to_le_bytes());
        scales.extend(min.to_le_bytes());
        let (s, m) = (scale.to_f32(), min.to_f32());
        for (j, &v) in block.iter().enumerate() {
            let i = b * BLOCK + j;
            let code = if s > 0.0 { ((v - m) / s).round() } else { 0.0 };
            if q4 {
                codes[i / 2] |= (code.clamp(0.0, 15.0) as u8) << (4 * (i % 2));
            } else {
                codes[i] = code.clamp(-127.0, 127.0) as i8 as u8;
            }
        }
    }
    (codes, scales)
}

/// A weight matrix `[rows, cols]` (row-major, PyTorch's `[out_features, in_features]`) on the
/// GPU. Quantized formats keep their block scales in the same buffer, after the codes, so a
/// kernel reading weights binds one storage buffer per matrix (the downlevel limit is four).
#[derive(Clone, Debug)]
pub struct Weight {
    pub buffer: wgpu::Buffer,
    /// Where the (scale, min) words start in `buffer`, in u32 words (0 when not quantized).
    pub scale_offset: u32,
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
}

impl Weight {
    /// Uploads a matrix; `label` names it in errors.
    pub fn upload(gpu: &Gpu, label: &str, host: &HostWeight) -> Result<Weight> {
        host.check(label)?;
        let bytes = host.data.len() + host.scales.len();
        if bytes as u64 > gpu.max_binding_bytes() {
            return Err(Error::Tensor {
                name: label.to_string(),
                message: format!(
                    "{bytes} bytes are over this device's largest storage binding ({} bytes); \
                     try 16-bit or quantized weights",
                    gpu.max_binding_bytes()
                ),
            });
        }
        let (buffer, scale_offset) = if host.scales.is_empty() {
            (gpu.storage_init(label, &host.data)?, 0)
        } else {
            // Codes are whole 16-byte rows (k a multiple of 32), so the scales start on a word.
            let joined = [host.data.as_ref(), host.scales.as_ref()].concat();
            let offset = crate::ops::u32_of("scale offset", host.data.len() / 4)?;
            (gpu.storage_init(label, &joined)?, offset)
        };
        Ok(Weight {
            buffer,
            scale_offset,
            format: host.format,
            rows: host.rows,
            cols: host.cols,
        })
    }

    /// Stores f32 values in `format` and uploads them.
    pub fn from_f32(
        gpu: &Gpu,
        label: &str,
        values: &[f32],
        format: WeightFormat,
        rows: usize,
        cols: usize,
    ) -> Result<Weight> {
        Self::upload(gpu, label, &HostWeight::encode(values, format, rows, cols))
    }

    /// Bytes the weight occupies on the GPU (codes and scales).
    pub fn bytes(&self) -> u64 {
        self.buffer.size()
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
        let row_bytes = (format.row_bytes(cols) + format.row_scale_bytes(cols)) as u64;
        // Keep 16 bytes of slack: buffers are padded to whole 16-byte vectors.
        ((gpu.max_binding_bytes() - 16) / row_bytes).max(1) as usize
    }

    /// Uploads `host` in chunks of at most `chunk_rows` rows.
    pub fn upload(
        gpu: &Gpu,
        label: &str,
        host: &HostWeight,
        chunk_rows: usize,
    ) -> Result<ChunkedTable> {
        host.check(label)?;
        let chunk_rows = chunk_rows.max(1);
        let mut chunks = Vec::new();
        for start in (0..host.rows).step_by(chunk_rows) {
            let n = chunk_rows.min(host.rows - start);
            let part = host.row_range(start, n);
            let name = format!("{label}[{start}..{}]", start + n);
            chunks.push((start, Weight::upload(gpu, &name, &part)?));
        }
        Ok(ChunkedTable {
            chunks,
            rows: host.rows,
            cols: host.cols,
        })
    }

    /// Bytes the table occupies on the GPU.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|(_, w)| w.bytes()).sum()
    }
}

/// `values` as 16-bit words in little-endian bytes (a plain loop the compiler vectorises: the
/// 28B shapes encode 28 billion of them).
fn le_bytes(values: &[f32], word: impl Fn(f32) -> u16) -> Vec<u8> {
    let words: Vec<u16> = values.iter().map(|&v| word(v).to_le()).collect();
    bytemuck::cast_slice(&words).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_blocks_round_trip_within_half_a_step() {
        let values: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 700.0)
            .collect();
        for format in [WeightFormat::Q8, WeightFormat::Q4] {
            let host = HostWeight::encode(&values, format, 4, 64);
            host.check("w").unwrap();
            let back = host.decode();
            for (block, (v, b)) in values.chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
                let (lo, hi) = v
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
                let step = match format {
                    WeightFormat::Q8 => lo.abs().max(hi.abs()) / 127.0,
                    _ => (hi - lo) / 15.0,
                };
                for (x, y) in v.iter().zip(b) {
                    // Half a step, plus the f16 rounding of scale and min.
                    assert!(
                        (x - y).abs() <= 0.51 * step + 1e-3 * hi.abs().max(lo.abs()),
                        "{format:?} block {block}: {x} -> {y}"
                    );
                }
            }
        }
        // A constant block (zero range) decodes exactly to its value in q4, to 0 scale in q8.
        let flat = vec![0.25f32; 32];
        assert_eq!(WeightFormat::Q4.round_trip(&flat), flat);
        assert_eq!(WeightFormat::Q8.round_trip(&[0.0; 32]), vec![0.0; 32]);
    }

    #[test]
    fn rows_that_are_not_whole_blocks_are_refused() {
        let host = HostWeight::encode(&[0.0; 40], WeightFormat::F16, 2, 20);
        host.check("w").unwrap();
        assert!(!WeightFormat::Q4.holds(20));
        let bad = HostWeight {
            format: WeightFormat::Q8,
            ..host
        };
        assert!(bad.check("w").unwrap_err().to_string().contains("blocks"));
    }
}
