// linear: y = x W^T (+ b), or y += x W^T (+ b) to fold a residual connection into the
// projection that feeds it; the workhorse of every projection and of the logits.
//
// Params, bindings and `store` (bias, residual accumulate): linear_io.wgsl. x's and y's
// offsets and strides let one kernel write K/V straight into a KV-cache row, project only the
// last prompt row, or fill one vocabulary chunk of the logits.
//
// Entry points:
// - `matmul` (many rows, prefill, the vision tower; matmul_coop.wgsl where tensor cores are
//   available): a TILE x TILE output tile per workgroup of (TILE / 4)^2 = WG
//   invocations, each computing a 4x4 block; x and W tiles of depth TILE_K are staged in
//   workgroup memory. Dispatch (ceil(n / TILE), ceil(m / TILE), 1).
// - `gemv` (decode: up to GEMV_BATCH rows, one per sequence of a batch): GEMV_ROWS output
//   features per workgroup of WG invocations, LANES (= WG / GEMV_ROWS) lanes per feature
//   striding over k, each weight read once for all rows, then a tree reduction in workgroup
//   memory (reduce.wgsl). Each row's sums are formed exactly as with one row, so a sequence
//   decodes to the same bits alone or in a batch. Dispatch ceil(n / GEMV_ROWS) workgroups
//   through `Gpu::grid`.
// - `gemv_vec`: the same, each lane loading 16 bytes of W at a time (4 weights in f32, 8 in 16
//   bits, 16 in q8, 32 in q4), since decode is a stream over the weights. Needs every row to
//   start on a 16-byte boundary (k a multiple of 4, 8, or of a 32-weight block).
// - `gemv_gated`: Gemma's MLP input side in one pass, y = gelu_tanh(x W^T) * (x W2^T) with
//   W2 (the up projection) at binding 5; no bias, no accumulate. Same dispatch as `gemv_vec`.

// Both tiles are stored k-major ([TILE_K][TILE / 4 + 1] vec4s), so an invocation reads its 4
// rows of x and its 4 columns of W at depth kk as one 16-byte load each, and the 16 invocations
// of a row of the workgroup read 16 consecutive vec4s; the one vec4 of padding per depth keeps
// the staging stores, 16 depths by consecutive invocations, off a single bank. The 4x4 block
// lives in four vec4 accumulators: no array indexed at run time, which a GPU compiler may move
// out of registers into (slow) local memory.
const TILE_PITCH: u32 = TILE / 4u + 1u;
var<workgroup> xs: array<vec4<f32>, TILE_K * TILE_PITCH>; // [TILE_K][TILE rows of x / 4]
var<workgroup> ws: array<vec4<f32>, TILE_K * TILE_PITCH>; // [TILE_K][TILE rows of W / 4]

@compute @workgroup_size(TILE / 4u, TILE / 4u)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    var acc0 = vec4<f32>(0.0); // rows lid.y * 4 + 0..3, columns lid.x * 4 + 0..3
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        // Each invocation stages 4 consecutive rows at one depth c (TILE_K * TILE / 4 = WG
        // vec4s per tile): the 16 invocations of a depth read 64 rows' c-th elements.
        let c = k0 + li % TILE_K;
        let r = (li / TILE_K) * 4u;
        var xv = vec4<f32>(0.0);
        var wv = vec4<f32>(0.0);
        if (c < p.k) {
            for (var i = 0u; i < 4u; i++) {
                if (row0 + r + i < p.m) {
                    xv[i] = x[p.x_offset + (row0 + r + i) * p.x_stride + c];
                }
                if (col0 + r + i < p.n) {
                    wv[i] = w_at((col0 + r + i) * p.k + c);
                }
            }
        }
        xs[(li % TILE_K) * TILE_PITCH + r / 4u] = xv;
        ws[(li % TILE_K) * TILE_PITCH + r / 4u] = wv;
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a = xs[kk * TILE_PITCH + lid.y];
            let bw = ws[kk * TILE_PITCH + lid.x];
            acc0 = fma(vec4<f32>(a.x), bw, acc0);
            acc1 = fma(vec4<f32>(a.y), bw, acc1);
            acc2 = fma(vec4<f32>(a.z), bw, acc2);
            acc3 = fma(vec4<f32>(a.w), bw, acc3);
        }
        workgroupBarrier();
    }
    store_block_row(row0 + lid.y * 4u, col0 + lid.x * 4u, acc0);
    store_block_row(row0 + lid.y * 4u + 1u, col0 + lid.x * 4u, acc1);
    store_block_row(row0 + lid.y * 4u + 2u, col0 + lid.x * 4u, acc2);
    store_block_row(row0 + lid.y * 4u + 3u, col0 + lid.x * 4u, acc3);
}

