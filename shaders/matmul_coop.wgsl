// matmul_coop: y = x W^T (+ b), or y += x W^T, for many rows (the vision tower, the prefill) on
// cooperative matrices (tensor cores): f16 operands, f32 accumulation, 16x16x16 tiles. The same
// contract as linear.wgsl's `matmul` (linear_io.wgsl: params, bindings, `store`), any m, n, k
// and any weight format. Needs EXPERIMENTAL_COOPERATIVE_MATRIX and SHADER_F16; the host uses
// `matmul` without them, and for f32 weights, whose precision the f16 operands would not keep.
//
// Precision: x is rounded to f16 (clamped to f16's range) as it is staged; 16-bit weights are
// exact in f16 when f16 (bf16 and quantized weights round once more, to 11 significant bits);
// the products accumulate in f32. So each output is within about 2^-10 of sum |x w| of the f32
// result (src/ops/matmul_coop.rs states the tested bound, relative to max |reference|).
//
// Work: a workgroup computes a BM x BN block of y with SLOTS = (BM / 32) * (BN / 32) slots of 32
// invocations, each slot a 32 x 32 sub-block held in 2 x 2 accumulators. Per step of BK along k,
// the workgroup stages x's BM x BK tile and W's BN x BK tile in workgroup memory as f16,
// zero-filled past the edges (which is what makes any m, n, k correct), then every slot does
// 2 x 2 x BK / 16 multiply-adds from them.
//
// Subgroups: a cooperative matrix belongs to a subgroup. The host enables this kernel only where
// subgroups are at most 32 invocations and divide 32 (NVIDIA 32, Intel 8 to 32, lavapipe 8), so
// every subgroup lies within one slot. Where a subgroup is smaller than 32, the several
// subgroups of a slot compute the same sub-block and store the same values: wasted work on
// such devices, identical results.
//
// The accumulators leave through a 16 x 16 f32 scratch per slot, so that `store` can add the
// bias and the residual and skip what lies past the edges.
//
// Dispatch (ceil(n / BN), ceil(m / BM), 1) workgroups of COOP_WG = 32 * SLOTS invocations.

enable f16;
enable wgpu_cooperative_matrix;

const SLOTS_N: u32 = BN / 32u;
const F16_MAX: f32 = 65504.0;

var<workgroup> xs: array<f16, BM * BK>; // [BM rows of x][BK]
var<workgroup> ws: array<f16, BN * BK>; // [BN rows of W][BK]: W's rows, so ws is B column-major
var<workgroup> scratch: array<f32, COOP_WG * 8u>; // a 16 x 16 tile per slot

/// The accumulator `acc`, at rows r0.. and columns c0.. of y, through the slot's scratch.
fn write_tile(acc: coop_mat16x16<f32, C>, slot: u32, lane: u32, r0: u32, c0: u32) {
    // naga 30 wants coopStore's operands bound to names first (it fails to emit inline ones).
    let tile = acc;
    let at = slot * 256u;
    coopStoreT(tile, &scratch[at], 16u);
    workgroupBarrier();
    for (var e = lane; e < 256u; e += 32u) {
        let r = r0 + e / 16u;
        let c = c0 + e % 16u;
        if (r < p.m && c < p.n) {
            store(c, p.y_offset + r * p.y_stride + c, scratch[at + e]);
        }
    }
    workgroupBarrier();
}

/// W's rows col0.. at depths k0.. into ws (zero past the edges). 16-bit weights whose rows
/// start on 16 bytes (k a multiple of 8) come 8 to a 16-byte load, the rest one element at a
/// time through `w_at`.
fn stage_w(li: u32, col0: u32, k0: u32) {
    if ((W_DTYPE == 1u || W_DTYPE == 2u) && p.k % 8u == 0u && k0 + BK <= p.k) {
        for (var e = li; e < BN * BK / 8u; e += COOP_WG) {
            let r = col0 + e / (BK / 8u);
            let c = k0 + (e % (BK / 8u)) * 8u;
            var q = vec4<u32>(0u);
            if (r < p.n) {
                q = w[(r * p.k + c) / 8u];
            }
            let at = e * 8u;
            let ws0 = clamp(vec4<f32>(w_pair(q.x), w_pair(q.y)), vec4<f32>(-F16_MAX), vec4<f32>(F16_MAX));
            let ws1 = clamp(vec4<f32>(w_pair(q.z), w_pair(q.w)), vec4<f32>(-F16_MAX), vec4<f32>(F16_MAX));
            ws[at] = f16(ws0.x);
            ws[at + 1u] = f16(ws0.y);
            ws[at + 2u] = f16(ws0.z);
            ws[at + 3u] = f16(ws0.w);
            ws[at + 4u] = f16(ws1.x);
            ws[at + 5u] = f16(ws1.y);
            ws[at + 6u] = f16(ws1.z);
            ws[at + 7u] = f16(ws1.w);
        }
        return;
    }
    for (var e = li; e < BN * BK; e += COOP_WG) {
        let r = col0 + e / BK;
        let c = k0 + e % BK;
        var v = 0.0;
        if (r < p.n && c < p.k) {
            v = clamp(w_at(r * p.k + c), -F16_MAX, F16_MAX);
        }
        ws[e] = f16(v);
    }
}

@compute @workgroup_size(COOP_WG)
fn matmul_coop(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let slot = li / 32u;
    let lane = li % 32u;
    // The slot's sub-block: rows sr.. and columns sc.. within the block.
    let sr = (slot / SLOTS_N) * 32u;
    let sc = (slot % SLOTS_N) * 32u;
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var e = li; e < BM * BK; e += COOP_WG) {
            let r = row0 + e / BK;
            let c = k0 + e % BK;
            var v = 0.0;
            if (r < p.m && c < p.k) {
                v = clamp(x[p.x_offset + r * p.x_stride + c], -F16_MAX, F16_MAX);
            }
            xs[e] = f16(v);
        }
        stage_w(li, col0, k0);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += 16u) {
            // A: x rows, row-major with stride BK. B[k][n] = W[n][k]: ws read column-major.
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&xs[sr * BK + kk], BK);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&xs[(sr + 16u) * BK + kk], BK);
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&ws[sc * BK + kk], BK);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&ws[(sc + 16u) * BK + kk], BK);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
        }
        workgroupBarrier();
    }
    let r0 = row0 + sr;
    let c0 = col0 + sc;
    write_tile(c00, slot, lane, r0, c0);
    write_tile(c01, slot, lane, r0, c0 + 16u);
    write_tile(c10, slot, lane, r0 + 16u, c0);
    write_tile(c11, slot, lane, r0 + 16u, c0 + 16u);
}
