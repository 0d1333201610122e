//! `shaders/linear.wgsl`: y = x W^T (+ b) for many rows (`matmul`, prefill) or one row (`gemv`,
//! decode), with W in f32, f16 or bf16; and the logits projection over a chunked vocabulary.

use super::{ChunkedTable, Rows, Weight, WeightFormat, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Recorder, bind};
use crate::shaders::LINEAR;

/// Mirrors `Params` in linear.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    x_offset: u32,
    x_stride: u32,
    y_offset: u32,
    y_stride: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 32);

impl Params {
    fn new(m: usize, w: &Weight, flags: u32, x_at: Rows, y_at: Rows) -> Result<Params> {
        Ok(Params {
            m: u32_of("rows", m)?,
            n: u32_of("out features", w.rows)?,
            k: u32_of("in features", w.cols)?,
            flags,
            x_offset: u32_of("x offset", x_at.offset)?,
            x_stride: u32_of("x stride", x_at.stride)?,
            y_offset: u32_of("y offset", y_at.offset)?,
            y_stride: u32_of("y stride", y_at.stride)?,
        })
    }
}

/// Which entry point computes the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearKernel {
    /// Tiled in workgroup memory; for many rows.
    Matmul,
    /// One workgroup per 8 output features; for a single row.
    Gemv,
    /// [`Gemv`](Self::Gemv) with 16-byte weight loads; needs k a multiple of 8 (4 for f32).
    GemvVec,
}

impl LinearKernel {
    /// The kernel for `m` rows of a weight with `k` columns in `format`.
    pub fn choose(m: usize, k: usize, format: WeightFormat) -> LinearKernel {
        match m {
            1 if format.rows_vec4_aligned(k) => LinearKernel::GemvVec,
            1 => LinearKernel::Gemv,
            _ => LinearKernel::Matmul,
        }
    }
}

/// `y[r, c]` = sum_k `x[r, k] W[c, k]` (+ `b[c]`) for r < m, with x and y rows placed by `x_at`,
/// `y_at`. Picks `gemv` for one row and `matmul` otherwise.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    rec: &mut Recorder,
    x: &wgpu::Buffer,
    x_at: Rows,
    w: &Weight,
    b: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
    y_at: Rows,
    m: usize,
) -> Result<()> {
    let kernel = LinearKernel::choose(m, w.cols, w.format);
    linear_with(rec, kernel, x, x_at, w, b, y, y_at, m, false)
}

/// [`linear`] with an explicit kernel choice (tests run every kernel on every shape), adding
/// to y instead of overwriting it when `accumulate` (a residual connection folded in).
#[allow(clippy::too_many_arguments)]
pub fn linear_with(
    rec: &mut Recorder,
    kernel: LinearKernel,
    x: &wgpu::Buffer,
    x_at: Rows,
    w: &Weight,
    b: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
    y_at: Rows,
    m: usize,
    accumulate: bool,
) -> Result<()> {
    if kernel != LinearKernel::Matmul && m != 1 {
        return Err(Error::invalid(format!("gemv computes one row, not {m}")));
    }
    if kernel == LinearKernel::GemvVec && !w.format.rows_vec4_aligned(w.cols) {
        return Err(Error::invalid(format!(
            "gemv_vec needs rows on 16-byte boundaries; k = {} in {:?} is not",
            w.cols, w.format
        )));
    }
    let flags = b.is_some() as u32 | (accumulate as u32) << 1;
    let params = Params::new(m, w, flags, x_at, y_at)?;
    let gpu = rec.gpu().clone();
    let constants = [("W_DTYPE", w.format.shader_code())];
    let (entry, groups) = match kernel {
        LinearKernel::Matmul => (
            "matmul",
            [w.rows.div_ceil(64) as u32, m.div_ceil(64) as u32, 1],
        ),
        LinearKernel::Gemv => ("gemv", gpu.grid(w.rows.div_ceil(8) as u32)),
        LinearKernel::GemvVec => ("gemv_vec", gpu.grid(w.rows.div_ceil(8) as u32)),
    };
    let pipeline = gpu.pipeline(&LINEAR, entry, &constants)?;
    let binds = vec![
        bind(1, x),
        bind(2, &w.buffer),
        bind(3, b.unwrap_or(gpu.dummy())),
        bind(4, y),
    ];
    rec.dispatch(pipeline, &params, binds, groups);
    Ok(())
}

