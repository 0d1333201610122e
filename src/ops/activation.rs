//! `shaders/activation.wgsl`: GELU (tanh approximation), the gated form used by Gemma, and
//! Gemma 2's logit soft-cap, one invocation per element.

use super::{View, grid_for, u32_of};
use crate::error::Result;
use crate::gpu::Recorder;
use crate::shaders::{Binding, Elem, Entry, Shader, shader};

/// Invocations per workgroup.
pub const WG: u32 = 256;

pub(crate) const SHADER: Shader = shader!("activation", ["grid", "math"], &[("WG", WG)]);

/// Mirrors `Params` in activation.wgsl (the size is checked against it by
/// `tests/interfaces.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    cap: f32,
    _pad: [u32; 2],
}

/// The input of the two-operand entries (GELU's x, the gated form's gate).
const A: Binding = Binding::read(1, "a", Elem::F32);
/// The output, which the in-place entries also read.
const OUT: Binding = Binding::read_write(3, "out", Elem::F32);

/// out = gelu_tanh(a).
pub(crate) const GELU_TANH: Entry = Entry {
    shader: &SHADER,
    name: "gelu_tanh",
    params: size_of::<Params>(),
    bindings: &[A, OUT],
};

/// out = gelu_tanh(a) * out.
pub(crate) const GELU_TANH_GATED: Entry = Entry {
    shader: &SHADER,
    name: "gelu_tanh_gated",
    params: size_of::<Params>(),
    bindings: &[A, OUT],
};

/// out = cap * tanh(out / cap).
pub(crate) const SOFTCAP: Entry = Entry {
    shader: &SHADER,
    name: "softcap",
    params: size_of::<Params>(),
    bindings: &[OUT],
};

pub(crate) const ENTRIES: &[&Entry] = &[&GELU_TANH, &GELU_TANH_GATED, &SOFTCAP];

/// Dispatches `entry` over the elements of `out` (packed), reading `a` when given (the entries
/// that declare it).
fn elementwise(
    rec: &mut Recorder,
    entry: &'static Entry,
    a: Option<View>,
    out: View,
    cap: f32,
) -> Result<()> {
    out.expect_packed(entry.name, out.rows, out.width)?;
    let n = out.rows * out.width;
    if let Some(a) = a {
        a.expect_packed(entry.name, out.rows, out.width)?;
    }
    let params = Params {
        n: u32_of("n", n)?,
        cap,
        _pad: [0; 2],
    };
    let groups = grid_for(rec.gpu(), n, WG);
    match a {
        Some(a) => rec.dispatch(entry, &params, &[a.buffer, out.buffer], groups),
        None => rec.dispatch(entry, &params, &[out.buffer], groups),
    }
}

/// out = gelu_tanh(x), elementwise.
pub fn gelu_tanh(rec: &mut Recorder, x: View, out: View) -> Result<()> {
    elementwise(rec, &GELU_TANH, Some(x), out, 0.0)
}

/// up = gelu_tanh(gate) * up, elementwise (in place over `up`).
pub fn gelu_tanh_gated(rec: &mut Recorder, gate: View, up: View) -> Result<()> {
    elementwise(rec, &GELU_TANH_GATED, Some(gate), up, 0.0)
}

/// x = cap * tanh(x / cap), elementwise in place; `cap` > 0.
pub fn softcap(rec: &mut Recorder, x: View, cap: f32) -> Result<()> {
    elementwise(rec, &SOFTCAP, None, x, cap)
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
