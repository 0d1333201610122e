//! `shaders/attention.wgsl`: multi-head attention with grouped KV heads over a GPU-resident KV
//! cache; bidirectional prefix then causal; optional soft-capping and sliding window (Gemma 2).

use super::{View, u32_of};
use crate::error::{Error, Result};
use crate::gpu::Recorder;
use crate::shaders::{Binding, Elem, Entry, Shader, shader};

/// Invocations per workgroup of the per-row and split kernels (one key per invocation per tile).
pub const WG: u32 = 64;
/// The largest head dimension the kernels handle (each invocation owns MAX_HEAD_DIM / WG
/// dimensions of the output).
pub const MAX_HEAD_DIM: u32 = 256;
/// `attention_blocked`: query rows per workgroup, invocations per row, keys per staged tile.
pub const BLOCK_ROWS: u32 = 16;
pub const ROW_LANES: u32 = 8;
pub const BLOCK_KEYS: u32 = 8;
/// The most bidirectional image blocks one attention call takes (Gemma 3: images per prompt).
pub const MAX_BLOCKS: usize = 16;
const _: () = assert!(MAX_HEAD_DIM.is_multiple_of(WG) && MAX_HEAD_DIM.is_multiple_of(ROW_LANES));

pub(crate) const SHADER: Shader = shader!(
    "attention",
    ["grid", "reduce", "math"],
    &[
        ("WG", WG),
        ("MAX_HEAD_DIM", MAX_HEAD_DIM),
        ("BLOCK_ROWS", BLOCK_ROWS),
        ("ROW_LANES", ROW_LANES),
        ("BLOCK_KEYS", BLOCK_KEYS),
        ("MAX_BLOCKS", MAX_BLOCKS as u32),
    ]
);

/// The attention problem: the queries and keys, the heads, the mask and the scores' scaling.
/// Where q, the cache and the output lie in their buffers is the [`View`]s' business
/// ([`attention`]); the CPU reference takes packed rows.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionParams {
    /// Number of query rows.
    pub q_rows: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    /// Number of valid keys (cache rows 0..kv_len).
    pub kv_len: u32,
    /// Cache position of query row 0.
    pub q_pos0: u32,
    /// Positions below this form one bidirectional block (PaliGemma's image + prompt); after
    /// it, causal.
    pub prefix_len: u32,
    /// Gemma 3's image blocks: bidirectional within each, causal around them.
    pub blocks: Blocks,
    /// Sliding window (0 = none): outside the prefix block a key is visible only if
    /// qpos < key + window.
    pub window: u32,
    /// Multiplier of q . k (head_dim^-0.5, or query_pre_attn_scalar^-0.5 for Gemma 2).
    pub scale: f32,
    /// Soft-cap c of the scores, c * tanh(s / c) (0 = none).
    pub softcap: f32,
}

impl AttentionParams {
    /// `q_rows` queries at cache positions `q_pos0..` over keys `0..kv_len`, with `n_heads`
    /// query heads sharing `n_kv_heads` KV heads of `head_dim`, scores scaled by
    /// head_dim^-0.5, and every key visible to every query (`prefix_len = kv_len`) until a
    /// caller sets the mask: the one constructor of the GPU path and the CPU reference.
    pub fn new(
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        q_rows: usize,
        q_pos0: usize,
        kv_len: usize,
    ) -> AttentionParams {
        AttentionParams {
            q_rows: q_rows as u32,
            n_heads: n_heads as u32,
            n_kv_heads: n_kv_heads as u32,
            head_dim: head_dim as u32,
            kv_len: kv_len as u32,
            q_pos0: q_pos0 as u32,
            prefix_len: kv_len as u32,
            blocks: Blocks::default(),
            window: 0,
            scale: 1.0 / (head_dim as f32).sqrt(),
            softcap: 0.0,
        }
    }

    fn check(&self) -> Result<()> {
        if self.head_dim == 0 || self.head_dim > MAX_HEAD_DIM {
            return Err(Error::invalid(format!(
                "attention head_dim {} is outside 1..={MAX_HEAD_DIM}",
                self.head_dim
            )));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(Error::invalid(format!(
                "{} query heads cannot share {} KV heads evenly",
                self.n_heads, self.n_kv_heads
            )));
        }
        Ok(())
    }

