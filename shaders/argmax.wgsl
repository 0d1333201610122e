// argmax: the index of the largest logit (greedy decoding), so the CPU reads back one u32 per
// token instead of the whole vocabulary. Ties go to the lowest index, as torch.argmax does.
//
// Bindings: 0 params, 1 x (n values from offset), 2 out (u32, written at out_index).
// One workgroup of WG invocations strides over the row, then reduces (value, index) pairs in
// workgroup memory. Dispatch 1 workgroup.

struct Params {
    n: u32,
    offset: u32,
    out_index: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

@compute @workgroup_size(WG)
fn argmax(@builtin(local_invocation_index) li: u32) {
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var i = li; i < p.n; i += WG) {
        let v = x[p.offset + i];
        if (v > bv || bi == 0xffffffffu) {
            bv = v;
            bi = i;
        }
    }
    best_v[li] = bv;
    best_i[li] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            let ov = best_v[li + s];
            let oi = best_i[li + s];
            let mine = best_i[li];
            if (oi != 0xffffffffu &&
                (mine == 0xffffffffu || ov > best_v[li] || (ov == best_v[li] && oi < mine))) {
                best_v[li] = ov;
                best_i[li] = oi;
            }
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        out[p.out_index] = best_i[0];
    }
}
