//! `shaders/softmax.wgsl`: row softmax at a temperature, for sampling.

use super::u32_of;
use crate::error::{Error, Result};
use crate::gpu::{Recorder, bind};
use crate::shaders::SOFTMAX;

/// Mirrors `Params` in softmax.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    n: u32,
    inv_temperature: f32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// out [rows, n] = softmax(x / temperature) along each row.
pub fn softmax(
    rec: &mut Recorder,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    n: usize,
    temperature: f32,
) -> Result<()> {
    if !(temperature > 0.0 && (1.0 / temperature).is_finite()) {
        return Err(Error::invalid(format!(
            "softmax temperature must be > 0 with a finite inverse, got {temperature}"
        )));
    }
    let pipeline = rec.gpu().pipeline(&SOFTMAX, "softmax", &[])?;
    let params = Params {
        rows: u32_of("rows", rows)?,
        n: u32_of("n", n)?,
        inv_temperature: 1.0 / temperature,
        _pad: 0,
    };
    let groups = rec.gpu().grid(rows as u32);
    rec.dispatch(pipeline, &params, vec![bind(1, x), bind(2, out)], groups);
    Ok(())
}

/// CPU reference for [`softmax`].
pub fn softmax_ref(x: &[f32], rows: usize, n: usize, temperature: f32) -> Vec<f32> {
    let mut out = vec![0f32; rows * n];
    for r in 0..rows {
        let xr = &x[r * n..(r + 1) * n];
        let mx = xr.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let e: Vec<f64> = xr
            .iter()
            .map(|&v| ((v as f64 - mx) / temperature as f64).exp())
            .collect();
        let s: f64 = e.iter().sum();
        for i in 0..n {
            out[r * n + i] = (e[i] / s) as f32;
        }
    }
    out
}
