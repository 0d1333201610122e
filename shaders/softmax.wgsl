// softmax: probabilities over each row of logits at a temperature, for sampling:
//   out = exp((x - max) / T) / sum(exp((x - max) / T))
//
// Bindings: 0 params, 1 x [rows, n], 2 out [rows, n]. One workgroup of 256 invocations per row
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

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.n;
    var mx = -3.4e38;
    for (var i = li; i < p.n; i += WG) {
        mx = max(mx, x[base + i]);
    }
    red[li] = mx;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] = max(red[li], red[li + s]);
        }
        workgroupBarrier();
    }
    mx = red[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var i = li; i < p.n; i += WG) {
        let e = exp((x[base + i] - mx) * p.inv_temperature);
        out[base + i] = e;
        sum += e;
    }
    red[li] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] += red[li + s];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / red[0];
    for (var i = li; i < p.n; i += WG) {
        out[base + i] *= inv;
    }
}
