//! `shaders/attention.wgsl`: multi-head attention with grouped KV heads over a GPU-resident KV
//! cache; bidirectional prefix then causal; optional soft-capping and sliding window (Gemma 2).

use crate::error::{Error, Result};
use crate::gpu::{Recorder, bind};
use crate::shaders::ATTENTION;

/// The attention problem; mirrors `Params` in attention.wgsl field for field. All offsets and
/// strides are in f32 elements.
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
    /// Keys per workgroup in the split (decode) path; set by [`attention_split`].
    pub chunk: u32,
    pub _pad: u32,
}
const _: () = assert!(std::mem::size_of::<AttentionParams>() == 64);

/// The largest head dimension the kernel handles (each of 64 invocations owns 4 dimensions).
pub const MAX_HEAD_DIM: usize = 256;

impl AttentionParams {
    fn check(&self) -> Result<()> {
        if self.head_dim == 0 || self.head_dim as usize > MAX_HEAD_DIM {
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

/// Which entry point computes attention over many query rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// One workgroup per (row, head).
    PerRow,
    /// One workgroup per (block of 16 rows, head), key tiles shared by the block.
    Blocked,
}

/// out = softmax(mask(softcap(q k^T * scale))) v for every (query row, head): the blocked
/// kernel for many rows, the per-row one for a single row.
pub fn attention(
    rec: &mut Recorder,
    q: &wgpu::Buffer,
    k: &wgpu::Buffer,
    v: &wgpu::Buffer,
    out: &wgpu::Buffer,
    params: &AttentionParams,
) -> Result<()> {
    let kernel = if params.q_rows > 1 {
        AttentionKernel::Blocked
    } else {
        AttentionKernel::PerRow
    };
    attention_with(rec, kernel, q, k, v, out, params)
}

/// [`attention`] with an explicit kernel (tests run both).
pub fn attention_with(
    rec: &mut Recorder,
    kernel: AttentionKernel,
    q: &wgpu::Buffer,
    k: &wgpu::Buffer,
    v: &wgpu::Buffer,
    out: &wgpu::Buffer,
    params: &AttentionParams,
) -> Result<()> {
    params.check()?;
    let (entry, groups) = match kernel {
        AttentionKernel::PerRow => ("attention", params.q_rows * params.n_heads),
        AttentionKernel::Blocked => (
            "attention_blocked",
            params.q_rows.div_ceil(16) * params.n_heads,
        ),
    };
    let pipeline = rec.gpu().pipeline(&ATTENTION, entry, &[])?;
    let groups = rec.gpu().grid(groups);
    let binds = vec![bind(1, q), bind(2, k), bind(3, v), bind(4, out)];
    rec.dispatch(pipeline, params, binds, groups);
    Ok(())
}

/// The smallest key chunk of the split path: one tile of the kernel.
const MIN_CHUNK: usize = 64;

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

/// [`attention`] for one query row (decode), with the keys split into chunks processed by
/// separate workgroups and merged: `partial` holds [`partial_len`] f32 values.
pub fn attention_split(
    rec: &mut Recorder,
    q: &wgpu::Buffer,
    k: &wgpu::Buffer,
    v: &wgpu::Buffer,
    out: &wgpu::Buffer,
    partial: &wgpu::Buffer,
    params: &AttentionParams,
) -> Result<()> {
    params.check()?;
    if params.q_rows != 1 {
        return Err(Error::invalid(format!(
            "split attention takes one query row, not {}",
            params.q_rows
        )));
    }
    let (heads, kv_len) = (params.n_heads as usize, params.kv_len as usize);
    let chunk = split_chunk(kv_len, heads);
    let n_chunks = kv_len.div_ceil(chunk);
    let need = (heads * n_chunks * (params.head_dim as usize + 2) * 4) as u64;
    if partial.size() < need {
        return Err(Error::invalid(format!(
            "split attention needs {need} bytes of partial results, the buffer has {}",
            partial.size()
        )));
    }
    let p = AttentionParams {
        chunk: chunk as u32,
        ..*params
    };
    let gpu = rec.gpu().clone();
    let pipeline = gpu.pipeline(&ATTENTION, "attention_partial", &[])?;
    let binds = vec![bind(1, q), bind(2, k), bind(3, v), bind(5, partial)];
    rec.dispatch(pipeline, &p, binds, gpu.grid((heads * n_chunks) as u32));
    let pipeline = gpu.pipeline(&ATTENTION, "attention_combine", &[])?;
    rec.dispatch(
        pipeline,
        &p,
        vec![bind(4, out), bind(5, partial)],
        [heads as u32, 1, 1],
    );
    Ok(())
}

/// CPU reference for [`attention`], over the same buffer layouts, f64 throughout.
pub fn attention_ref(q: &[f32], k: &[f32], v: &[f32], p: &AttentionParams) -> Vec<f32> {
    let hd = p.head_dim as usize;
    let group = (p.n_heads / p.n_kv_heads) as usize;
    let rows = p.q_rows as usize;
    let mut out =
        vec![0f32; rows.saturating_sub(1) * p.o_stride as usize + p.n_heads as usize * hd];
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
                out[r * p.o_stride as usize + h * hd + d] =
                    if sum > 0.0 { (acc / sum) as f32 } else { 0.0 };
            }
        }
    }
    out
}