/// y = gelu_tanh(x W_gate^T) * (x W_up^T) for one row: Gemma's MLP up to `down_proj` in one
/// dispatch (decode). Needs the two weights alike and k a multiple of 8 (4 for f32); see
/// [`gated_supported`].
pub fn gemv_gated(
    rec: &mut Recorder,
    x: &wgpu::Buffer,
    x_at: Rows,
    gate: &Weight,
    up: &Weight,
    y: &wgpu::Buffer,
    y_offset: usize,
) -> Result<()> {
    if !gated_supported(gate, up) {
        return Err(Error::invalid(format!(
            "gemv_gated needs two [n, k] weights of one format with k a multiple of 16 bytes; got \
             {}x{} {:?} and {}x{} {:?}",
            gate.rows, gate.cols, gate.format, up.rows, up.cols, up.format
        )));
    }
    let params = Params::new(
        1,
        gate,
        0,
        x_at,
        Rows {
            offset: y_offset,
            stride: 0,
        },
    )?;
    let gpu = rec.gpu().clone();
    let constants = [("W_DTYPE", gate.format.shader_code())];
    let pipeline = gpu.pipeline(&LINEAR, "gemv_vec_gated", &constants)?;
    let binds = vec![
        bind(1, x),
        bind(2, &gate.buffer),
        bind(4, y),
        bind(5, &up.buffer),
    ];
    rec.dispatch(
        pipeline,
        &params,
        binds,
        gpu.grid(gate.rows.div_ceil(8) as u32),
    );
    Ok(())
}

/// Whether [`gemv_gated`] can combine `gate` and `up`.
pub fn gated_supported(gate: &Weight, up: &Weight) -> bool {
    (gate.rows, gate.cols, gate.format) == (up.rows, up.cols, up.format)
        && gate.format.rows_vec4_aligned(gate.cols)
}

/// Logits for `m` rows of `x` against a chunked [vocab, H] table (the tied embedding, or an
/// untied `lm_head`): `y[r, v]` = `x[r]` . `E[v]`,
/// written at `y_at` with one row per input row (stride = vocabulary size for full rows).
pub fn logits(
    rec: &mut Recorder,
    x: &wgpu::Buffer,
    x_at: Rows,
    table: &ChunkedTable,
    y: &wgpu::Buffer,
    y_at: Rows,
    m: usize,
) -> Result<()> {
    for (start, chunk) in &table.chunks {
        let at = Rows {
            offset: y_at.offset + start,
            stride: y_at.stride,
        };
        linear(rec, x, x_at, chunk, None, y, at, m)?;
    }
    Ok(())
}

/// CPU reference: y `[m, n]` = x `[m, k]` W^T `[k, n]` (+ b `[n]`), f64 accumulation.
pub fn linear_ref(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        let xr = &x[r * k..(r + 1) * k];
        for c in 0..n {
            let wr = &w[c * k..(c + 1) * k];
            let mut acc: f64 = xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
            if let Some(b) = b {
                acc += b[c] as f64;
            }
            y[r * n + c] = acc as f32;
        }
    }
    y
}

/// A linear layer as checkpoints store it: `weight` `[out, in]` and an optional `bias` `[out]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<wgpu::Buffer>,
}

impl Linear {
    /// y = x W^T (+ b) for `m` rows placed by `x_at` and `y_at`.
    pub fn forward(
        &self,
        rec: &mut Recorder,
        x: &wgpu::Buffer,
        x_at: Rows,
        y: &wgpu::Buffer,
        y_at: Rows,
        m: usize,
    ) -> Result<()> {
        linear(rec, x, x_at, &self.weight, self.bias.as_ref(), y, y_at, m)
    }

    /// y += x W^T (+ b): the projection and the residual connection after it in one pass.
    pub fn forward_add(
        &self,
        rec: &mut Recorder,
        x: &wgpu::Buffer,
        x_at: Rows,
        y: &wgpu::Buffer,
        y_at: Rows,
        m: usize,
    ) -> Result<()> {
        let kernel = LinearKernel::choose(m, self.weight.cols, self.weight.format);
        let b = self.bias.as_ref();
        linear_with(rec, kernel, x, x_at, &self.weight, b, y, y_at, m, true)
    }
}