    /// Whether the query at cache position `qpos` sees the key at position `j` (the mask;
    /// see attention.wgsl for why it has this form).
    pub fn visible(&self, j: usize, qpos: usize) -> bool {
        let prefix = self.prefix_len as usize;
        let in_block = self.blocks.of(qpos).is_some_and(|b| b.contains(&j));
        j < self.kv_len as usize
            && ((j < prefix && qpos < prefix)
                || ((j <= qpos || in_block)
                    && (self.window == 0 || qpos < j + self.window as usize)))
    }
}

/// Gemma 3's bidirectional blocks, one per image: `[start, end)` cache positions, disjoint, at
/// most [`MAX_BLOCKS`]. A small copyable value, as the shader's uniform holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Blocks {
    n: usize,
    ranges: [(u32, u32); MAX_BLOCKS],
}

impl Blocks {
    /// The blocks `ranges`; more than [`MAX_BLOCKS`] is refused.
    pub fn new(ranges: &[std::ops::Range<usize>]) -> Result<Blocks> {
        if ranges.len() > MAX_BLOCKS {
            return Err(Error::invalid(format!(
                "{} images in one prompt; at most {MAX_BLOCKS} are supported",
                ranges.len()
            )));
        }
        let mut b = Blocks::default();
        for r in ranges {
            b.ranges[b.n] = (u32_of("block start", r.start)?, u32_of("block end", r.end)?);
            b.n += 1;
        }
        Ok(b)
    }

    /// The block holding position `pos`.
    pub fn of(&self, pos: usize) -> Option<std::ops::Range<usize>> {
        self.ranges[..self.n]
            .iter()
            .map(|&(s, e)| s as usize..e as usize)
            .find(|r| r.contains(&pos))
    }

    /// The blocks as the shader's uniform holds them: two pairs per vec4.
    fn packed(&self) -> [[u32; 4]; MAX_BLOCKS / 2] {
        let mut out = [[0; 4]; MAX_BLOCKS / 2];
        for (i, &(s, e)) in self.ranges[..self.n].iter().enumerate() {
            out[i / 2][(i % 2) * 2] = s;
            out[i / 2][(i % 2) * 2 + 1] = e;
        }
        out
    }
}

/// The problem and the operands' layouts as the shader reads them: mirrors `Params` in
/// attention.wgsl field for field (the size is checked against it by `tests/interfaces.rs`).
/// Offsets and strides are in f32 elements.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    q_rows: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    q_offset: u32,
    q_stride: u32,
    kv_stride: u32,
    kv_len: u32,
    q_pos0: u32,
    prefix_len: u32,
    window: u32,
    o_stride: u32,
    scale: f32,
    softcap: f32,
    /// Keys per workgroup in the split (decode) path.
    chunk: u32,
    o_offset: u32,
    n_blocks: u32,
    _pad: [u32; 3],
    blocks: [[u32; 4]; MAX_BLOCKS / 2],
}

impl Params {
    /// Checks the views against the problem (q and out `[q_rows, n_heads * head_dim]`, the
    /// caches `[kv_len, n_kv_heads * head_dim]` from row 0 at one stride, as the shader
    /// indexes them) and takes their layouts.
    fn new(p: &AttentionParams, q: &View, k: &View, v: &View, out: &View) -> Result<Params> {
        p.check()?;
        let (rows, keys) = (p.q_rows as usize, p.kv_len as usize);
        let width = (p.n_heads * p.head_dim) as usize;
        let kv_width = (p.n_kv_heads * p.head_dim) as usize;
        q.expect("attention queries", rows, width)?;
        out.expect("attention output", rows, width)?;
        k.expect("key cache", keys, kv_width)?;
        v.expect("value cache", keys, kv_width)?;
        if k.offset != 0 || v.offset != 0 || k.stride != v.stride {
            return Err(Error::invalid(format!(
                "the key and value caches must start at their buffers' first element and share \
                 a row stride; got offsets {} and {}, strides {} and {}",
                k.offset, v.offset, k.stride, v.stride
            )));
        }
        Ok(Params {
            q_rows: p.q_rows,
            n_heads: p.n_heads,
            n_kv_heads: p.n_kv_heads,
            head_dim: p.head_dim,
            q_offset: u32_of("query offset", q.offset)?,
            q_stride: u32_of("query stride", q.stride)?,
            kv_stride: u32_of("cache stride", k.stride)?,
            kv_len: p.kv_len,
            q_pos0: p.q_pos0,
            prefix_len: p.prefix_len,
            window: p.window,
            o_stride: u32_of("output stride", out.stride)?,
            scale: p.scale,
            softcap: p.softcap,
            chunk: 0,
            o_offset: u32_of("output offset", out.offset)?,
            n_blocks: p.blocks.n as u32,
            _pad: [0; 3],
            blocks: p.blocks.packed(),
        })
    }
}

