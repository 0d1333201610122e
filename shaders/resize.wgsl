// resize: the image preprocessor on the GPU, for a frame that is already a texture (a game's
// render target): Pillow's bicubic resize, exactly as src/preprocess.rs ports it (the same
// fixed-point weights, the same integer sums, the same rounding after each pass), then the
// processor's scaling to [-1, 1] in channel-major order. The result equals `preprocess` on
// the texture's bytes, bit for bit.
//
// Pixels are packed 8-bit channels in one u32 each (the texture's bytes, copied as they are,
// so an sRGB texture gives its stored bytes, not linear values): channel c of a pixel is
// (word >> shift_c) & 255, with shifts (0, 8, 16) for RGBA and (16, 8, 0) for BGRA. Passes
// write RGBA order.
//
// Entry points:
// - `resample`: one separable pass (Pillow's ImagingResample{Horizontal,Vertical}_8bpc).
//   Bindings: 0 params, 1 src pixels (row r at r * src_stride words), 2 coefficients (i32:
//   `out_n` (first, count) pairs, then `out_n` rows of `ksize` weights in PRECISION_BITS fixed
//   point), 3 dst pixels (packed rows of out_w). One invocation per output pixel; dispatch
//   ceil(out_w * out_h / WG) workgroups through `Gpu::grid`.
// - `normalize`: packed [size, size] to f32 [3, size, size] at out_offset, each channel v
//   mapped through a 256-entry table (binding 2, f32 bits) that the host fills with the
//   processor's (v / 255 - 0.5) / 0.5: WGSL's division may be off by 2.5 ULP, a table is
//   exact on every driver. Bindings: 0 params, 1 src, 2 table, 4 out. One invocation per
//   pixel.

struct Params {
    in_w: u32,
    in_h: u32,
    out_w: u32,
    out_h: u32,
    // 1: resample along x (then out_h == in_h), 0: along y.
    horizontal: u32,
    src_stride: u32,
    ksize: u32,
    r_shift: u32,
    g_shift: u32,
    b_shift: u32,
    out_offset: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read> coeffs: array<i32>;
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

/// The three channels of source pixel (x, y), as integers.
fn channels(x: u32, y: u32) -> vec3<i32> {
    let w = src[y * p.src_stride + x];
    return vec3<i32>(
        i32((w >> p.r_shift) & 255u),
        i32((w >> p.g_shift) & 255u),
        i32((w >> p.b_shift) & 255u),
    );
}

/// Pillow's clip8: drop the fixed-point fraction, clamp to 0..=255.
fn clip8(v: vec3<i32>) -> vec3<u32> {
    return vec3<u32>(clamp(v >> vec3<u32>(PRECISION_BITS), vec3<i32>(0), vec3<i32>(255)));
}

@compute @workgroup_size(WG)
fn resample(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let g = flat_invocation(wid, nwg, li);
    if (g >= p.out_w * p.out_h) {
        return;
    }
    let x = g % p.out_w;
    let y = g / p.out_w;
    let i = select(y, x, p.horizontal == 1u);
    let out_n = select(p.out_h, p.out_w, p.horizontal == 1u);
    let first = u32(coeffs[2u * i]);
    let count = u32(coeffs[2u * i + 1u]);
    let k0 = 2u * out_n + i * p.ksize;
    var acc = vec3<i32>(1 << (PRECISION_BITS - 1u));
    for (var j = 0u; j < count; j++) {
        let k = coeffs[k0 + j];
        var c: vec3<i32>;
        if (p.horizontal == 1u) {
            c = channels(first + j, y);
        } else {
            c = channels(x, first + j);
        }
        acc += c * k;
    }
    let v = clip8(acc);
    dst[g] = v.x | (v.y << 8u) | (v.z << 16u);
}

@compute @workgroup_size(WG)
fn normalize(@builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let g = flat_invocation(wid, nwg, li);
    let plane = p.out_w * p.out_h;
    if (g >= plane) {
        return;
    }
    let c = channels(g % p.out_w, g / p.out_w);
    out[p.out_offset + g] = bitcast<f32>(coeffs[c.x]);
    out[p.out_offset + plane + g] = bitcast<f32>(coeffs[c.y]);
    out[p.out_offset + 2u * plane + g] = bitcast<f32>(coeffs[c.z]);
}
