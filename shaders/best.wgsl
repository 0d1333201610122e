// Prelude prepended (by src/shaders.rs) to the shaders that pick a row's best (value, index)
// pair: argmax, and sampling's perturbed argmax. `WG` comes from the generated constants.

var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

/// An index that is no token: an empty slice's, or a row with no finite logit.
const NONE: u32 = 0xffffffffu;

/// The parts a row of n values is cut into for the first pass: one per WG values, at most
/// PARTS (the host's `argmax::parts_of` says the same).
fn parts_of(n: u32) -> u32 {
    return clamp((n + WG - 1u) / WG, 1u, PARTS);
}

/// Whether (v, i) beats the pair (bv, bi): greater, or equal at a lower index; NONE loses.
fn beats(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return i != NONE && (bi == NONE || v > bv || (v == bv && i < bi));
}

/// The workgroup's best of each invocation's (bv, bi), left in best_v[0], best_i[0]. Every
/// invocation must call it (it holds barriers).
fn reduce_best(li: u32, bv: f32, bi: u32) {
    best_v[li] = bv;
    best_i[li] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s && beats(best_v[li + s], best_i[li + s], best_v[li], best_i[li])) {
            best_v[li] = best_v[li + s];
            best_i[li] = best_i[li + s];
        }
        workgroupBarrier();
    }
}

/// Writes the workgroup's best pair as part `g` of `parts` ((value bits, index) pairs).
fn store_part(li: u32, g: u32, bv: f32, bi: u32) {
    reduce_best(li, bv, bi);
    if (li == 0u) {
        parts[2u * g] = bitcast<u32>(best_v[0]);
        parts[2u * g + 1u] = best_i[0];
    }
}
