// gather: out[t] = table[ids[t]] * scale, for the ids that fall in this table chunk.
//
// The vocabulary table (257216 x 2048 for PaliGemma, over 1 GiB in 16 bits) is split into
// chunks that each fit one storage binding; the host dispatches once per chunk and each
// dispatch writes only the rows whose id lies in [row_start, row_start + row_count).
//
// Bindings: 0 params, 1 ids [n_tokens] u32, 2 table chunk [row_count, hidden] in W_DTYPE,
// 3 out [n_tokens, hidden] f32 (a quantized chunk's block scales follow its codes, at word
// `w_scales`). One invocation per output element; dispatch
// ceil(n_tokens * hidden / WG) workgroups through `Gpu::grid`.

struct Params {
    n_tokens: u32,
    hidden: u32,
    row_start: u32,
    row_count: u32,
    scale: f32,
    w_scales: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn gather(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let g = flat_invocation(wid, nwg, li);
    if (g >= p.n_tokens * p.hidden) {
        return;
    }
    let t = g / p.hidden;
    let d = g % p.hidden;
    let id = ids[t];
    if (id >= p.row_start && id - p.row_start < p.row_count) {
        out[g] = w_at((id - p.row_start) * p.hidden + d) * p.scale;
    }
}
