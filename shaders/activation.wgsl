// activation: GELU with the tanh approximation (SigLIP's MLP), the gated form
// gelu_tanh(gate) * up (Gemma's MLP, written over `up` to save a buffer of rows x 16384), and
// Gemma 2's soft-cap c * tanh(x / c) of the final logits, in place.
//
//   gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
//
// Bindings: 0 params, 1 a [n] (x or gate), 3 out [n] (gelu_tanh: the result; gated: holds up on
// entry; softcap: the values to cap).
// One invocation per element; dispatch ceil(n / WG) workgroups through `Gpu::grid`.

struct Params {
    n: u32,
    cap: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn gelu_tanh(@builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let i = flat_invocation(wid, nwg, li);
    if (i < p.n) {
        out[i] = gelu_tanh_of(a[i]);
    }
}

@compute @workgroup_size(WG)
fn gelu_tanh_gated(@builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) li: u32) {
    let i = flat_invocation(wid, nwg, li);
    if (i < p.n) {
        out[i] = gelu_tanh_of(a[i]) * out[i];
    }
}

@compute @workgroup_size(WG)
fn softcap(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let i = flat_invocation(wid, nwg, li);
    if (i < p.n) {
        out[i] = p.cap * tanh_stable(out[i] / p.cap);
    }
}
