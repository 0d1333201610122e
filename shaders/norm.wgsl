// norm: SigLIP's LayerNorm and Gemma's RMSNorm, one row per workgroup, f32 throughout.
//
//   layer_norm: y = (x - mean) / sqrt(var + eps) * w + b   (biased variance, two passes)
//   rms_norm:   y = x / sqrt(mean(x^2) + eps) * (1 + w)    (Gemma stores w - 1)
//
//   rms_norm_in_place: y row r (at offset + r * stride) replaced by its rms_norm: Gemma 3's
//   q_norm and k_norm, each head of each row a row of its own (rows * heads rows of head_dim).
//
// Bindings: 0 params, 1 x [rows, n], 2 w [n], 3 b [n] (layer_norm only), 4 y [rows, n]
// (rms_norm_in_place: y only, rows at `offset + r * stride`; the others take packed rows).
// WG invocations stride over the row and reduce in workgroup memory (reduce.wgsl).
// Dispatch `rows` workgroups through `Gpu::grid`.

struct Params {
    rows: u32,
    n: u32,
    eps: f32,
    offset: u32,
    stride: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

// A workgroup past the last row (the grid's overhang) still joins every barrier: it computes on
// row 0 and writes nothing. Returning early would leave barriers after a branch some compilers
// (FXC) cannot prove uniform.

@compute @workgroup_size(WG)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let row = flat_workgroup(wid, nwg);
    let live = row < p.rows;
    let base = select(0u, row * p.n, live);
    var s = 0.0;
    for (var i = li; i < p.n; i += WG) {
        s += x[base + i];
    }
    let mean = workgroup_sum(li, s) / f32(p.n);
    var q = 0.0;
    for (var i = li; i < p.n; i += WG) {
        let d = x[base + i] - mean;
        q += d * d;
    }
    let inv = inverseSqrt(workgroup_sum(li, q) / f32(p.n) + p.eps);
    if (live) {
        for (var i = li; i < p.n; i += WG) {
            y[base + i] = (x[base + i] - mean) * inv * w[i] + b[i];
        }
    }
}

@compute @workgroup_size(WG)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let row = flat_workgroup(wid, nwg);
    let live = row < p.rows;
    let base = select(0u, row * p.n, live);
    var q = 0.0;
    for (var i = li; i < p.n; i += WG) {
        let v = x[base + i];
        q += v * v;
    }
    let inv = inverseSqrt(workgroup_sum(li, q) / f32(p.n) + p.eps);
    if (live) {
        for (var i = li; i < p.n; i += WG) {
            y[base + i] = x[base + i] * inv * (1.0 + w[i]);
        }
    }
}

@compute @workgroup_size(WG)
fn rms_norm_in_place(@builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) li: u32) {
    let row = flat_workgroup(wid, nwg);
    let live = row < p.rows;
    let base = p.offset + select(0u, row * p.stride, live);
    var q = 0.0;
    for (var i = li; i < p.n; i += WG) {
        let v = y[base + i];
        q += v * v;
    }
    let inv = inverseSqrt(workgroup_sum(li, q) / f32(p.n) + p.eps);
    // Every invocation has read its values (the sum's barrier) before any is overwritten.
    if (live) {
        for (var i = li; i < p.n; i += WG) {
            y[base + i] = y[base + i] * inv * (1.0 + w[i]);
        }
    }
}
