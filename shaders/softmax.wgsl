// softmax: probabilities over each row of logits at a temperature, for sampling:
//   out = exp((x - max) / T) / sum(exp((x - max) / T))
//
// Bindings: 0 params, 1 x [rows, n], 2 out [rows, n]. One workgroup of WG invocations per row
// (max, then sum, reduced in workgroup memory). Dispatch `rows` workgroups via `Gpu::grid`.

struct Params {
    rows: u32,
    n: u32,
    inv_temperature: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    // Past the last row (the grid's overhang): compute on row 0, write nothing, so every
    // invocation reaches every barrier (see norm.wgsl).
    let row = flat_workgroup(wid, nwg);
    let live = row < p.rows;
    let base = select(0u, row * p.n, live);
    var mx = -3.4e38;
    for (var i = li; i < p.n; i += WG) {
        mx = max(mx, x[base + i]);
    }
    mx = workgroup_max(li, mx);
    var sum = 0.0;
    for (var i = li; i < p.n; i += WG) {
        sum += exp((x[base + i] - mx) * p.inv_temperature);
    }
    let inv = 1.0 / workgroup_sum(li, sum);
    if (live) {
        for (var i = li; i < p.n; i += WG) {
            out[base + i] = exp((x[base + i] - mx) * p.inv_temperature) * inv;
        }
    }
}
