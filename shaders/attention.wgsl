// attention: softmax(q k^T * scale [soft-capped] + mask) v, for H query heads over Hkv KV heads
// (MHA, GQA and MQA by indexing: query head h reads KV head h / (H / Hkv), never a copy), with
// keys and values read from KV-cache buffers that stay on the GPU.
//
// One workgroup of WG invocations per (query row, head). The query vector is staged in
// workgroup memory; keys are visited in tiles of WG (one score per invocation) with an online
// softmax (running max and sum, flash-attention style), so no [rows, keys] score matrix is
// ever materialised and any number of keys fits. Each invocation owns head dimensions
// lid, lid + WG, ... of the output, hence head_dim <= MAX_HEAD_DIM.
//
// Mask, for a query at cache position qpos = q_pos0 + row and a key at position j < kv_len:
//   visible = (j < prefix_len && qpos < prefix_len)                // PaliGemma's prefix: one
//                                                                   // bidirectional block
//          || ((j <= qpos || j in block(qpos))                      // causal, or Gemma 3's
//              && (window == 0 || qpos < j + window))               // image block; in the window
// where block(qpos) is the [start, end) of `blocks` holding qpos (none when it holds none).
// This is how transformers builds each model's mask. PaliGemma: block overlay OR causal [and
// sliding window], so the Gemma 2 window never hides prefix keys from prefix queries, while a
// generated token sees only the last `window` positions. Gemma 3: AND(window, OR(causal,
// image block)), so each image's tokens see each other (within the window) and the text stays
// causal. The vision tower passes prefix_len = kv_len. Scores are s = (q . k) * scale, then
// s = softcap * tanh(s / softcap) when softcap > 0 (Gemma 2), before the mask.
//
// Bindings: 0 params, 1 q (row r, head h at q_offset + r * q_stride + h * head_dim),
// 2 k cache [.., kv_stride], 3 v cache [.., kv_stride] (KV head g at g * head_dim),
// 4 out (row r, head h at o_offset + r * o_stride + h * head_dim), 5 partial results (split only).
//
// Entry points:
// - `attention`: one workgroup per (query row, head) over all keys. Dispatch q_rows * n_heads
//   workgroups through `Gpu::grid`.
// - `attention_blocked` (prefill, vision): one workgroup of BLOCK_ROWS * ROW_LANES per (block
//   of BLOCK_ROWS query rows, head); ROW_LANES invocations per row, each owning head dimensions
//   t, t + ROW_LANES, ...; tiles of BLOCK_KEYS keys are staged in workgroup memory once for
//   the whole block (1 / BLOCK_ROWS of the key traffic of `attention`), values are read
//   straight from the cache, and tiles past the block's causal horizon are skipped. 12 KiB of
//   workgroup memory at 16 x 8 x 8, under WebGPU's 16 KiB minimum.
//   Dispatch ceil(q_rows / BLOCK_ROWS) * n_heads workgroups through `Gpu::grid`.
// - `attention_split` + `attention_split_combine` (decode, one query row): a workgroup per (head,
//   chunk of `chunk` keys) writes its running max, sum and unnormalised output to `partial`
//   [n_heads, n_chunks, head_dim + 2]; then one workgroup per head merges the chunks. A long
//   cache is then read by n_heads * n_chunks workgroups instead of n_heads. Dispatch
//   n_heads * ceil(kv_len / chunk), then n_heads, workgroups.

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
    chunk: u32,
    o_offset: u32,
    n_blocks: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    // Gemma 3's image blocks, two [start, end) pairs per vec4 (MAX_BLOCKS in all).
    blocks: array<vec4<u32>, MAX_BLOCKS / 2u>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> partial: array<f32>;

const DIMS_PER_INVOCATION: u32 = MAX_HEAD_DIM / WG;
const NEG_BIG: f32 = -1.0e30;

var<workgroup> qs: array<f32, MAX_HEAD_DIM>;
var<workgroup> probs: array<f32, WG>;

/// Image block `b`'s [start, end) (two blocks per vec4 of the uniform).
fn block(b: u32) -> vec2<u32> {
    let pair = p.blocks[b / 2u];
    return select(pair.xy, pair.zw, b % 2u == 1u);
}

/// The [start, end) of the image block holding position `pos`; (0, 0) when none does.
fn block_of(pos: u32) -> vec2<u32> {
    for (var b = 0u; b < p.n_blocks; b++) {
        let r = block(b);
        if (pos >= r.x && pos < r.y) {
            return r;
        }
    }
    return vec2<u32>(0u, 0u);
}

