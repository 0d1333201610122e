//! `shaders/softmax.wgsl`: row softmax at a temperature, for sampling.

use super::{View, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Kernel, Recorder, bind};
use crate::shaders::{Shader, shader};

/// Invocations per workgroup (one workgroup per row).
pub const WG: u32 = 256;

pub(crate) const SHADER: Shader = shader!("softmax", ["grid", "reduce"], &[("WG", WG)]);

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

/// out = softmax(x / temperature) along each row of packed `[rows, n]` views.
pub fn softmax(rec: &mut Recorder, x: View, out: View, temperature: f32) -> Result<()> {
    if !(temperature > 0.0 && (1.0 / temperature).is_finite()) {
        return Err(Error::invalid(format!(
            "softmax temperature must be > 0 with a finite inverse, got {temperature}"
        )));
    }
    x.expect_packed("softmax input", x.rows, x.width)?;
    out.expect_packed("softmax output", x.rows, x.width)?;
    let params = Params {
        rows: u32_of("rows", x.rows)?,
        n: u32_of("n", x.width)?,
        inv_temperature: 1.0 / temperature,
        _pad: 0,
    };
    let groups = rec.gpu().grid(params.rows);
    let binds = vec![bind(1, x.buffer), bind(2, out.buffer)];
    rec.dispatch(Kernel::new(&SHADER, "softmax"), &params, binds, groups)
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
