// patch_embed: SigLIP's Conv2d(channels -> dim, kernel = stride = patch, no padding) plus bias,
// flattened to [n_patches, dim] in row-major patch order, plus the learned position embedding.
//
//   out[p, d] = b[d] + pos[p, d]
//             + sum_{c, ky, kx} W[d, c, ky, kx] * pixels[c, py * patch + ky, px * patch + kx]
//
// Bindings: 0 params, 1 pixels [channels, size, size], 2 W [dim, channels, patch, patch],
// 3 pos_b [n_patches + 1, dim]: the position embedding with the bias as its last row (four
// storage bindings, within the downlevel limit), 4 out [n_patches, dim]; all f32.
// One invocation per output; dispatch ceil(n_patches * dim / WG) workgroups via `Gpu::grid`.

struct Params {
    image_size: u32,
    patch_size: u32,
    channels: u32,
    dim: u32,
    grid: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pixels: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> pos_b: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn patch_embed(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let g = flat_invocation(wid, nwg, li);
    if (g >= p.grid * p.grid * p.dim) {
        return;
    }
    let d = g % p.dim;
    let patch_index = g / p.dim;
    let py = patch_index / p.grid;
    let px = patch_index % p.grid;
    var acc = pos_b[p.grid * p.grid * p.dim + d]; // the bias row
    for (var c = 0u; c < p.channels; c++) {
        for (var ky = 0u; ky < p.patch_size; ky++) {
            let w_row = ((d * p.channels + c) * p.patch_size + ky) * p.patch_size;
            let x_row = (c * p.image_size + py * p.patch_size + ky) * p.image_size + px * p.patch_size;
            for (var kx = 0u; kx < p.patch_size; kx++) {
                acc = fma(w[w_row + kx], pixels[x_row + kx], acc);
            }
        }
    }
    out[g] = acc + pos_b[g];
}