/// Whether the query at `qpos`, in the block `blk` (block_of(qpos)), sees the key at `j`.
fn visible(j: u32, qpos: u32, blk: vec2<u32>) -> bool {
    if (j >= p.kv_len) {
        return false;
    }
    if (j < p.prefix_len && qpos < p.prefix_len) {
        return true;
    }
    let in_block = j >= blk.x && j < blk.y;
    return (j <= qpos || in_block) && (p.window == 0u || qpos < j + p.window);
}

// The online softmax state of one (query, head): running max, running sum of exp(s - m), and
// the unnormalised output dimensions this invocation owns.
var<private> m_run: f32;
var<private> l_run: f32;
var<private> acc: array<f32, DIMS_PER_INVOCATION>;

/// Stages query row `row` of head `h` in workgroup memory.
fn load_query(li: u32, row: u32, h: u32) {
    let q_base = p.q_offset + row * p.q_stride + h * p.head_dim;
    for (var d = li; d < p.head_dim; d += WG) {
        qs[d] = q[q_base + d];
    }
    workgroupBarrier();
}

// The two loops below read memory with no branch between the loads and their use, several
// loads ahead: a loop that waits for each load in turn (a branch per key, or a dependent chain
// the compiler does not unroll) leaves a GPU idle for a memory latency per element.

/// q . k for the staged query and the key at `k_base`, summed in d's order, 8 loads at a time.
fn dot_query(k_base: u32) -> f32 {
    var dot = 0.0;
    var d = 0u;
    for (; d + 8u <= p.head_dim; d += 8u) {
        let k0 = vec4<f32>(k[k_base + d], k[k_base + d + 1u], k[k_base + d + 2u], k[k_base + d + 3u]);
        let k1 = vec4<f32>(k[k_base + d + 4u], k[k_base + d + 5u], k[k_base + d + 6u],
                           k[k_base + d + 7u]);
        dot = fma(qs[d], k0.x, dot);
        dot = fma(qs[d + 1u], k0.y, dot);
        dot = fma(qs[d + 2u], k0.z, dot);
        dot = fma(qs[d + 3u], k0.w, dot);
        dot = fma(qs[d + 4u], k1.x, dot);
        dot = fma(qs[d + 5u], k1.y, dot);
        dot = fma(qs[d + 6u], k1.z, dot);
        dot = fma(qs[d + 7u], k1.w, dot);
    }
    for (; d < p.head_dim; d++) {
        dot = fma(qs[d], k[k_base + d], dot);
    }
    return dot;
}

/// a + sum over the tile's first n_keys keys jj of probs[jj] * v[at + jj * kv_stride], in jj's
/// order, 4 loads at a time. A hidden key (probability 0) adds exactly 0 whatever its value.
fn weigh_values(a0: f32, at: u32, n_keys: u32) -> f32 {
    var a = a0;
    var jj = 0u;
    for (; jj + 4u <= n_keys; jj += 4u) {
        let o = at + jj * p.kv_stride;
        let vs = vec4<f32>(v[o], v[o + p.kv_stride], v[o + 2u * p.kv_stride],
                           v[o + 3u * p.kv_stride]);
        let ps = vec4<f32>(probs[jj], probs[jj + 1u], probs[jj + 2u], probs[jj + 3u]);
        let vk = select(vec4<f32>(0.0), vs, ps != vec4<f32>(0.0));
        a = fma(ps.x, vk.x, a);
        a = fma(ps.y, vk.y, a);
        a = fma(ps.z, vk.z, a);
        a = fma(ps.w, vk.w, a);
    }
    for (; jj < n_keys; jj++) {
        let pj = probs[jj];
        a = fma(pj, select(0.0, v[at + jj * p.kv_stride], pj != 0.0), a);
    }
    return a;
}

/// Folds keys [t_begin, t_end) into the softmax state, a tile of WG keys at a time.
fn attend(li: u32, qpos: u32, kv_base: u32, t_begin: u32, t_end: u32) {
    let blk = block_of(qpos);
    for (var t0 = t_begin; t0 < t_end; t0 += WG) {
        let j = t0 + li;
        let ok = j < t_end && visible(j, qpos, blk);
        var s = NEG_BIG;
        if (ok) {
            let dot = dot_query(j * p.kv_stride + kv_base);
            s = dot * p.scale;
            if (p.softcap > 0.0) {
                s = p.softcap * tanh_stable(s / p.softcap);
            }
        }
        let m_new = max(m_run, workgroup_max(li, s));
        probs[li] = select(0.0, exp(s - m_new), ok);
        workgroupBarrier();
        let correction = exp(m_run - m_new);
        let n_keys = min(WG, t_end - t0);
        var tile_sum = 0.0;
        for (var jj = 0u; jj < n_keys; jj++) {
            tile_sum += probs[jj];
        }
        l_run = l_run * correction + tile_sum;
        for (var i = 0u; i < DIMS_PER_INVOCATION; i++) {
            let d = li + i * WG;
            if (d < p.head_dim) {
                acc[i] = weigh_values(acc[i] * correction, t0 * p.kv_stride + kv_base + d, n_keys);
            }
        }
        m_run = m_new;
        workgroupBarrier();
    }
}