/// Stores 4 consecutive outputs of row `r` from column `c`, those inside y.
fn store_block_row(r: u32, c: u32, v: vec4<f32>) {
    for (var j = 0u; j < 4u; j++) {
        if (r < p.m && c + j < p.n) {
            store(c + j, p.y_offset + r * p.y_stride + c + j, v[j]);
        }
    }
}

/// Rows per GEMV dispatch: a power of two <= GEMV_BATCH, at least p.m (the host picks the
/// variant). A constant loop bound, so each variant keeps its accumulators in registers, and
/// the one-row variant compiles to a plain GEMV.
override ROWS: u32 = 1u;

/// Reduces each row's partial sums across the LANES lanes of a feature and stores them.
fn store_rows(li: u32, lane: u32, feature: u32, acc: array<f32, GEMV_BATCH>) {
    for (var r = 0u; r < ROWS; r++) {
        let total = group_sum(li, acc[r], LANES);
        if (lane == 0u && feature < p.n && r < p.m) {
            store(feature, p.y_offset + r * p.y_stride + feature, total);
        }
    }
}

@compute @workgroup_size(WG)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row = flat_workgroup(wid, nwg) * GEMV_ROWS + li / LANES;
    let lane = li % LANES;
    var acc: array<f32, GEMV_BATCH>;
    if (row < p.n) {
        let base = row * p.k;
        for (var kk = lane; kk < p.k; kk += LANES) {
            let wv = w_at(base + kk);
            for (var r = 0u; r < ROWS; r++) {
                if (r < p.m) {
                    acc[r] = fma(x[p.x_offset + r * p.x_stride + kk], wv, acc[r]);
                }
            }
        }
    }
    store_rows(li, lane, row, acc);
}

/// The dot product of 16 bytes of weights `q` with x[xo..]: 4 weights in f32 or 8 in 16 bits.
fn dot_vec(q: vec4<u32>, xo: u32) -> f32 {
    let x0 = vec4<f32>(x[xo], x[xo + 1u], x[xo + 2u], x[xo + 3u]);
    if (W_DTYPE == 0u) {
        return dot(bitcast<vec4<f32>>(q), x0);
    }
    let x1 = vec4<f32>(x[xo + 4u], x[xo + 5u], x[xo + 6u], x[xo + 7u]);
    return dot(vec4<f32>(w_pair(q.x), w_pair(q.y)), x0)
         + dot(vec4<f32>(w_pair(q.z), w_pair(q.w)), x1);
}

/// The dot product of 16 bytes of quantized weights `q` (16 q8 codes: half a block; 32 q4
/// codes: a whole block) with x[xo..], given the block's (scale, min) `s`:
/// sum (code * scale + min) x = scale * sum code x + min * sum x.
fn dot_quant(q: vec4<u32>, xo: u32, s: vec2<f32>) -> f32 {
    var acc = 0.0;
    var xsum = 0.0;
    for (var t = 0u; t < 4u; t++) {
        if (W_DTYPE == 3u) {
            let word = q[t];
            let c = vec4<f32>(q8_of(word, 0u), q8_of(word, 1u), q8_of(word, 2u), q8_of(word, 3u));
            let o = xo + 4u * t;
            let xv = vec4<f32>(x[o], x[o + 1u], x[o + 2u], x[o + 3u]);
            acc += dot(c, xv);
            xsum += dot(xv, vec4<f32>(1.0)); // q8's min is 0 as written, but honour any
        } else {
            let word = q[t];
            let lo = vec4<f32>(q4_of(word, 0u), q4_of(word, 1u), q4_of(word, 2u), q4_of(word, 3u));
            let hi = vec4<f32>(q4_of(word, 4u), q4_of(word, 5u), q4_of(word, 6u), q4_of(word, 7u));
            let o = xo + 8u * t;
            let x0 = vec4<f32>(x[o], x[o + 1u], x[o + 2u], x[o + 3u]);
            let x1 = vec4<f32>(x[o + 4u], x[o + 5u], x[o + 6u], x[o + 7u]);
            acc += dot(lo, x0) + dot(hi, x1);
            xsum += dot(x0 + x1, vec4<f32>(1.0));
        }
    }
    return acc * s.x + xsum * s.y;
}

/// One step of a vectorised GEMV: 16 bytes of weights `q` (with their block's (scale, min)
/// word when quantized) dotted with x[xo..].
fn row_step(q: vec4<u32>, scales: u32, xo: u32) -> f32 {
    if (W_DTYPE >= 3u) {
        return dot_quant(q, xo, unpack2x16float(scales));
    }
    return dot_vec(q, xo);
}

/// The block (scale, min) word index of load j of row `row`, or 0 unquantized.
fn block_of(row: u32, j: u32) -> u32 {
    if (W_DTYPE >= 3u) {
        return (row * p.k + j * per_vec()) / QBLOCK;
    }
    return 0u;
}