const Q: Binding = Binding::read(1, "q", Elem::F32);
const K: Binding = Binding::read(2, "k", Elem::F32);
const V: Binding = Binding::read(3, "v", Elem::F32);
const OUT: Binding = Binding::read_write(4, "out", Elem::F32);
/// The split path's per-chunk results.
const PARTIAL: Binding = Binding::read_write(5, "partial", Elem::F32);

/// One workgroup per (row, head).
pub(crate) const ATTENTION: Entry = Entry {
    shader: &SHADER,
    name: "attention",
    params: size_of::<Params>(),
    bindings: &[Q, K, V, OUT],
};

/// One workgroup per (block of rows, head).
pub(crate) const ATTENTION_BLOCKED: Entry = Entry {
    shader: &SHADER,
    name: "attention_blocked",
    params: size_of::<Params>(),
    bindings: &[Q, K, V, OUT],
};

/// One workgroup per (head, chunk of keys), into `partial`.
pub(crate) const ATTENTION_SPLIT: Entry = Entry {
    shader: &SHADER,
    name: "attention_split",
    params: size_of::<Params>(),
    bindings: &[Q, K, V, PARTIAL],
};

/// One workgroup per head, merging the chunks into `out`.
pub(crate) const ATTENTION_SPLIT_COMBINE: Entry = Entry {
    shader: &SHADER,
    name: "attention_split_combine",
    params: size_of::<Params>(),
    bindings: &[OUT, PARTIAL],
};

pub(crate) const ENTRIES: &[&Entry] = &[
    &ATTENTION,
    &ATTENTION_BLOCKED,
    &ATTENTION_SPLIT,
    &ATTENTION_SPLIT_COMBINE,
];

/// Which entry points compute attention.
#[derive(Clone, Copy, Debug)]
pub enum AttentionKernel<'a> {
    /// One workgroup per (row, head) over all keys.
    PerRow,
    /// One workgroup per (block of BLOCK_ROWS rows, head), key tiles shared by the block: for
    /// many rows (prefill, vision).
    Blocked,
    /// One query row (decode), the keys split into chunks processed by separate workgroups and
    /// merged; `partial` holds [`partial_len`] f32 values.
    Split { partial: &'a wgpu::Buffer },
}

impl<'a> AttentionKernel<'a> {
    /// The blocked kernel for many rows, the split one for a single row.
    pub fn for_rows(q_rows: u32, partial: &'a wgpu::Buffer) -> Self {
        if q_rows > 1 {
            AttentionKernel::Blocked
        } else {
            AttentionKernel::Split { partial }
        }
    }
}

/// out = softmax(mask(softcap(q k^T * scale))) v for every (query row, head) of the problem
/// `p`: q and out hold `[q_rows, n_heads * head_dim]` rows, the caches `[kv_len, n_kv_heads *
/// head_dim]` rows (more may follow, unread) from their buffers' start at one stride.
pub fn attention(
    rec: &mut Recorder,
    kernel: AttentionKernel,
    q: View,
    k: View,
    v: View,
    out: View,
    p: &AttentionParams,
) -> Result<()> {
    let params = Params::new(p, &q, &k, &v, &out)?;
    let gpu = rec.gpu().clone();
    let qkvo = [q.buffer, k.buffer, v.buffer, out.buffer];
    match kernel {
        AttentionKernel::PerRow => {
            let groups = gpu.grid(p.q_rows * p.n_heads);
            rec.dispatch(&ATTENTION, &params, &qkvo, groups)
        }
        AttentionKernel::Blocked => {
            let groups = gpu.grid(p.q_rows.div_ceil(BLOCK_ROWS) * p.n_heads);
            rec.dispatch(&ATTENTION_BLOCKED, &params, &qkvo, groups)
        }
        AttentionKernel::Split { partial } => split(rec, params, qkvo, partial),
    }
}