// Workgroups past the last (row, head) or chunk (the grid's overhang) work on the first one and
// write nothing, so that every invocation reaches every barrier (no early return: FXC rejects
// barriers after a branch it cannot prove uniform).

@compute @workgroup_size(WG)
fn attention(@builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let g0 = flat_workgroup(wid, nwg);
    let live = g0 < p.q_rows * p.n_heads;
    let g = select(0u, g0, live);
    let row = g / p.n_heads;
    let h = g % p.n_heads;
    let kv_base = (h / (p.n_heads / p.n_kv_heads)) * p.head_dim;
    load_query(li, row, h);
    m_run = NEG_BIG;
    l_run = 0.0;
    attend(li, p.q_pos0 + row, kv_base, 0u, p.kv_len);
    let inv_l = select(0.0, 1.0 / l_run, l_run > 0.0);
    let o_base = p.o_offset + row * p.o_stride + h * p.head_dim;
    for (var i = 0u; i < DIMS_PER_INVOCATION; i++) {
        let d = li + i * WG;
        if (live && d < p.head_dim) {
            out[o_base + d] = acc[i] * inv_l;
        }
    }
}

@compute @workgroup_size(WG)
fn attention_split(@builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) li: u32) {
    let n_chunks = (p.kv_len + p.chunk - 1u) / p.chunk;
    let g0 = flat_workgroup(wid, nwg);
    let live = g0 < n_chunks * p.n_heads;
    let g = select(0u, g0, live);
    let h = g % p.n_heads;
    let c = g / p.n_heads;
    let kv_base = (h / (p.n_heads / p.n_kv_heads)) * p.head_dim;
    load_query(li, 0u, h);
    m_run = NEG_BIG;
    l_run = 0.0;
    attend(li, p.q_pos0, kv_base, c * p.chunk, min((c + 1u) * p.chunk, p.kv_len));
    let base = (h * n_chunks + c) * (p.head_dim + 2u);
    if (live && li == 0u) {
        partial[base] = m_run;
        partial[base + 1u] = l_run;
    }
    for (var i = 0u; i < DIMS_PER_INVOCATION; i++) {
        let d = li + i * WG;
        if (live && d < p.head_dim) {
            partial[base + 2u + d] = acc[i];
        }
    }
}

@compute @workgroup_size(WG)
fn attention_split_combine(@builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(local_invocation_index) li: u32) {
    let h = wid.x;
    let n_chunks = (p.kv_len + p.chunk - 1u) / p.chunk;
    let stride = p.head_dim + 2u;
    var m = NEG_BIG;
    for (var c = 0u; c < n_chunks; c++) {
        m = max(m, partial[(h * n_chunks + c) * stride]);
    }
    var l = 0.0;
    for (var c = 0u; c < n_chunks; c++) {
        let base = (h * n_chunks + c) * stride;
        l += partial[base + 1u] * exp(partial[base] - m);
    }
    let inv_l = select(0.0, 1.0 / l, l > 0.0);
    for (var d = li; d < p.head_dim; d += WG) {
        var o = 0.0;
        for (var c = 0u; c < n_chunks; c++) {
            let base = (h * n_chunks + c) * stride;
            o += partial[base + 2u + d] * exp(partial[base] - m);
        }
        out[p.o_offset + h * p.head_dim + d] = o * inv_l;
    }
}

const BQ: u32 = BLOCK_ROWS;
const TPR: u32 = ROW_LANES;
const BK: u32 = BLOCK_KEYS;
const BLOCK_WG: u32 = BLOCK_ROWS * ROW_LANES;
const DPT_B: u32 = MAX_HEAD_DIM / ROW_LANES; // head dimensions per invocation

var<workgroup> k_tile: array<f32, BLOCK_KEYS * MAX_HEAD_DIM>; // [BK][MAX_HEAD_DIM]
var<workgroup> s_part: array<f32, BLOCK_WG * BLOCK_KEYS>; // [BQ][TPR][BK] partial dot products

