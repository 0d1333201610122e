//! `shaders/activation.wgsl`: GELU (tanh approximation), the gated form used by Gemma, and
//! Gemma 2's logit soft-cap, one invocation per element.

use super::{View, grid_for, u32_of};
use crate::error::Result;
use crate::gpu::{Kernel, Recorder, bind};
use crate::shaders::{Shader, shader};

/// Invocations per workgroup.
pub const WG: u32 = 256;

pub(crate) const SHADER: Shader = shader!("activation", ["grid", "math"], &[("WG", WG)]);

/// Mirrors `Params` in activation.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    cap: f32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// Dispatches `entry` over the elements of `out` (packed), reading `a` when given.
fn elementwise(
    rec: &mut Recorder,
    entry: &'static str,
    a: Option<View>,
    out: View,
    cap: f32,
) -> Result<()> {
    out.expect_packed(entry, out.rows, out.width)?;
    let n = out.rows * out.width;
    let mut binds = vec![bind(3, out.buffer)];
    if let Some(a) = a {
        a.expect_packed(entry, out.rows, out.width)?;
        binds.push(bind(1, a.buffer));
    }
    let params = Params {
        n: u32_of("n", n)?,
        cap,
        _pad: [0; 2],
    };
    let groups = grid_for(rec.gpu(), n, WG);
    rec.dispatch(Kernel::new(&SHADER, entry), &params, binds, groups)
}

/// out = gelu_tanh(x), elementwise.
pub fn gelu_tanh(rec: &mut Recorder, x: View, out: View) -> Result<()> {
    elementwise(rec, "gelu_tanh", Some(x), out, 0.0)
}

/// up = gelu_tanh(gate) * up, elementwise (in place over `up`).
pub fn gelu_tanh_gated(rec: &mut Recorder, gate: View, up: View) -> Result<()> {
    elementwise(rec, "gelu_tanh_gated", Some(gate), up, 0.0)
}

/// x = cap * tanh(x / cap), elementwise in place; `cap` > 0.
pub fn softcap(rec: &mut Recorder, x: View, cap: f32) -> Result<()> {
    elementwise(rec, "softcap", None, x, cap)
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
