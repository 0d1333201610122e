// argmax: the index of the largest logit (greedy decoding), so the CPU reads back one u32 per
// token instead of the whole vocabulary. Ties go to the lowest index, as torch.argmax does.
//
// Bindings: 0 params, 1 x (n values from offset), 2 out (u32, written at out_index), 3 parts
// ([PARTS] (value bits, index) pairs).
// Two passes, since one workgroup cannot pull a 257216-logit row from memory fast (one
// multiprocessor's bandwidth: hundreds of microseconds on an H200):
// - `argmax_parts`: parts_of(n) workgroups (one per WG values, at most PARTS), each the best
//   of its contiguous slice of the row into parts[g] (index NONE for an empty slice).
//   Dispatch parts_of(n) workgroups.
// - `argmax`: one workgroup, the best of the parts_of(n) pairs into out[out_index]. Dispatch
//   1.
// Each reduces (value, index) pairs in workgroup memory, keeping the lower index on ties, so
// the two passes choose what one pass over the row would (`best.wgsl`, shared with sampling,
// whose perturbed argmax ends with this file's second pass).

struct Params {
    n: u32,
    offset: u32,
    out_index: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
@group(0) @binding(3) var<storage, read_write> parts: array<u32>;

@compute @workgroup_size(WG)
fn argmax_parts(@builtin(workgroup_id) wid: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let slice = (p.n + parts_of(p.n) - 1u) / parts_of(p.n);
    let end = min(p.n, (wid.x + 1u) * slice);
    var bv = -3.4e38;
    var bi = NONE;
    for (var i = wid.x * slice + li; i < end; i += WG) {
        let v = x[p.offset + i];
        if (v > bv || bi == NONE) {
            bv = v;
            bi = i;
        }
    }
    store_part(li, wid.x, bv, bi);
}

@compute @workgroup_size(WG)
fn argmax(@builtin(local_invocation_index) li: u32) {
    var bv = -3.4e38;
    var bi = NONE;
    for (var g = li; g < parts_of(p.n); g += WG) {
        let v = bitcast<f32>(parts[2u * g]);
        let i = parts[2u * g + 1u];
        if (beats(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
    reduce_best(li, bv, bi);
    if (li == 0u) {
        out[p.out_index] = best_i[0];
    }
}
