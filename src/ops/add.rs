//! `shaders/add.wgsl`: the residual connection x += y.

use super::{grid_256, u32_of};
use crate::error::Result;
use crate::gpu::{Recorder, bind};
use crate::shaders::ADD;

/// Mirrors `Params` in add.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// `x[i]` += `y[i]` for i < n.
pub fn add_inplace(rec: &mut Recorder, x: &wgpu::Buffer, y: &wgpu::Buffer, n: usize) -> Result<()> {
    let pipeline = rec.gpu().pipeline(&ADD, "add_inplace", &[])?;
    let groups = grid_256(rec.gpu(), n);
    let params = Params {
        n: u32_of("n", n)?,
        _pad: [0; 3],
    };
    rec.dispatch(pipeline, &params, vec![bind(1, y), bind(2, x)], groups);
    Ok(())
}

/// CPU reference for [`add_inplace`].
pub fn add_ref(x: &[f32], y: &[f32]) -> Vec<f32> {
    x.iter().zip(y).map(|(a, b)| a + b).collect()
}
