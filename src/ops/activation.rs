//! `shaders/activation.wgsl`: GELU (tanh approximation), the gated form used by Gemma, and
//! Gemma 2's logit soft-cap.

use super::{grid_256, u32_of};
use crate::error::Result;
use crate::gpu::{Recorder, bind};
use crate::shaders::ACTIVATION;

/// Mirrors `Params` in activation.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    cap: f32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// `out[i]` = gelu_tanh(`x[i]`) for i < n.
pub fn gelu_tanh(rec: &mut Recorder, x: &wgpu::Buffer, out: &wgpu::Buffer, n: usize) -> Result<()> {
    let pipeline = rec.gpu().pipeline(&ACTIVATION, "gelu_tanh", &[])?;
    let groups = grid_256(rec.gpu(), n);
    let params = Params {
        n: u32_of("n", n)?,
        cap: 0.0,
        _pad: [0; 2],
    };
    rec.dispatch(pipeline, &params, vec![bind(1, x), bind(3, out)], groups);
    Ok(())
}

/// `up[i]` = gelu_tanh(`gate[i]`) * `up[i]` for i < n (in place over `up`).
pub fn gelu_tanh_gated(
    rec: &mut Recorder,
    gate: &wgpu::Buffer,
    up: &wgpu::Buffer,
    n: usize,
) -> Result<()> {
    let pipeline = rec.gpu().pipeline(&ACTIVATION, "gelu_tanh_gated", &[])?;
    let groups = grid_256(rec.gpu(), n);
    let params = Params {
        n: u32_of("n", n)?,
        cap: 0.0,
        _pad: [0; 2],
    };
    rec.dispatch(pipeline, &params, vec![bind(1, gate), bind(3, up)], groups);
    Ok(())
}

/// `x[i]` = cap * tanh(`x[i]` / cap) for i < n (in place); `cap` > 0.
pub fn softcap(rec: &mut Recorder, x: &wgpu::Buffer, n: usize, cap: f32) -> Result<()> {
    let pipeline = rec.gpu().pipeline(&ACTIVATION, "softcap", &[])?;
    let groups = grid_256(rec.gpu(), n);
    let params = Params {
        n: u32_of("n", n)?,
        cap,
        _pad: [0; 2],
    };
    rec.dispatch(pipeline, &params, vec![bind(3, x)], groups);
    Ok(())
}

/// CPU reference for [`softcap`].
pub fn softcap_ref(x: &[f32], cap: f32) -> Vec<f32> {
    x.iter()
        .map(|&v| (cap as f64 * (v as f64 / cap as f64).tanh()) as f32)
        .collect()
}

/// CPU reference for one value, in f64.
pub fn gelu_tanh_scalar(x: f32) -> f32 {
    let x = x as f64;
    let c = (2.0 / std::f64::consts::PI).sqrt();
    (0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())) as f32
}

/// CPU reference for [`gelu_tanh`].
pub fn gelu_tanh_ref(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| gelu_tanh_scalar(v)).collect()
}

/// CPU reference for [`gelu_tanh_gated`].
pub fn gelu_tanh_gated_ref(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| (gelu_tanh_scalar(g) as f64 * u as f64) as f32)
        .collect()
}
