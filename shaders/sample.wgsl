// sample: draws the next token from softmax(logits / T) restricted to top-k and top-p, on the
// GPU, so the host reads back one u32 per token rather than a vocabulary of probabilities.
//
// The draw is the Gumbel-max trick: argmax_i l_i / T + G_i (here argmax_i l_i + T G_i, the
// same token), the G_i independent Gumbel(0, 1) variables, is distributed as softmax(l / T)
// over the tokens i ranges over.
// G_i = -log(-log u_i), u_i uniform from a counter-based hash of (seed, counter, i): no RNG
// state lives on the GPU, and a sequence's draw depends only on its seed and the position it
// chooses.
//
// top-k and top-p keep the tokens whose logit is at least a threshold t: for top-k the k-th
// largest logit, for top-p the largest t whose tokens' mass reaches top_p times the mass of
// the top-k set. Tokens tied with the threshold are all kept (as transformers' top-k keeps
// them). Finding t takes two passes, run only when top-k or top-p applies (`filtered`):
// - `sample_sort`: each workgroup sorts a SLICE of the row by logit, descending (bitonic, in
//   workgroup memory), and writes the sorted keys and the running sums of exp((l - m_s) / T)
//   down the slice, m_s its largest logit. Dispatch `slices` = ceil(n / SLICE).
// - `sample_threshold`: one workgroup bisects over logit keys; at each probe every invocation
//   counts (binary search) and weighs (the running sum there, rescaled to the row's largest
//   logit) its slices' tokens at or above the probe. Dispatch 1.
// Then `sample_parts` (parts_of(n) workgroups, as argmax's first pass) writes each slice's best perturbed score over the
// kept tokens as argmax's parts, and argmax.wgsl's second pass writes the drawn id (NONE when
// no logit is finite: those are never drawn).
//
// Bindings: 0 params, 1 x (n logits from offset), 2 parts ([PARTS] (value bits, index) pairs),
// 3 scratch (u32 words: the sorted keys [slices * SLICE], their running sums as f32 bits
// [slices * SLICE], per slice (largest key, finite count) [slices * 2], then the threshold
// key).