/// The split path: the chunks' partial results, then their merge into out.
fn split(
    rec: &mut Recorder,
    p: Params,
    [q, k, v, out]: [&wgpu::Buffer; 4],
    partial: &wgpu::Buffer,
) -> Result<()> {
    if p.q_rows != 1 {
        return Err(Error::invalid(format!(
            "split attention takes one query row, not {}",
            p.q_rows
        )));
    }
    let (heads, kv_len) = (p.n_heads as usize, p.kv_len as usize);
    let chunk = split_chunk(kv_len, heads);
    let n_chunks = kv_len.div_ceil(chunk);
    let need = (heads * n_chunks * (p.head_dim as usize + 2) * 4) as u64;
    if partial.size() < need {
        return Err(Error::invalid(format!(
            "split attention needs {need} bytes of partial results, the buffer has {}",
            partial.size()
        )));
    }
    let p = Params {
        chunk: chunk as u32,
        ..p
    };
    let groups = rec.gpu().grid((heads * n_chunks) as u32);
    rec.dispatch(&ATTENTION_SPLIT, &p, &[q, k, v, partial], groups)?;
    let combine = &ATTENTION_SPLIT_COMBINE;
    rec.dispatch(combine, &p, &[out, partial], [heads as u32, 1, 1])
}

/// The smallest key chunk of the split path: one tile of the kernel.
const MIN_CHUNK: usize = WG as usize;

/// Keys per workgroup for a decode step over `kv_len` keys: about 256 workgroups in all, so a
/// long cache is spread over the whole GPU, in whole tiles.
pub fn split_chunk(kv_len: usize, n_heads: usize) -> usize {
    let tiles = (kv_len * n_heads).div_ceil(256 * MIN_CHUNK).max(1);
    tiles * MIN_CHUNK
}

/// f32 elements the split path's `partial` buffer needs for caches of up to `capacity` keys.
pub fn partial_len(n_heads: usize, head_dim: usize, capacity: usize) -> usize {
    n_heads * capacity.div_ceil(MIN_CHUNK).max(1) * (head_dim + 2)
}

/// CPU reference for [`attention`] on packed rows (q `[q_rows, n_heads * head_dim]`, k and v
/// `[kv_len, n_kv_heads * head_dim]`), f64 throughout: out `[q_rows, n_heads * head_dim]`.
pub fn attention_ref(q: &[f32], k: &[f32], v: &[f32], p: &AttentionParams) -> Vec<f32> {
    let hd = p.head_dim as usize;
    let group = (p.n_heads / p.n_kv_heads) as usize;
    let rows = p.q_rows as usize;
    let (width, kv_width) = (p.n_heads as usize * hd, p.n_kv_heads as usize * hd);
    let mut out = vec![0f32; rows * width];
    for r in 0..rows {
        let qpos = p.q_pos0 as usize + r;
        for h in 0..p.n_heads as usize {
            let qv = &q[r * width + h * hd..][..hd];
            let kvb = (h / group) * hd;
            let scores: Vec<Option<f64>> = (0..p.kv_len as usize)
                .map(|j| {
                    p.visible(j, qpos).then(|| {
                        let kr = &k[j * kv_width + kvb..][..hd];
                        let dot: f64 = qv.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let s = dot * p.scale as f64;
                        if p.softcap > 0.0 {
                            p.softcap as f64 * (s / p.softcap as f64).tanh()
                        } else {
                            s
                        }
                    })
                })
                .collect();
            let mx = scores
                .iter()
                .flatten()
                .fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let e: Vec<f64> = scores
                .iter()
                .map(|s| s.map_or(0.0, |s| (s - mx).exp()))
                .collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hd {
                let acc: f64 = e
                    .iter()
                    .enumerate()
                    .map(|(j, &pj)| pj * v[j * kv_width + kvb + d] as f64)
                    .sum();
                out[r * width + h * hd + d] = if sum > 0.0 { (acc / sum) as f32 } else { 0.0 };
            }
        }
    }
    out
}
