//! `shaders/norm.wgsl`: SigLIP's LayerNorm and Gemma's RMSNorm (with its `1 + w` scale), one
//! row per workgroup.

use super::{View, u32_of};
use crate::error::Result;
use crate::gpu::Recorder;
use crate::shaders::{Binding, Elem, Entry, Shader, shader};

/// Invocations per workgroup (one workgroup per row).
pub const WG: u32 = 256;

pub(crate) const SHADER: Shader = shader!("norm", ["grid", "reduce"], &[("WG", WG)]);

/// Mirrors `Params` in norm.wgsl (the size is checked against it by `tests/interfaces.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    n: u32,
    eps: f32,
    offset: u32,
    stride: u32,
    _pad: [u32; 3],
}

const X: Binding = Binding::read(1, "x", Elem::F32);
const W: Binding = Binding::read(2, "w", Elem::F32);
const B: Binding = Binding::read(3, "b", Elem::F32);
const Y: Binding = Binding::read_write(4, "y", Elem::F32);

/// SigLIP's LayerNorm: weight and bias.
pub(crate) const LAYER_NORM: Entry = Entry {
    shader: &SHADER,
    name: "layer_norm",
    params: size_of::<Params>(),
    bindings: &[X, W, B, Y],
};

/// Gemma's RMSNorm: a weight, no bias.
pub(crate) const RMS_NORM: Entry = Entry {
    shader: &SHADER,
    name: "rms_norm",
    params: size_of::<Params>(),
    bindings: &[X, W, Y],
};

/// [`RMS_NORM`] in place, on rows at any offset and stride (Gemma 3's QK-norm).
pub(crate) const RMS_NORM_IN_PLACE: Entry = Entry {
    shader: &SHADER,
    name: "rms_norm_in_place",
    params: size_of::<Params>(),
    bindings: &[W, Y],
};

pub(crate) const ENTRIES: &[&Entry] = &[&LAYER_NORM, &RMS_NORM, &RMS_NORM_IN_PLACE];

/// Checks x and y as packed `[rows, n]` and builds the parameters.
fn params(x: &View, y: &View, n: usize, eps: f32) -> Result<Params> {
    x.expect_packed("norm input", x.rows, n)?;
    y.expect_packed("norm output", x.rows, n)?;
    Ok(Params {
        rows: u32_of("rows", x.rows)?,
        n: u32_of("width", n)?,
        eps,
        offset: 0,
        stride: u32_of("width", n)?,
        _pad: [0; 3],
    })
}

/// CPU reference for [`LayerNorm`]: x [rows, n] -> [rows, n].
pub fn layer_norm_ref(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    rows: usize,
    n: usize,
    eps: f32,
) -> Vec<f32> {
    let mut y = vec![0f32; rows * n];
    for r in 0..rows {
        let xr = &x[r * n..(r + 1) * n];
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for i in 0..n {
            y[r * n + i] = ((xr[i] as f64 - mean) * inv * w[i] as f64 + b[i] as f64) as f32;
        }
    }
    y
}

/// CPU reference for [`RmsNorm`]: x [rows, n] -> [rows, n].
pub fn rms_norm_ref(x: &[f32], w: &[f32], rows: usize, n: usize, eps: f32) -> Vec<f32> {
    let mut y = vec![0f32; rows * n];
    for r in 0..rows {
        let xr = &x[r * n..(r + 1) * n];
        let ms = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        for i in 0..n {
            y[r * n + i] = (xr[i] as f64 * inv * (1.0 + w[i] as f64)) as f32;
        }
    }
    y
}

/// SigLIP's LayerNorm: weight and bias `[n]`, eps from the config.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: wgpu::Buffer,
    pub bias: wgpu::Buffer,
    pub n: usize,
    pub eps: f32,
}

impl LayerNorm {
    /// y = (x - mean) / sqrt(var + eps) * w + b, row by row (biased variance).
    pub fn forward(&self, rec: &mut Recorder, x: View, y: View) -> Result<()> {
        let params = params(&x, &y, self.n, self.eps)?;
        let buffers = [x.buffer, &self.weight, &self.bias, y.buffer];
        let groups = rec.gpu().grid(params.rows);
        rec.dispatch(&LAYER_NORM, &params, &buffers, groups)
    }
}

/// Gemma's RMSNorm: weight `[n]` (applied as 1 + w), eps from the config.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: wgpu::Buffer,
    pub n: usize,
    pub eps: f32,
}

impl RmsNorm {
    /// y = x / sqrt(mean(x^2) + eps) * (1 + w), row by row.
    pub fn forward(&self, rec: &mut Recorder, x: View, y: View) -> Result<()> {
        let params = params(&x, &y, self.n, self.eps)?;
        let groups = rec.gpu().grid(params.rows);
        rec.dispatch(
            &RMS_NORM,
            &params,
            &[x.buffer, &self.weight, y.buffer],
            groups,
        )
    }

    /// Each row of `x` replaced by its norm (the rows may lie at any offset and stride).
    pub fn forward_in_place(&self, rec: &mut Recorder, x: View) -> Result<()> {
        x.expect("norm rows", x.rows, self.n)?;
        let params = Params {
            rows: u32_of("rows", x.rows)?,
            n: u32_of("width", self.n)?,
            eps: self.eps,
            offset: u32_of("offset", x.offset)?,
            stride: u32_of("stride", x.stride)?,
            _pad: [0; 3],
        };
        let groups = rec.gpu().grid(params.rows);
        rec.dispatch(
            &RMS_NORM_IN_PLACE,
            &params,
            &[&self.weight, x.buffer],
            groups,
        )
    }
}
