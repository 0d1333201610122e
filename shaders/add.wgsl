// add: the residual connection, x += y, in place over n elements.
//
// Bindings: 0 params, 1 y [n], 2 x [n] (read-write).
// One invocation per element; dispatch ceil(n / WG) workgroups through `Gpu::grid`.

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(WG)
fn add_inplace(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let i = flat_invocation(wid, nwg, li);
    if (i < p.n) {
        x[i] += y[i];
    }
}
