//! `shaders/add.wgsl`: the residual connection x += y.

use super::{View, grid_for, u32_of};
use crate::error::Result;
use crate::gpu::{Kernel, Recorder, bind};
use crate::shaders::{Shader, shader};

/// Invocations per workgroup.
pub const WG: u32 = 256;

pub(crate) const SHADER: Shader = shader!("add", ["grid"], &[("WG", WG)]);

/// Mirrors `Params` in add.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

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
    let binds = vec![bind(1, y.buffer), bind(2, x.buffer)];
    rec.dispatch(Kernel::new(&SHADER, "add_inplace"), &params, binds, groups)
}

/// CPU reference for [`add_inplace`].
pub fn add_ref(x: &[f32], y: &[f32]) -> Vec<f32> {
    x.iter().zip(y).map(|(a, b)| a + b).collect()
}
