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

var<workgroup> xs: array<f32, TILE * TILE_K>; // [TILE rows of x][TILE_K]
var<workgroup> ws: array<f32, TILE * TILE_K>; // [TILE rows of W][TILE_K]

@compute @workgroup_size(TILE / 4u, TILE / 4u)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        for (var e = li; e < TILE * TILE_K; e += WG) {
            let r = e / TILE_K;
            let c = k0 + e % TILE_K;
            var xv = 0.0;
            if (row0 + r < p.m && c < p.k) {
                xv = x[p.x_offset + (row0 + r) * p.x_stride + c];
            }
            xs[e] = xv;
            var wv = 0.0;
            if (col0 + r < p.n && c < p.k) {
                wv = w_at((col0 + r) * p.k + c);
            }
            ws[e] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            var a: array<f32, 4>;
            var bw: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = xs[(lid.y * 4u + i) * TILE_K + kk];
                bw[i] = ws[(lid.x * 4u + i) * TILE_K + kk];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(a[i], bw[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + lid.x * 4u + j;
            if (r < p.m && c < p.n) {
                store(c, p.y_offset + r * p.y_stride + c, acc[i * 4u + j]);
            }
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
        for (var j = lane; j < n_vec; j += LANES) {
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
        for (var j = lane; j < n_vec; j += LANES) {
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
