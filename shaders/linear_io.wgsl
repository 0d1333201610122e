// Prelude of the linear layers (linear.wgsl, matmul_coop.wgsl): their parameters, bindings and
// the store that adds the bias and the residual. The layout is `Params` in src/ops/linear.rs.
//
// Bindings: 0 params, 1 x [m, k] f32 (rows at x_offset + r * x_stride), 2 W [n, k] in W_DTYPE
// (weight_format.wgsl), 3 b [n] f32 (read only when flags has BIAS), 4 y f32 written at
// y_offset + r * y_stride + c (added to when flags has ACCUMULATE), 5 W2 (gemv_gated's up
// projection).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32, // BIAS | ACCUMULATE
    x_offset: u32,
    x_stride: u32,
    y_offset: u32,
    y_stride: u32,
    w_scales: u32, // quantized W: where its (scale, min) words start, in u32 words
    w2_scales: u32, // the same for W2
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> w2: array<vec4<u32>>;


const BIAS: u32 = 1u;
const ACCUMULATE: u32 = 2u;

/// Writes one output: adds the bias and, when accumulating, what y held.
fn store(c: u32, index: u32, value: f32) {
    var v = value;
    if ((p.flags & BIAS) != 0u) {
        v += b[c];
    }
    if ((p.flags & ACCUMULATE) != 0u) {
        v += y[index];
    }
    y[index] = v;
}
