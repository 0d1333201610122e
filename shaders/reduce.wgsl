// Prelude prepended (by src/shaders.rs) to the shaders that reduce across a workgroup.
//
// Tree reductions in workgroup memory (no subgroup feature needed): every invocation of the
// workgroup must call them (barriers need uniform control flow), and each gets the result of its
// group. `WG` (invocations per workgroup, a power of two) comes from the generated constants.

var<workgroup> red: array<f32, WG>;

/// The sum of `v` over each aligned group of `width` invocations (a power of two dividing WG,
/// e.g. the 32 lanes that share one GEMV row); every invocation gets its group's sum.
fn group_sum(li: u32, v: f32, width: u32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    let lane = li % width;
    for (var s = width / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            red[li] += red[li + s];
        }
        workgroupBarrier();
    }
    let total = red[li - lane];
    workgroupBarrier();
    return total;
}

/// The maximum of `v` over each aligned group of `width` invocations.
fn group_max(li: u32, v: f32, width: u32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    let lane = li % width;
    for (var s = width / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            red[li] = max(red[li], red[li + s]);
        }
        workgroupBarrier();
    }
    let total = red[li - lane];
    workgroupBarrier();
    return total;
}

/// The sum of `v` over the whole workgroup.
fn workgroup_sum(li: u32, v: f32) -> f32 {
    return group_sum(li, v, WG);
}

/// The maximum of `v` over the whole workgroup.
fn workgroup_max(li: u32, v: f32) -> f32 {
    return group_max(li, v, WG);
}
