//! `shaders/norm.wgsl`: SigLIP's LayerNorm and Gemma's RMSNorm (with its `1 + w` scale).

use super::u32_of;
use crate::error::Result;
use crate::gpu::{Recorder, bind};
use crate::shaders::NORM;

/// Mirrors `Params` in norm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    n: u32,
    eps: f32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

fn params(rows: usize, n: usize, eps: f32) -> Result<Params> {
    Ok(Params {
        rows: u32_of("rows", rows)?,
        n: u32_of("width", n)?,
        eps,
        _pad: 0,
    })
}

/// y [rows, n] = LayerNorm(x) * w + b, biased variance.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    rec: &mut Recorder,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    b: &wgpu::Buffer,
    y: &wgpu::Buffer,
    rows: usize,
    n: usize,
    eps: f32,
) -> Result<()> {
    let pipeline = rec.gpu().pipeline(&NORM, "layer_norm", &[])?;
    let groups = rec.gpu().grid(rows as u32);
    let binds = vec![bind(1, x), bind(2, w), bind(3, b), bind(4, y)];
    rec.dispatch(pipeline, &params(rows, n, eps)?, binds, groups);
    Ok(())
}

/// y [rows, n] = x / sqrt(mean(x^2) + eps) * (1 + w).
pub fn rms_norm(
    rec: &mut Recorder,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    y: &wgpu::Buffer,
    rows: usize,
    n: usize,
    eps: f32,
) -> Result<()> {
    let pipeline = rec.gpu().pipeline(&NORM, "rms_norm", &[])?;
    let groups = rec.gpu().grid(rows as u32);
    let binds = vec![bind(1, x), bind(2, w), bind(4, y)];
    rec.dispatch(pipeline, &params(rows, n, eps)?, binds, groups);
    Ok(())
}

/// CPU reference for [`layer_norm`]: x [rows, n] -> [rows, n].
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

/// CPU reference for [`rms_norm`]: x [rows, n] -> [rows, n].
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
    /// y [rows, n] = LayerNorm(x [rows, n]).
    pub fn forward(
        &self,
        rec: &mut Recorder,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        rows: usize,
    ) -> Result<()> {
        layer_norm(rec, x, &self.weight, &self.bias, y, rows, self.n, self.eps)
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
    /// y [rows, n] = RMSNorm(x [rows, n]).
    pub fn forward(
        &self,
        rec: &mut Recorder,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        rows: usize,
    ) -> Result<()> {
        rms_norm(rec, x, &self.weight, y, rows, self.n, self.eps)
    }
}
