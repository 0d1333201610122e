//! `shaders/matmul_coop.wgsl`: [`linear`](super::linear)'s `matmul` on cooperative matrices
//! (tensor cores), for the many-row products of the vision tower and the prefill. Chosen by
//! [`Linear::forward`](super::linear::Linear::forward) when the [`Gpu`](crate::Gpu) has
//! cooperative matrices on ([`Gpu::cooperative_matrix`](crate::Gpu::cooperative_matrix)) and
//! the weights are not f32; `matmul` is the fallback everywhere else.
//!
//! Tolerance (the `matmul_coop` cases of the kernel table, run by `tests/kernels.rs`): x is
//! rounded to f16 on its way in (about 2^-11 relative per product; bf16 and quantized weights
//! round once more), so outputs are checked within [`TOLERANCE`] x max |reference|, as every
//! case is, against the usual 2e-5 for f32 arithmetic.

use super::linear;
use crate::gpu::Requirement;
use crate::shaders::{Entry, Shader, shader};

/// The block of y one workgroup computes: BM rows by BN features, in 32 x 32 slots of 32
/// invocations each (2 x 2 accumulators of 16 x 16).
pub const BM: u32 = 64;
pub const BN: u32 = 64;
/// Depth of the x and W tiles staged in workgroup memory per step.
pub const BK: u32 = 32;
/// Invocations per workgroup: one 32-invocation slot per 32 x 32 sub-block.
pub const COOP_WG: u32 = 32 * (BM / 32) * (BN / 32);
const _: () = assert!(BM.is_multiple_of(32) && BN.is_multiple_of(32) && BK.is_multiple_of(16));

/// The bound on max |coop - reference| / max |reference|: x's rounding to f16 (2^-11
/// relative per product) and the f32 accumulation, with a margin; an index error is off by
/// O(1).
pub const TOLERANCE: f64 = 2e-3;

/// Needs f16 and cooperative matrices (`Gpu::COOPERATIVE_MATRIX_FEATURES`).
pub(crate) const SHADER: Shader = shader!(
    "matmul_coop",
    ["weight_format", "linear_io"],
    &[("BM", BM), ("BN", BN), ("BK", BK), ("COOP_WG", COOP_WG)],
    wgpu::Features::SHADER_F16.union(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
);

/// y = x W^T (+ b) on cooperative matrices: `linear.wgsl`'s `matmul` contract (its params and
/// bindings, from the `linear_io` prelude).
pub(crate) const MATMUL_COOP: Entry = Entry {
    shader: &SHADER,
    name: "matmul_coop",
    params: linear::PARAMS,
    bindings: linear::IO,
};

pub(crate) const ENTRIES: &[&Entry] = &[&MATMUL_COOP];

/// What the kernel needs of an adapter, for the runtime (see `ops/device.rs`).
pub(crate) const REQUIREMENT: Requirement = Requirement {
    features: SHADER.features,
    adapter_supports,
};

/// Whether an adapter can run the kernel: the features, a subgroup-scoped 16 x 16 x 16
/// configuration of f16 operands with f32 accumulation, and subgroups of at most 32 invocations
/// that divide 32 (so each lies within one 32-invocation slot; see the shader).
pub fn adapter_supports(adapter: &wgpu::Adapter) -> bool {
    let info = adapter.get_info();
    let config = adapter.cooperative_matrix_properties().iter().any(|c| {
        (c.m_size, c.n_size, c.k_size) == (16, 16, 16)
            && c.ab_type == wgpu::CooperativeScalarType::F16
            && c.cr_type == wgpu::CooperativeScalarType::F32
    });
    adapter.features().contains(SHADER.features) && config && subgroups_fit(&info)
}

/// Subgroups of at most 32 invocations that divide 32.
pub(crate) fn subgroups_fit(info: &wgpu::AdapterInfo) -> bool {
    let max = info.subgroup_max_size;
    max > 0 && max <= 32 && 32u32.is_multiple_of(max) && info.subgroup_min_size > 0
}