@compute @workgroup_size(WG)
fn gemv_vec(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let row = flat_workgroup(wid, nwg) * GEMV_ROWS + li / LANES;
    let lane = li % LANES;
    var acc: array<f32, GEMV_BATCH>;
    if (row < p.n) {
        let n_vec = p.k / per_vec();
        let base = row * n_vec;
        // Four loads in flight per lane before the first is used: at 8 or 16 workgroups per
        // multiprocessor, one 16-byte load per lane is too few bytes in flight to reach HBM's
        // bandwidth. Each row still adds its terms in j's order, so the sums are the
        // one-load-at-a-time loop's, bit for bit.
        var j = lane;
        for (; j + 3u * LANES < n_vec; j += 4u * LANES) {
            let js = vec4<u32>(j, j + LANES, j + 2u * LANES, j + 3u * LANES);
            let q0 = w[base + js.x];
            let q1 = w[base + js.y];
            let q2 = w[base + js.z];
            let q3 = w[base + js.w];
            let s = vec4<u32>(w_word_at(p.w_scales + block_of(row, js.x)),
                              w_word_at(p.w_scales + block_of(row, js.y)),
                              w_word_at(p.w_scales + block_of(row, js.z)),
                              w_word_at(p.w_scales + block_of(row, js.w)));
            let xo = js * per_vec();
            for (var r = 0u; r < ROWS; r++) {
                if (r < p.m) {
                    let xr = p.x_offset + r * p.x_stride;
                    acc[r] += row_step(q0, s.x, xr + xo.x);
                    acc[r] += row_step(q1, s.y, xr + xo.y);
                    acc[r] += row_step(q2, s.z, xr + xo.z);
                    acc[r] += row_step(q3, s.w, xr + xo.w);
                }
            }
        }
        for (; j < n_vec; j += LANES) {
            let q = w[base + j];
            let scales = w_word_at(p.w_scales + block_of(row, j));
            for (var r = 0u; r < ROWS; r++) {
                if (r < p.m) {
                    acc[r] += row_step(q, scales, p.x_offset + r * p.x_stride + j * per_vec());
                }
            }
        }
    }
    store_rows(li, lane, row, acc);
}

@compute @workgroup_size(WG)
fn gemv_gated(@builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let row = flat_workgroup(wid, nwg) * GEMV_ROWS + li / LANES;
    let lane = li % LANES;
    var gate: array<f32, GEMV_BATCH>;
    var up: array<f32, GEMV_BATCH>;
    if (row < p.n) {
        let n_vec = p.k / per_vec();
        let base = row * n_vec;
        // Two steps per iteration, four 16-byte loads in flight (see gemv_vec), the terms
        // added in j's order.
        var j = lane;
        for (; j + LANES < n_vec; j += 2u * LANES) {
            let j1 = j + LANES;
            let q = w[base + j];
            let q2 = w2[base + j];
            let q_1 = w[base + j1];
            let q2_1 = w2[base + j1];
            let blk = vec2<u32>(block_of(row, j), block_of(row, j1));
            let s = vec2<u32>(w_word_at(p.w_scales + blk.x), w_word_at(p.w_scales + blk.y));
            let s2i = p.w2_scales + blk;
            let s2 = vec2<u32>(w2[s2i.x >> 2u][s2i.x & 3u], w2[s2i.y >> 2u][s2i.y & 3u]);
            for (var r = 0u; r < ROWS; r++) {
                if (r < p.m) {
                    let xo = p.x_offset + r * p.x_stride + j * per_vec();
                    let xo1 = p.x_offset + r * p.x_stride + j1 * per_vec();
                    gate[r] += row_step(q, s.x, xo);
                    up[r] += row_step(q2, s2.x, xo);
                    gate[r] += row_step(q_1, s.y, xo1);
                    up[r] += row_step(q2_1, s2.y, xo1);
                }
            }
        }
        for (; j < n_vec; j += LANES) {
            let blk = block_of(row, j);
            let q = w[base + j];
            let q2 = w2[base + j];
            let s = w_word_at(p.w_scales + blk);
            let s2i = p.w2_scales + blk;
            let s2 = w2[s2i >> 2u][s2i & 3u];
            for (var r = 0u; r < ROWS; r++) {
                if (r < p.m) {
                    let xo = p.x_offset + r * p.x_stride + j * per_vec();
                    gate[r] += row_step(q, s, xo);
                    up[r] += row_step(q2, s2, xo);
                }
            }
        }
    }
    for (var r = 0u; r < ROWS; r++) {
        let g = group_sum(li, gate[r], LANES);
        let u = group_sum(li, up[r], LANES);
        if (lane == 0u && row < p.n && r < p.m) {
            y[p.y_offset + r * p.y_stride + row] = gelu_tanh_of(g) * u;
        }
    }
}
