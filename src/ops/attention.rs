//! `shaders/attention.wgsl`: multi-head attention with grouped KV heads over a GPU-resident KV
//! cache; bidirectional prefix then causal; optional soft-capping and sliding window (Gemma 2).

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
    ]
);

/// The attention problem; mirrors `Params` in attention.wgsl field for field (the size is
/// checked against it by `tests/interfaces.rs`). All offsets and strides are in f32 elements.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AttentionParams {
    /// Number of query rows.
    pub q_rows: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    /// Where query row 0 starts in `q`, and the distance between rows.
    pub q_offset: u32,
    pub q_stride: u32,
    /// Distance between KV-cache rows (n_kv_heads * head_dim for a packed cache).
    pub kv_stride: u32,
    /// Number of valid keys (cache rows 0..kv_len).
    pub kv_len: u32,
    /// Cache position of query row 0.
    pub q_pos0: u32,
    /// Positions below this form one bidirectional block (image + prompt); after it, causal.
    pub prefix_len: u32,
    /// Sliding window (0 = none): outside the prefix block a key is visible only if
    /// qpos < key + window.
    pub window: u32,
    /// Distance between output rows.
    pub o_stride: u32,
    /// Multiplier of q . k (head_dim^-0.5, or query_pre_attn_scalar^-0.5 for Gemma 2).
    pub scale: f32,
    /// Soft-cap c of the scores, c * tanh(s / c) (0 = none).
    pub softcap: f32,
    /// Keys per workgroup in the split (decode) path; set by [`attention`].
    pub chunk: u32,
    /// Where output row 0 starts in `out`.
    pub o_offset: u32,
}

impl AttentionParams {
    /// `q_rows` queries at cache positions `q_pos0..` over keys `0..kv_len`, with `n_heads`
    /// query heads sharing `n_kv_heads` KV heads of `head_dim`, everything packed (q and out
    /// rows of n_heads * head_dim, cache rows of n_kv_heads * head_dim), scores scaled by
    /// head_dim^-0.5, and every key visible to every query (`prefix_len = kv_len`) until a
    /// caller sets the mask: the one constructor of the GPU path and the CPU reference.
    pub fn packed(
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        q_rows: usize,
        q_pos0: usize,
        kv_len: usize,
    ) -> AttentionParams {
        let (qd, kvd) = ((n_heads * head_dim) as u32, (n_kv_heads * head_dim) as u32);
        AttentionParams {
            q_rows: q_rows as u32,
            n_heads: n_heads as u32,
            n_kv_heads: n_kv_heads as u32,
            head_dim: head_dim as u32,
            q_offset: 0,
            q_stride: qd,
            kv_stride: kvd,
            kv_len: kv_len as u32,
            q_pos0: q_pos0 as u32,
            prefix_len: kv_len as u32,
            window: 0,
            o_stride: qd,
            scale: 1.0 / (head_dim as f32).sqrt(),
            softcap: 0.0,
            chunk: 0,
            o_offset: 0,
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
        j < self.kv_len as usize
            && ((j < prefix && qpos < prefix)
                || (j <= qpos && (self.window == 0 || qpos < j + self.window as usize)))
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
    params: size_of::<AttentionParams>(),
    bindings: &[Q, K, V, OUT],
};

/// One workgroup per (block of rows, head).
pub(crate) const ATTENTION_BLOCKED: Entry = Entry {
    shader: &SHADER,
    name: "attention_blocked",
    params: size_of::<AttentionParams>(),
    bindings: &[Q, K, V, OUT],
};

/// One workgroup per (head, chunk of keys), into `partial`.
pub(crate) const ATTENTION_SPLIT: Entry = Entry {
    shader: &SHADER,
    name: "attention_split",
    params: size_of::<AttentionParams>(),
    bindings: &[Q, K, V, PARTIAL],
};

/// One workgroup per head, merging the chunks into `out`.
pub(crate) const ATTENTION_SPLIT_COMBINE: Entry = Entry {
    shader: &SHADER,
    name: "attention_split_combine",
    params: size_of::<AttentionParams>(),
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

/// out = softmax(mask(softcap(q k^T * scale))) v for every (query row, head), the layouts of
/// q, the cache and out given by `p`.
pub fn attention(
    rec: &mut Recorder,
    kernel: AttentionKernel,
    q: &wgpu::Buffer,
    k: &wgpu::Buffer,
    v: &wgpu::Buffer,
    out: &wgpu::Buffer,
    p: &AttentionParams,
) -> Result<()> {
    p.check()?;
    let gpu = rec.gpu().clone();
    match kernel {
        AttentionKernel::PerRow => {
            let groups = gpu.grid(p.q_rows * p.n_heads);
            rec.dispatch(&ATTENTION, p, &[q, k, v, out], groups)
        }
        AttentionKernel::Blocked => {
            let groups = gpu.grid(p.q_rows.div_ceil(BLOCK_ROWS) * p.n_heads);
            rec.dispatch(&ATTENTION_BLOCKED, p, &[q, k, v, out], groups)
        }
        AttentionKernel::Split { partial } => {
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
            let p = AttentionParams {
                chunk: chunk as u32,
                ..*p
            };
            let groups = gpu.grid((heads * n_chunks) as u32);
            rec.dispatch(&ATTENTION_SPLIT, &p, &[q, k, v, partial], groups)?;
            let combine = &ATTENTION_SPLIT_COMBINE;
            rec.dispatch(combine, &p, &[out, partial], [heads as u32, 1, 1])
        }
    }
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

/// CPU reference for [`attention`], over the same buffer layouts, f64 throughout.
pub fn attention_ref(q: &[f32], k: &[f32], v: &[f32], p: &AttentionParams) -> Vec<f32> {
    let hd = p.head_dim as usize;
    let group = (p.n_heads / p.n_kv_heads) as usize;
    let rows = p.q_rows as usize;
    let o0 = p.o_offset as usize;
    let mut out =
        vec![0f32; o0 + rows.saturating_sub(1) * p.o_stride as usize + p.n_heads as usize * hd];
    for r in 0..rows {
        let qpos = p.q_pos0 as usize + r;
        for h in 0..p.n_heads as usize {
            let qv = &q[p.q_offset as usize + r * p.q_stride as usize + h * hd..][..hd];
            let kvb = (h / group) * hd;
            let scores: Vec<Option<f64>> = (0..p.kv_len as usize)
                .map(|j| {
                    p.visible(j, qpos).then(|| {
                        let kr = &k[j * p.kv_stride as usize + kvb..][..hd];
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
                    .map(|(j, &pj)| pj * v[j * p.kv_stride as usize + kvb + d] as f64)
                    .sum();
                out[o0 + r * p.o_stride as usize + h * hd + d] =
                    if sum > 0.0 { (acc / sum) as f32 } else { 0.0 };
            }
        }
    }
    out
}
