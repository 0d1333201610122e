// rope: rotary position embedding, half-split ("rotate_half") as in transformers' Gemma,
// applied in place to `rows` rows of `heads` vectors of `head_dim`.
//
// For each head vector with halves (a, b) and element i < head_dim / 2 at position pos:
//   a' = a cos - b sin,  b' = b cos + a sin,  angle = pos * theta^(-2i / head_dim).
// cos and sin come from tables the host builds once in f64 (`rope_tables`), so the result does
// not depend on a driver's cos/sin accuracy for large angles (positions reach 4100+).
//
// Bindings: 0 params, 1 cos [max_pos, head_dim / 2], 2 sin [same], 3 x (read-write); row r
// starts at offset + r * stride and has position pos0 + r (PaliGemma's positions are 1-based,
// so the host passes pos0 = 1 for the first prompt token).
// One invocation per (row, head, i); dispatch ceil(rows * heads * head_dim / 2 / WG)
// workgroups through `Gpu::grid`.
//
// `rope_at` (a batch of decoding sequences, each at its own position): row r has position
// positions[r] (binding 4) instead of pos0 + r.
//
// `rope_qk`: the queries (binding 3, `heads` per row) and the keys (binding 5, `k_heads` per
// row at k_offset + r * k_stride) of the same rows in one dispatch, one fewer per layer.
// Dispatch ceil(rows * (heads + k_heads) * head_dim / 2 / WG) workgroups.

struct Params {
    rows: u32,
    heads: u32,
    head_dim: u32,
    stride: u32,
    offset: u32,
    pos0: u32,
    k_heads: u32,
    k_stride: u32,
    k_offset: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> cos_t: array<f32>;
@group(0) @binding(2) var<storage, read> sin_t: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

@group(0) @binding(4) var<storage, read> positions: array<u32>;
@group(0) @binding(5) var<storage, read_write> k: array<f32>;

/// The pair (a, b) of element i, rotated by position `pos`'s angle.
fn rotated(a: f32, b: f32, i: u32, pos: u32) -> vec2<f32> {
    let t = pos * (p.head_dim / 2u) + i;
    let c = cos_t[t];
    let s = sin_t[t];
    return vec2<f32>(a * c - b * s, b * c + a * s);
}

/// Rotates element i of head h of row r of x, at position `pos`.
fn rotate(r: u32, h: u32, i: u32, pos: u32) {
    let half = p.head_dim / 2u;
    let o = p.offset + r * p.stride + h * p.head_dim + i;
    let v = rotated(x[o], x[o + half], i, pos);
    x[o] = v.x;
    x[o + half] = v.y;
}

@compute @workgroup_size(WG)
fn rope(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let half = p.head_dim / 2u;
    let g = flat_invocation(wid, nwg, li);
    if (g >= p.rows * p.heads * half) {
        return;
    }
    let r = g / (half * p.heads);
    rotate(r, (g / half) % p.heads, g % half, p.pos0 + r);
}

@compute @workgroup_size(WG)
fn rope_at(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let half = p.head_dim / 2u;
    let g = flat_invocation(wid, nwg, li);
    if (g >= p.rows * p.heads * half) {
        return;
    }
    let r = g / (half * p.heads);
    rotate(r, (g / half) % p.heads, g % half, positions[r]);
}

@compute @workgroup_size(WG)
fn rope_qk(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let half = p.head_dim / 2u;
    let heads = p.heads + p.k_heads;
    let g = flat_invocation(wid, nwg, li);
    if (g >= p.rows * heads * half) {
        return;
    }
    let r = g / (half * heads);
    let h = (g / half) % heads;
    let i = g % half;
    if (h < p.heads) {
        rotate(r, h, i, p.pos0 + r);
        return;
    }
    // A key: as `rotate`, in k.
    let o = p.k_offset + r * p.k_stride + (h - p.heads) * p.head_dim + i;
    let v = rotated(k[o], k[o + half], i, p.pos0 + r);
    k[o] = v.x;
    k[o + half] = v.y;
}
