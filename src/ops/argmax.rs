//! `shaders/argmax.wgsl`: greedy token choice on the GPU, one u32 read back per token.

use super::{View, u32_of};
use crate::error::Result;
use crate::gpu::Recorder;
use crate::shaders::{Binding, Elem, Entry, Shader, shader};

/// Invocations of the one workgroup.
pub const WG: u32 = 256;

pub(crate) const SHADER: Shader = shader!("argmax", [], &[("WG", WG)]);

/// Mirrors `Params` in argmax.wgsl (the size is checked against it by `tests/interfaces.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    offset: u32,
    out_index: u32,
    _pad: u32,
}

/// The index of one row's maximum, as a u32 in `out`.
pub(crate) const ARGMAX: Entry = Entry {
    shader: &SHADER,
    name: "argmax",
    params: size_of::<Params>(),
    bindings: &[
        Binding::read(1, "x", Elem::F32),
        Binding::read_write(2, "out", Elem::U32),
    ],
};

pub(crate) const ENTRIES: &[&Entry] = &[&ARGMAX];

/// `out[out_index]` = argmax of the one row `x` (u32); ties go to the lowest index.
pub fn argmax(rec: &mut Recorder, x: View, out: &wgpu::Buffer, out_index: usize) -> Result<()> {
    x.expect("argmax input", 1, x.width)?;
    let params = Params {
        n: u32_of("n", x.width)?,
        offset: u32_of("offset", x.offset)?,
        out_index: u32_of("out index", out_index)?,
        _pad: 0,
    };
    rec.dispatch(&ARGMAX, &params, &[x.buffer, out], [1, 1, 1])
}

/// CPU reference for [`argmax`] (first index of the maximum, like `torch.argmax`).
pub fn argmax_ref(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}
