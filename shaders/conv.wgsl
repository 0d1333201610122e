// conv: the 2-D convolutions of PaliGemma's segmentation decoder (big_vision's VQ-VAE), on
// single images in HWC layout (channels innermost, as big_vision's NHWC), weights in PyTorch's
// layouts as `vae-oid.npz` stores them.
//
//   conv2d (stride 1, zero padding `pad`, k x k):
//     y[oy, ox, o] = b[o] + sum_{ky, kx, i} x[oy + ky - pad, ox + kx - pad, i] W[o, i, ky, kx]
//   conv_transpose2d (k = 4, stride 2, padding 1: PyTorch's ConvTranspose2d(4, 2, 1), which is
//   big_vision's `conv_transpose(padding=2, transpose_kernel=True)`; output 2h x 2w):
//     y[oy, ox, o] = b[o] + sum_{i, ky, kx} x[iy, ix, i] W[i, o, ky, kx],
//     over oy = 2 iy - 1 + ky and ox = 2 ix - 1 + kx
// then, by `flags`: RELU (max(0, .)), ACCUMULATE (added to what y holds: a ResBlock's x + ...).
//
// Bindings: 0 params, 1 x [h, w, c_in], 2 W, 3 b [c_out], 4 y [out_h, out_w, c_out].
// One invocation per output element; dispatch ceil(out_h * out_w * c_out / WG) workgroups
// through `Gpu::grid`. The decoder's tensors are small (at most 64 x 64 x 16 outputs, 4 x 4 x
// 512 inputs), so a direct loop is the whole kernel.

struct Params {
    h: u32,
    w: u32,
    c_in: u32,
    c_out: u32,
    k: u32,
    pad: u32,
    flags: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const RELU: u32 = 1u;
const ACCUMULATE: u32 = 2u;

fn finish(g: u32, acc: f32) {
    var v = acc;
    if ((p.flags & RELU) != 0u) {
        v = max(v, 0.0);
    }
    if ((p.flags & ACCUMULATE) != 0u) {
        v += y[g];
    }
    y[g] = v;
}

@compute @workgroup_size(WG)
fn conv2d(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let g = flat_invocation(wid, nwg, li);
    if (g >= p.h * p.w * p.c_out) {
        return;
    }
    let o = g % p.c_out;
    let pix = g / p.c_out;
    let oy = i32(pix / p.w);
    let ox = i32(pix % p.w);
    var acc = b[o];
    for (var ky = 0u; ky < p.k; ky++) {
        let iy = oy + i32(ky) - i32(p.pad);
        if (iy < 0 || iy >= i32(p.h)) {
            continue;
        }
        for (var kx = 0u; kx < p.k; kx++) {
            let ix = ox + i32(kx) - i32(p.pad);
            if (ix < 0 || ix >= i32(p.w)) {
                continue;
            }
            let x_base = (u32(iy) * p.w + u32(ix)) * p.c_in;
            for (var i = 0u; i < p.c_in; i++) {
                acc = fma(x[x_base + i], wt[((o * p.c_in + i) * p.k + ky) * p.k + kx], acc);
            }
        }
    }
    finish(g, acc);
}

@compute @workgroup_size(WG)
fn conv_transpose2d(@builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) li: u32) {
    let out_w = 2u * p.w;
    let g = flat_invocation(wid, nwg, li);
    if (g >= 4u * p.h * p.w * p.c_out) {
        return;
    }
    let o = g % p.c_out;
    let pix = g / p.c_out;
    let oy = i32(pix / out_w);
    let ox = i32(pix % out_w);
    var acc = b[o];
    for (var ky = 0; ky < 4; ky++) {
        let ty = oy + 1 - ky;
        if (ty < 0 || (ty & 1) != 0 || ty / 2 >= i32(p.h)) {
            continue;
        }
        for (var kx = 0; kx < 4; kx++) {
            let tx = ox + 1 - kx;
            if (tx < 0 || (tx & 1) != 0 || tx / 2 >= i32(p.w)) {
                continue;
            }
            let x_base = (u32(ty / 2) * p.w + u32(tx / 2)) * p.c_in;
            for (var i = 0u; i < p.c_in; i++) {
                let w_index = ((i * p.c_out + o) * 4u + u32(ky)) * 4u + u32(kx);
                acc = fma(x[x_base + i], wt[w_index], acc);
            }
        }
    }
    finish(g, acc);
}
