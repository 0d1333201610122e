// Prelude prepended (by src/shaders.rs) to every shader dispatched over a grid of workgroups.
//
// A dispatch of more workgroups than the device allows in one dimension (65535 by default) is
// spread over x and y by `Gpu::grid`; kernels rebuild the linear index here and drop the
// overhang. `WG` (invocations per workgroup) comes from the generated constants.

/// The linear index of this workgroup.
fn flat_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

/// The linear index of this invocation, for one-invocation-per-element kernels.
fn flat_invocation(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return flat_workgroup(wid, nwg) * WG + li;
}