@compute @workgroup_size(BLOCK_WG)
fn attention_blocked(@builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) li: u32) {
    let n_blocks = (p.q_rows + BQ - 1u) / BQ;
    let g0 = flat_workgroup(wid, nwg);
    let live = g0 < n_blocks * p.n_heads;
    let g = select(0u, g0, live);
    let h = g % p.n_heads;
    let blk = g / p.n_heads;
    let r = li / TPR;
    let t = li % TPR;
    let row = blk * BQ + r;
    let row_ok = live && row < p.q_rows;
    let qpos = p.q_pos0 + row;
    let kv_base = (h / (p.n_heads / p.n_kv_heads)) * p.head_dim;
    var qv: array<f32, DPT_B>;
    var acc_b: array<f32, DPT_B>;
    if (row_ok) {
        let q_base = p.q_offset + row * p.q_stride + h * p.head_dim;
        for (var i = 0u; i < DPT_B; i++) {
            let d = t + TPR * i;
            if (d < p.head_dim) {
                qv[i] = q[q_base + d];
            }
        }
    }
    var m = NEG_BIG;
    var l = 0.0;
    // Keys past the last row's position, the prefix and the rows' image blocks are hidden from
    // the whole block of rows.
    let last_row = min(blk * BQ + BQ, p.q_rows) - 1u;
    var horizon = max(p.prefix_len, p.q_pos0 + last_row + 1u);
    for (var b = 0u; b < p.n_blocks; b++) {
        let r = block(b);
        if (r.x <= p.q_pos0 + last_row && r.y > p.q_pos0 + blk * BQ) {
            horizon = max(horizon, r.y);
        }
    }
    let t_end = min(p.kv_len, horizon);
    let row_block = block_of(qpos);
    for (var t0 = 0u; t0 < t_end; t0 += BK) {
        for (var e = li; e < BK * p.head_dim; e += BLOCK_WG) {
            let jj = e / p.head_dim;
            let d = e % p.head_dim;
            var kv = 0.0;
            if (t0 + jj < p.kv_len) {
                kv = k[(t0 + jj) * p.kv_stride + kv_base + d];
            }
            k_tile[jj * MAX_HEAD_DIM + d] = kv;
        }
        workgroupBarrier();
        for (var jj = 0u; jj < BK; jj++) {
            var part = 0.0;
            for (var i = 0u; i < DPT_B; i++) {
                let d = t + TPR * i;
                if (d < p.head_dim) {
                    part = fma(qv[i], k_tile[jj * MAX_HEAD_DIM + d], part);
                }
            }
            s_part[(r * TPR + t) * BK + jj] = part;
        }
        workgroupBarrier();
        // Every invocation of a row completes the same BK scores and softmax update.
        var sc: array<f32, BK>;
        var tile_max = NEG_BIG;
        for (var jj = 0u; jj < BK; jj++) {
            var dot = 0.0;
            for (var tt = 0u; tt < TPR; tt++) {
                dot += s_part[(r * TPR + tt) * BK + jj];
            }
            var s = dot * p.scale;
            if (p.softcap > 0.0) {
                s = p.softcap * tanh_stable(s / p.softcap);
            }
            sc[jj] = select(NEG_BIG, s, row_ok && visible(t0 + jj, qpos, row_block));
            tile_max = max(tile_max, sc[jj]);
        }
        let m_new = max(m, tile_max);
        let correction = exp(m - m_new);
        var pj: array<f32, BK>;
        var tile_sum = 0.0;
        for (var jj = 0u; jj < BK; jj++) {
            pj[jj] = select(0.0, exp(sc[jj] - m_new), sc[jj] > NEG_BIG);
            tile_sum += pj[jj];
        }
        l = l * correction + tile_sum;
        for (var i = 0u; i < DPT_B; i++) {
            let d = t + TPR * i;
            if (d < p.head_dim) {
                var a = acc_b[i] * correction;
                for (var jj = 0u; jj < BK; jj++) {
                    // No branch: the BK loads can all be in flight (see weigh_values).
                    let vj = v[(t0 + jj) * p.kv_stride + kv_base + d];
                    a = fma(pj[jj], select(0.0, vj, pj[jj] != 0.0), a);
                }
                acc_b[i] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    if (row_ok) {
        let inv_l = select(0.0, 1.0 / l, l > 0.0);
        let o_base = p.o_offset + row * p.o_stride + h * p.head_dim;
        for (var i = 0u; i < DPT_B; i++) {
            let d = t + TPR * i;
            if (d < p.head_dim) {
                out[o_base + d] = acc_b[i] * inv_l;
            }
        }
    }
}
