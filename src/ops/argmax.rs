//! `shaders/argmax.wgsl`: greedy token choice on the GPU, one u32 read back per token.

use super::u32_of;
use crate::error::Result;
use crate::gpu::{Recorder, bind};
use crate::shaders::ARGMAX;

/// Mirrors `Params` in argmax.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    offset: u32,
    out_index: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// `out[out_index]` = argmax(`x[offset..offset + n]`); ties go to the lowest index.
pub fn argmax(
    rec: &mut Recorder,
    x: &wgpu::Buffer,
    offset: usize,
    n: usize,
    out: &wgpu::Buffer,
    out_index: usize,
) -> Result<()> {
    let pipeline = rec.gpu().pipeline(&ARGMAX, "argmax", &[])?;
    let params = Params {
        n: u32_of("n", n)?,
        offset: u32_of("offset", offset)?,
        out_index: u32_of("out index", out_index)?,
        _pad: 0,
    };
    rec.dispatch(pipeline, &params, vec![bind(1, x), bind(2, out)], [1, 1, 1]);
    Ok(())
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
