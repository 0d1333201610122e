//! `shaders/avg_pool.wgsl`: Gemma 3's average pooling of the vision tower's patch grid.

use super::{View, grid_for, u32_of};
use crate::error::{Error, Result};
use crate::gpu::Recorder;
use crate::shaders::{Binding, Elem, Entry, Shader, shader};

/// Invocations per workgroup.
pub const WG: u32 = 256;

pub(crate) const SHADER: Shader = shader!("avg_pool", ["grid"], &[("WG", WG)]);

/// Mirrors `Params` in avg_pool.wgsl (the size is checked against it by `tests/interfaces.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    side: u32,
    k: u32,
    d: u32,
    _pad: u32,
}

pub(crate) const AVG_POOL: Entry = Entry {
    shader: &SHADER,
    name: "avg_pool",
    params: size_of::<Params>(),
    bindings: &[
        Binding::read(1, "x", Elem::F32),
        Binding::read_write(2, "y", Elem::F32),
    ],
};

pub(crate) const ENTRIES: &[&Entry] = &[&AVG_POOL];

/// y = the `side` x `side` grid of rows of `x` averaged over k x k tiles: `x` `[side^2, d]`
/// packed, `y` `[(side / k)^2, d]` packed.
pub fn avg_pool(rec: &mut Recorder, x: View, side: usize, k: usize, y: View) -> Result<()> {
    if k == 0 || !side.is_multiple_of(k) {
        return Err(Error::invalid(format!(
            "a {side}x{side} grid cannot be pooled in tiles of {k}"
        )));
    }
    let d = x.width;
    x.expect_packed("pooled grid", side * side, d)?;
    y.expect_packed("pooled rows", (side / k).pow(2), d)?;
    let params = Params {
        side: u32_of("side", side)?,
        k: u32_of("kernel", k)?,
        d: u32_of("width", d)?,
        _pad: 0,
    };
    let groups = grid_for(rec.gpu(), y.rows * d, WG);
    rec.dispatch(&AVG_POOL, &params, &[x.buffer, y.buffer], groups)
}

/// CPU reference for [`avg_pool`], in f64.
pub fn avg_pool_ref(x: &[f32], side: usize, k: usize, d: usize) -> Vec<f32> {
    let out = side / k;
    let mut y = vec![0f32; out * out * d];
    for oy in 0..out {
        for ox in 0..out {
            for c in 0..d {
                let mut s = 0f64;
                for ky in 0..k {
                    for kx in 0..k {
                        s += x[((oy * k + ky) * side + ox * k + kx) * d + c] as f64;
                    }
                }
                y[(oy * out + ox) * d + c] = (s / (k * k) as f64) as f32;
            }
        }
    }
    y
}
