// attention: softmax(q k^T * scale [soft-capped] + mask) v, for H query heads over Hkv KV heads
// (MHA, GQA and MQA by indexing: query head h reads KV head h / (H / Hkv), never a copy), with
// keys and values read from KV-cache buffers that stay on the GPU.
//
// One workgroup of 64 invocations per (query row, head). The query vector is staged in
// workgroup memory; keys are visited in tiles of 64 (one score per invocation) with an online
// softmax (running max and sum, flash-attention style), so no [rows, keys] score matrix is
// ever materialised and any number of keys fits. Each invocation owns head dimensions
// lid, lid + 64, lid + 128, lid + 192 of the output, hence head_dim <= 256.
//
// Mask, for a query at cache position qpos = q_pos0 + row and a key at position j < kv_len:
//   visible = (j < prefix_len && qpos < prefix_len)            // the prefix is one
//                                                               // bidirectional block
//          || (j <= qpos && (window == 0 || qpos < j + window)) // causal, in the window
// as transformers builds it for PaliGemma (block overlay OR causal [and sliding window]): the
// Gemma 2 sliding window never hides prefix keys from prefix queries, but a generated token
// sees only the last `window` positions. The vision tower passes prefix_len = kv_len. Scores are s = (q . k) * scale, then
// s = softcap * tanh(s / softcap) when softcap > 0 (Gemma 2), before the mask.
//
// Bindings: 0 params, 1 q (row r, head h at q_offset + r * q_stride + h * head_dim),
// 2 k cache [.., kv_stride], 3 v cache [.., kv_stride] (KV head g at g * head_dim),
// 4 out (row r, head h at r * o_stride + h * head_dim).
// Dispatch q_rows * n_heads workgroups through `Gpu::grid`.

struct Params {
    q_rows: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    q_offset: u32,
    q_stride: u32,
    kv_stride: u32,
    kv_len: u32,
    q_pos0: u32,
    prefix_len: u32,
    window: u32,
    o_stride: u32,
    scale: f32,
    softcap: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
const MAX_HEAD_DIM: u32 = 256u;
const DIMS_PER_INVOCATION: u32 = 4u; // MAX_HEAD_DIM / WG
const NEG_BIG: f32 = -1.0e30;

var<workgroup> qs: array<f32, MAX_HEAD_DIM>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> red: array<f32, WG>;

fn visible(j: u32, qpos: u32) -> bool {
    if (j >= p.kv_len) {
        return false;
    }
    if (j < p.prefix_len && qpos < p.prefix_len) {
        return true;
    }
    return j <= qpos && (p.window == 0u || qpos < j + p.window);
}

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.q_rows * p.n_heads) {
        return;
    }
    let row = g / p.n_heads;
    let h = g % p.n_heads;
    let kv_base = (h / (p.n_heads / p.n_kv_heads)) * p.head_dim;
    let qpos = p.q_pos0 + row;
    let q_base = p.q_offset + row * p.q_stride + h * p.head_dim;
    for (var d = li; d < p.head_dim; d += WG) {
        qs[d] = q[q_base + d];
    }
    workgroupBarrier();

    var m = NEG_BIG; // running max of the scores seen so far
    var l = 0.0; // running sum of exp(score - m)
    var acc: array<f32, DIMS_PER_INVOCATION>;
    for (var t0 = 0u; t0 < p.kv_len; t0 += WG) {
        let j = t0 + li;
        let ok = visible(j, qpos);
        var s = NEG_BIG;
        if (ok) {
            let k_base = j * p.kv_stride + kv_base;
            var dot = 0.0;
            for (var d = 0u; d < p.head_dim; d++) {
                dot = fma(qs[d], k[k_base + d], dot);
            }
            s = dot * p.scale;
            if (p.softcap > 0.0) {
                s = p.softcap * tanh_stable(s / p.softcap);
            }
        }
        red[li] = s;
        workgroupBarrier();
        for (var r = WG / 2u; r > 0u; r >>= 1u) {
            if (li < r) {
                red[li] = max(red[li], red[li + r]);
            }
            workgroupBarrier();
        }
        let m_new = max(m, red[0]);
        probs[li] = select(0.0, exp(s - m_new), ok);
        workgroupBarrier();
        let correction = exp(m - m_new);
        let n_keys = min(WG, p.kv_len - t0);
        var tile_sum = 0.0;
        for (var jj = 0u; jj < n_keys; jj++) {
            tile_sum += probs[jj];
        }
        l = l * correction + tile_sum;
        for (var i = 0u; i < DIMS_PER_INVOCATION; i++) {
            let d = li + i * WG;
            if (d < p.head_dim) {
                var a = acc[i] * correction;
                for (var jj = 0u; jj < n_keys; jj++) {
                    let pj = probs[jj];
                    if (pj != 0.0) {
                        a = fma(pj, v[(t0 + jj) * p.kv_stride + kv_base + d], a);
                    }
                }
                acc[i] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    let inv_l = select(0.0, 1.0 / l, l > 0.0);
    let o_base = row * p.o_stride + h * p.head_dim;
    for (var i = 0u; i < DIMS_PER_INVOCATION; i++) {
        let d = li + i * WG;
        if (d < p.head_dim) {
            out[o_base + d] = acc[i] * inv_l;
        }
    }
}
