//! `shaders/argmax.wgsl`: greedy token choice on the GPU, one u32 read back per token.

use super::{View, u32_of};
use crate::error::Result;
use crate::gpu::Recorder;
use crate::shaders::{Binding, Elem, Entry, Shader, shader};
use bytemuck::Zeroable;

/// Invocations per workgroup.
pub const WG: u32 = 256;
/// The most workgroups of the first pass: enough to spread a vocabulary row over a large GPU
/// (1005 logits each at 257216), few enough that the second pass is one workgroup's loop.
/// A short row takes one per WG logits ([`parts_of`]).
pub const PARTS: u32 = 256;

/// Workgroups of the first pass over a row of `n` (`parts_of` in best.wgsl).
pub(crate) fn parts_of(n: u32) -> u32 {
    n.div_ceil(WG).clamp(1, PARTS)
}
/// Bytes of the scratch between the passes (one for the device:
/// [`Gpu::shared_scratch`](crate::Gpu)).
pub(crate) const PARTS_BYTES: u64 = PARTS as u64 * 8;

pub(crate) const SHADER: Shader = shader!("argmax", ["best"], &[("WG", WG), ("PARTS", PARTS)]);

/// Mirrors `Params` in argmax.wgsl (the size is checked against it by `tests/interfaces.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    offset: u32,
    out_index: u32,
    _pad: u32,
}

const X: Binding = Binding::read(1, "x", Elem::F32);
const OUT: Binding = Binding::read_write(2, "out", Elem::U32);
const PARTS_BINDING: Binding = Binding::read_write(3, "parts", Elem::U32);

/// The best (value, index) of each slice of the row, into the parts.
pub(crate) const ARGMAX_PARTS: Entry = Entry {
    shader: &SHADER,
    name: "argmax_parts",
    params: size_of::<Params>(),
    bindings: &[X, PARTS_BINDING],
};

/// The index of the row's maximum from the parts, as a u32 in `out`.
pub(crate) const ARGMAX: Entry = Entry {
    shader: &SHADER,
    name: "argmax",
    params: size_of::<Params>(),
    bindings: &[OUT, PARTS_BINDING],
};

pub(crate) const ENTRIES: &[&Entry] = &[&ARGMAX_PARTS, &ARGMAX];

/// `out[out_index]` = argmax of the one row `x` (u32); ties go to the lowest index.
pub fn argmax(rec: &mut Recorder, x: View, out: &wgpu::Buffer, out_index: usize) -> Result<()> {
    x.expect("argmax input", 1, x.width)?;
    let params = Params {
        n: u32_of("n", x.width)?,
        offset: u32_of("offset", x.offset)?,
        out_index: u32_of("out index", out_index)?,
        _pad: 0,
    };
    let parts = parts(rec)?;
    let groups = [parts_of(params.n), 1, 1];
    rec.dispatch(&ARGMAX_PARTS, &params, &[x.buffer, &parts], groups)?;
    best_of_parts(rec, &parts, params.n, out, params.out_index)
}

/// The device's scratch between the passes.
pub(crate) fn parts(rec: &Recorder) -> Result<wgpu::Buffer> {
    rec.gpu().shared_scratch("argmax parts", PARTS_BYTES)
}

/// The second pass alone: `out[out_index]` = the index of the best of the pairs in `parts`
/// the first pass wrote for a row of `n` (NONE, `u32::MAX`, when every part is empty).
/// Sampling ends with it too.
pub(crate) fn best_of_parts(
    rec: &mut Recorder,
    parts: &wgpu::Buffer,
    n: u32,
    out: &wgpu::Buffer,
    out_index: u32,
) -> Result<()> {
    let params = Params {
        n,
        out_index,
        ..Params::zeroed()
    };
    rec.dispatch(&ARGMAX, &params, &[out, parts], [1, 1, 1])
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