struct Params {
    n: u32,
    offset: u32,
    top_k: u32,
    slices: u32,
    inv_t: f32,
    top_p: f32,
    seed_lo: u32,
    seed_hi: u32,
    counter: u32,
    filtered: u32,
    temperature: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> parts: array<u32>;
@group(0) @binding(3) var<storage, read_write> scratch: array<u32>;

/// Whether v is finite (a bit test: compilers may fold `v == v`).
fn finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

/// A u32 ordered as the finite f32 it encodes (-0 as +0); never 0, which marks no token.
fn key_of(v: f32) -> u32 {
    var b = bitcast<u32>(v);
    if (b == 0x80000000u) {
        b = 0u;
    }
    if ((b & 0x80000000u) != 0u) {
        return ~b;
    }
    return b | 0x80000000u;
}

fn value_of(k: u32) -> f32 {
    if ((k & 0x80000000u) != 0u) {
        return bitcast<f32>(k & 0x7fffffffu);
    }
    return bitcast<f32>(~k);
}

fn sums_at() -> u32 {
    return p.slices * SLICE;
}

/// Where slice s's (largest key, finite count) pair is.
fn info_at(s: u32) -> u32 {
    return 2u * p.slices * SLICE + 2u * s;
}

/// Where the threshold key is.
fn state_at() -> u32 {
    return info_at(p.slices);
}

var<workgroup> keys: array<u32, SLICE>;
var<workgroup> sums: array<f32, SLICE>;
var<workgroup> finite_count: atomic<u32>;

@compute @workgroup_size(WG)
fn sample_sort(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let base = wid.x * SLICE;
    if (li == 0u) {
        atomicStore(&finite_count, 0u);
    }
    workgroupBarrier();
    var mine = 0u;
    for (var j = li; j < SLICE; j += WG) {
        var k = 0u;
        if (base + j < p.n) {
            let v = x[p.offset + base + j];
            if (finite(v)) {
                k = key_of(v);
                mine += 1u;
            }
        }
        keys[j] = k;
    }
    atomicAdd(&finite_count, mine);
    // Bitonic sort, descending: blocks of `size` sorted in alternating directions, merged.
    for (var size = 2u; size <= SLICE; size <<= 1u) {
        for (var stride = size / 2u; stride > 0u; stride >>= 1u) {
            workgroupBarrier();
            for (var q = li; q < SLICE / 2u; q += WG) {
                let a = 2u * q - (q & (stride - 1u));
                let b = a + stride;
                let ka = keys[a];
                let kb = keys[b];
                if ((ka < kb) == ((a & size) == 0u)) {
                    keys[a] = kb;
                    keys[b] = ka;
                }
            }
        }
    }
    workgroupBarrier();
    let top = keys[0];
    for (var j = li; j < SLICE; j += WG) {
        var e = 0.0;
        if (keys[j] != 0u) {
            e = exp((value_of(keys[j]) - value_of(top)) * p.inv_t);
        }
        sums[j] = e;
    }
    // Inclusive running sums (Hillis-Steele: each element gains at most log2(SLICE) terms, so
    // its rounding error stays ~10 ulps); each step reads everything before anything changes.
    for (var d = 1u; d < SLICE; d <<= 1u) {
        workgroupBarrier();
        var add: array<f32, SLICE / WG>;
        for (var t = 0u; t < SLICE / WG; t++) {
            let j = li + t * WG;
            add[t] = 0.0;
            if (j >= d) {
                add[t] = sums[j - d];
            }
        }
        workgroupBarrier();
        for (var t = 0u; t < SLICE / WG; t++) {
            sums[li + t * WG] += add[t];
        }
    }
    workgroupBarrier();
    for (var j = li; j < SLICE; j += WG) {
        scratch[base + j] = keys[j];
        scratch[sums_at() + base + j] = bitcast<u32>(sums[j]);
    }
    if (li == 0u) {
        scratch[info_at(wid.x)] = top;
        scratch[info_at(wid.x) + 1u] = atomicLoad(&finite_count);
    }
}

/// Tokens at or above a key: how many, and their mass relative to the row's largest logit.
struct Tally {
    count: u32,
    mass: f32,
}

var<workgroup> red_count: array<u32, WG>;
var<workgroup> red_mass: array<f32, WG>;
var<workgroup> total: Tally;

/// Slice s's tokens with a key of at least t, m the row's largest logit.
fn slice_tally(s: u32, t: u32, m: f32) -> Tally {
    var lo = 0u;
    var hi = scratch[info_at(s) + 1u];
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        if (scratch[s * SLICE + mid] >= t) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    if (lo == 0u) {
        return Tally(0u, 0.0);
    }
    let scale = exp((value_of(scratch[info_at(s)]) - m) * p.inv_t);
    return Tally(lo, bitcast<f32>(scratch[sums_at() + s * SLICE + lo - 1u]) * scale);
}

/// The row's tokens with a key of at least t: the same, uniform, value in every invocation
/// (all must call it). Summed in a fixed order, so the mass never grows as t does.
fn row_tally(li: u32, t: u32, m: f32) -> Tally {
    var c = 0u;
    var w = 0.0;
    for (var s = li; s < p.slices; s += WG) {
        let part = slice_tally(s, t, m);
        c += part.count;
        w += part.mass;
    }
    red_count[li] = c;
    red_mass[li] = w;
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (li < h) {
            red_count[li] += red_count[li + h];
            red_mass[li] += red_mass[li + h];
        }
    }
    if (li == 0u) {
        total = Tally(red_count[0], red_mass[0]);
    }
    return workgroupUniformLoad(&total);
}

