// avg_pool: Gemma 3's pooling of SigLIP's patch grid, transformers' AvgPool2d(kernel, stride
// kernel) over the [side, side] grid of each of d channels:
//
//   y[oy * (side / k) + ox, c] = sum over ky, kx < k of x[(oy * k + ky) * side + ox * k + kx, c] / k^2
//
// x holds the patches row-major ([side * side, d], patch (row, col) at row * side + col, as the
// vision tower writes them); y [(side / k)^2, d].
//
// Bindings: 0 params, 1 x, 2 y. One invocation per output element; dispatch
// ceil(out_rows * d / WG) workgroups through `Gpu::grid`.

struct Params {
    side: u32,
    k: u32,
    d: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn avg_pool(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let i = flat_invocation(wid, nwg, li);
    let out_side = p.side / p.k;
    if (i >= out_side * out_side * p.d) {
        return;
    }
    let c = i % p.d;
    let o = i / p.d;
    let oy = o / out_side;
    let ox = o % out_side;
    var s = 0.0;
    for (var ky = 0u; ky < p.k; ky++) {
        let row = (oy * p.k + ky) * p.side + ox * p.k;
        for (var kx = 0u; kx < p.k; kx++) {
            s += x[(row + kx) * p.d + c];
        }
    }
    y[i] = s / f32(p.k * p.k);
}
