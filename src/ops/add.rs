//! `shaders/add.wgsl`: the residual connection x += y.

use super::{View, grid_for, u32_of};
use crate::error::Result;
use crate::gpu::Recorder;
use crate::shaders::{Binding, Elem, Entry, Shader, shader};

/// Invocations per workgroup.
pub const WG: u32 = 256;

pub(crate) const SHADER: Shader = shader!("add", ["grid"], &[("WG", WG)]);

/// Mirrors `Params` in add.wgsl (the size is checked against it by `tests/interfaces.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

/// x += y.
pub(crate) const ADD_INPLACE: Entry = Entry {
    shader: &SHADER,
    name: "add_inplace",
    params: size_of::<Params>(),
    bindings: &[
        Binding::read(1, "y", Elem::F32),
        Binding::read_write(2, "x", Elem::F32),
    ],
};

pub(crate) const ENTRIES: &[&Entry] = &[&ADD_INPLACE];

/// x += y, elementwise over packed views of one shape.
pub fn add_inplace(rec: &mut Recorder, x: View, y: View) -> Result<()> {
    x.expect_packed("residual stream", x.rows, x.width)?;
    y.expect_packed("residual branch", x.rows, x.width)?;
    let n = x.rows * x.width;
    let params = Params {
        n: u32_of("n", n)?,
        _pad: [0; 3],
    };
    let groups = grid_for(rec.gpu(), n, WG);
    rec.dispatch(&ADD_INPLACE, &params, &[y.buffer, x.buffer], groups)
}

/// CPU reference for [`add_inplace`].
pub fn add_ref(x: &[f32], y: &[f32]) -> Vec<f32> {
    x.iter().zip(y).map(|(a, b)| a + b).collect()
}