/// The largest key in [lo, hi] whose tally reaches `count` tokens (or, `by_mass`, `mass`);
/// `lo`'s must.
fn bisect(li: u32, lo0: u32, hi0: u32, m: f32, count: u32, mass: f32, by_mass: bool) -> u32 {
    var lo = lo0;
    var hi = hi0;
    while (lo < hi) {
        let mid = lo + (hi - lo + 1u) / 2u;
        let at = row_tally(li, mid, m);
        if (select(at.count >= count, at.mass >= mass, by_mass)) {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    return lo;
}

var<workgroup> head: vec2<u32>;

@compute @workgroup_size(WG)
fn sample_threshold(@builtin(local_invocation_index) li: u32) {
    // The row's largest key and how many logits are finite.
    var top = 0u;
    var n = 0u;
    for (var s = li; s < p.slices; s += WG) {
        top = max(top, scratch[info_at(s)]);
        n += scratch[info_at(s) + 1u];
    }
    red_count[li] = top;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if (li < h) {
            red_count[li] = max(red_count[li], red_count[li + h]);
        }
        workgroupBarrier();
    }
    top = red_count[0];
    workgroupBarrier();
    red_count[li] = n;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if (li < h) {
            red_count[li] += red_count[li + h];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        head = vec2(top, red_count[0]);
    }
    let row = workgroupUniformLoad(&head);
    if (row.y == 0u) {
        if (li == 0u) {
            scratch[state_at()] = NONE;
        }
        return;
    }
    let m = value_of(row.x);
    // Every finite logit's key is at least 1.
    var t = 1u;
    if (p.top_k > 0u && p.top_k < row.y) {
        t = bisect(li, 1u, row.x, m, p.top_k, 0.0, false);
    }
    if (p.top_p < 1.0) {
        let kept = row_tally(li, t, m).mass;
        t = bisect(li, t, row.x, m, 0u, p.top_p * kept, true);
    }
    if (li == 0u) {
        scratch[state_at()] = t;
    }
}

/// A 32-bit integer hash (PCG's output permutation over an LCG step): a bijection whose output
/// bits pass for independent uniform bits.
fn hash(v: u32) -> u32 {
    let s = v * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}

/// Gumbel(0, 1) noise for token i of the draw `stream`: -log E, E = -log(1 - x) an
/// Exp(1) variable, x uniform in (0, 1). The tokens that win by a large G are those with a
/// small E, so E is computed with relative precision there: from all 32 bits of the hash
/// (x down to 2^-33), and by its series for small x, where 1 - x would lose x's digits and a
/// fast log's absolute error (2^-21 near 1, as WGSL allows) would swamp E.
fn gumbel(stream: u32, i: u32) -> f32 {
    let h = hash(hash(i ^ stream) + stream);
    let x = min((f32(h) + 0.5) * (1.0 / 4294967296.0), 1.0 - 1.0 / 16777216.0);
    var e = -log(1.0 - x);
    if (x < 0.0625) {
        e = x * (1.0 + x * (0.5 + x * (1.0 / 3.0 + x * 0.25)));
    }
    return -log(e);
}

@compute @workgroup_size(WG)
fn sample_parts(@builtin(workgroup_id) wid: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    var t = 1u;
    if (p.filtered != 0u) {
        t = scratch[state_at()];
    }
    let stream = hash(p.counter ^ hash(p.seed_lo ^ hash(p.seed_hi)));
    let slice = (p.n + parts_of(p.n) - 1u) / parts_of(p.n);
    let end = min(p.n, (wid.x + 1u) * slice);
    var bv = -3.4e38;
    var bi = NONE;
    for (var i = wid.x * slice + li; i < end; i += WG) {
        let v = x[p.offset + i];
        if (finite(v) && key_of(v) >= t) {
            // argmax v / T + G, scaled by T: no overflow however small T is.
            let score = v + p.temperature * gumbel(stream, i);
            if (score > bv || bi == NONE) {
                bv = score;
                bi = i;
            }
        }
    }
    store_part(li, wid.x, bv, bi);
}
