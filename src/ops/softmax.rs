//! `shaders/softmax.wgsl`: row softmax at a temperature, for sampling.

use super::{View, u32_of};
use crate::error::{Error, Result};
use crate::gpu::Recorder;
use crate::shaders::{Binding, Elem, Entry, Shader, shader};

/// Invocations per workgroup (one workgroup per row).
pub const WG: u32 = 256;

pub(crate) const SHADER: Shader = shader!("softmax", ["grid", "reduce"], &[("WG", WG)]);

/// Mirrors `Params` in softmax.wgsl (the size is checked against it by `tests/interfaces.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    n: u32,
    inv_temperature: f32,
    _pad: u32,
}

/// Row softmax at a temperature.
pub(crate) const SOFTMAX: Entry = Entry {
    shader: &SHADER,
    name: "softmax",
    params: size_of::<Params>(),
    bindings: &[
        Binding::read(1, "x", Elem::F32),
        Binding::read_write(2, "out", Elem::F32),
    ],
};

pub(crate) const ENTRIES: &[&Entry] = &[&SOFTMAX];

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
    rec.dispatch(&SOFTMAX, &params, &[x.buffer, out.buffer], groups)
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
