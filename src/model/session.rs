//! A decoding [`Session`]: the KV cache and scratch buffers of one sequence, resident on the
//! GPU from prefill to the last token, and the decoder's forward pass over it.

use super::gemma::TextModel;
use crate::error::{Error, Result};
use crate::gpu::{DispatchCache, Gpu, Recorder};
use crate::ops::View;
use crate::ops::activation::softcap;
use crate::ops::argmax::argmax;
use crate::ops::attention::partial_len;
use crate::ops::gather::gather;
use crate::ops::linear::logits;
use crate::ops::rope::RopeTables;

/// One layer's KV cache: `[capacity, kv_heads * hd]` each, row t written at position t.
pub struct LayerCache {
    pub k: wgpu::Buffer,
    pub v: wgpu::Buffer,
}

impl LayerCache {
    /// The cache rows a pass writes its keys to.
    pub(crate) fn k_rows<'a>(&'a self, p: &Pass) -> View<'a> {
        View::new(&self.k, p.start + p.rows, p.kv_width).rows(p.start, p.rows)
    }
    /// The cache rows a pass writes its values to.
    pub(crate) fn v_rows<'a>(&'a self, p: &Pass) -> View<'a> {
        View::new(&self.v, p.start + p.rows, p.kv_width).rows(p.start, p.rows)
    }
}

/// Per-pass scratch buffers, sized for `rows` rows.
struct Scratch {
    rows: usize,
    /// Rows per MLP block: [mlp_rows, I] must fit one binding.
    mlp_rows: usize,
    x: wgpu::Buffer,    // [rows, H] residual stream
    h: wgpu::Buffer,    // [rows, H] normed
    q: wgpu::Buffer,    // [rows, heads * hd]
    a: wgpu::Buffer,    // [rows, heads * hd] attention output
    o: wgpu::Buffer,    // [rows, H] a block's output before Gemma 2's post-norm
    gate: wgpu::Buffer, // [mlp_rows, I]
    up: wgpu::Buffer,   // [mlp_rows, I]
}

impl Scratch {
    fn new(gpu: &Gpu, m: &TextModel, rows: usize) -> Result<Scratch> {
        let c = &m.cfg;
        let (h, i, qd) = (
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads * c.head_dim,
        );
        let mlp_rows = ((gpu.max_binding_bytes() / (i as u64 * 4)) as usize).clamp(1, rows);
        let f = |label: &str, n: usize| gpu.storage(label, (n * 4) as u64);
        Ok(Scratch {
            rows,
            mlp_rows,
            x: f("x", rows * h)?,
            h: f("h", rows * h)?,
            q: f("q", rows * qd)?,
            a: f("attn", rows * qd)?,
            o: f("o", rows * h)?,
            gate: f("gate", mlp_rows * i)?,
            up: f("up", mlp_rows * i)?,
        })
    }
}

/// One sequence's state on the GPU: the KV cache, scratch buffers, the last logits and the
/// next token.
pub struct Session {
    cache: Vec<LayerCache>,
    capacity: usize,
    len: usize,
    prefix_len: usize,
    scratch: Scratch,
    /// `[vocab]` f32: the logits the last token was chosen from.
    pub(crate) logits: wgpu::Buffer,
    /// `u32 [1]`: the greedy choice, read back by the CPU and fed to the next step.
    token: wgpu::Buffer,
    /// The split decode attention's per-chunk results.
    partial: wgpu::Buffer,
    /// Decode steps repeat the same dispatches: their bind groups are made once.
    dispatch_cache: DispatchCache,
}

impl Session {
    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Positions the session can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// What one forward pass over `rows` new positions from `start` works with: the decoder's
/// layers read their operands from here, as views of the session's scratch.
pub(crate) struct Pass<'a> {
    pub cfg: &'a crate::model::config::TextConfig,
    pub rope: &'a RopeTables,
    pub rows: usize,
    pub start: usize,
    /// Positions below this form the bidirectional block (image + prompt).
    pub prefix_len: usize,
    kv_width: usize,
    scratch: &'a Scratch,
    partial: &'a wgpu::Buffer,
}

impl<'a> Pass<'a> {
    fn packed(&self, buffer: &'a wgpu::Buffer, width: usize) -> View<'a> {
        View::new(buffer, self.rows, width)
    }
    /// The residual stream `[rows, H]`.
    pub fn x(&self) -> View<'a> {
        self.packed(&self.scratch.x, self.cfg.hidden_size)
    }
    /// Normed rows `[rows, H]`: a block's input.
    pub fn h(&self) -> View<'a> {
        self.packed(&self.scratch.h, self.cfg.hidden_size)
    }
    /// Queries `[rows, heads * hd]`.
    pub fn q(&self) -> View<'a> {
        self.packed(
            &self.scratch.q,
            self.cfg.num_attention_heads * self.cfg.head_dim,
        )
    }
    /// Attention output `[rows, heads * hd]`.
    pub fn a(&self) -> View<'a> {
        self.packed(
            &self.scratch.a,
            self.cfg.num_attention_heads * self.cfg.head_dim,
        )
    }
    /// A block's output before Gemma 2's post-norm, `[rows, H]`.
    pub fn o(&self) -> View<'a> {
        self.packed(&self.scratch.o, self.cfg.hidden_size)
    }
    /// The MLP's gate activations for a block of `n` rows, `[n, I]`.
    pub fn gate(&self, n: usize) -> View<'a> {
        View::new(&self.scratch.gate, n, self.cfg.intermediate_size)
    }
    /// The MLP's up activations (then the gated product) for a block of `n` rows, `[n, I]`.
    pub fn up(&self, n: usize) -> View<'a> {
        View::new(&self.scratch.up, n, self.cfg.intermediate_size)
    }
    /// The MLP's blocks of rows: (first row, rows).
    pub fn mlp_blocks(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (rows, step) = (self.rows, self.scratch.mlp_rows);
        (0..rows)
            .step_by(step)
            .map(move |r0| (r0, step.min(rows - r0)))
    }
    /// Scratch of the split decode attention.
    pub fn partial(&self) -> &'a wgpu::Buffer {
        self.partial
    }
}

impl TextModel {
    /// A new session able to hold `capacity` positions, with scratch for `max_rows` rows per
    /// forward pass (the prompt length for prefill).
    pub fn session(&self, gpu: &Gpu, capacity: usize, max_rows: usize) -> Result<Session> {
        let c = &self.cfg;
        if capacity > c.max_position_embeddings {
            return Err(Error::invalid(format!(
                "{capacity} positions exceed the model's max_position_embeddings {}",
                c.max_position_embeddings
            )));
        }
        let bytes = (capacity * c.num_key_value_heads * c.head_dim * 4) as u64;
        let cache = (0..c.num_hidden_layers)
            .map(|li| {
                Ok(LayerCache {
                    k: gpu.storage(&format!("k cache {li}"), bytes)?,
                    v: gpu.storage(&format!("v cache {li}"), bytes)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Session {
            cache,
            capacity,
            len: 0,
            prefix_len: 0,
            scratch: Scratch::new(gpu, self, max_rows.max(1))?,
            logits: gpu.storage("logits", (c.vocab_size * 4) as u64)?,
            token: gpu.storage("next token", 4)?,
            partial: gpu.storage(
                "attention partials",
                (partial_len(c.num_attention_heads, c.head_dim, capacity) * 4) as u64,
            )?,
            dispatch_cache: DispatchCache::default(),
        })
    }

    /// Records one forward pass over `rows` new positions of `s` (from `s.len`) whose token
    /// ids are in `ids` (`u32 [rows]`); the `image` rows `[n, H]` replace the first n
    /// embeddings. Leaves the final normed hidden states in the scratch's `h` and K, V in the
    /// cache. Many rows are submitted a layer at a time (no watchdog fires on a long prompt);
    /// the caller advances `s.len` once the rest is submitted, so a failure leaves the session
    /// as it was.
    fn forward(
        &self,
        rec: &mut Recorder,
        s: &mut Session,
        ids: &wgpu::Buffer,
        rows: usize,
        image: Option<(&wgpu::Buffer, usize)>,
        prefix_len: usize,
    ) -> Result<()> {
        let c = &self.cfg;
        if s.len + rows > s.capacity {
            return Err(Error::invalid(format!(
                "the sequence would reach {} positions, over the session's capacity {}",
                s.len + rows,
                s.capacity
            )));
        }
        if rows > s.scratch.rows {
            s.scratch = Scratch::new(rec.gpu(), self, rows)?;
        }
        let p = Pass {
            cfg: c,
            rope: &self.rope,
            rows,
            start: s.len,
            prefix_len,
            kv_width: c.num_key_value_heads * c.head_dim,
            scratch: &s.scratch,
            partial: &s.partial,
        };
        gather(rec, ids, &self.embed_tokens, self.embed_scale, p.x())?;
        if let Some((features, n)) = image {
            // The image features enter as they are (transformers divides them by sqrt(H) and
            // the embedding scale multiplies them back).
            let bytes = (n * c.hidden_size * 4) as u64;
            rec.copy(features, 0, &s.scratch.x, 0, bytes);
        }
        for (li, (layer, cache)) in self.layers.iter().zip(&s.cache).enumerate() {
            layer.forward(rec, &p, cache)?;
            if rows > 1 {
                rec.flush(&format!("decoder layer {li}"))?;
            }
        }
        self.norm.forward(rec, p.x(), p.h())
    }

    /// Records the logits of hidden row `row` of the last forward pass into `s.logits`
    /// (soft-capped for Gemma 2) and their argmax into `s.token`.
    fn record_logits(&self, rec: &mut Recorder, s: &Session, row: usize) -> Result<()> {
        let (h, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let x = View::new(&s.scratch.h, row + 1, h).row(row);
        let out = View::new(&s.logits, 1, v);
        logits(rec, x, self.output_table(), out)?;
        if let Some(cap) = self.cfg.final_logit_softcapping {
            softcap(rec, out, cap)?;
        }
        argmax(rec, out, &s.token, 0)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::invalid("no tokens to process"));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// Runs the prompt: `ids` (image placeholders first, replaced by the `n` rows of
    /// `image`), all of it one bidirectional prefix. Leaves the last position's logits in the
    /// session and returns the greedy next token.
    pub fn prefill(
        &self,
        gpu: &Gpu,
        s: &mut Session,
        ids: &[u32],
        image: Option<(&wgpu::Buffer, usize)>,
    ) -> Result<u32> {
        self.check_ids(ids)?;
        if s.len != 0 {
            return Err(Error::invalid(
                "prefill on a session that already holds tokens",
            ));
        }
        if let Some((_, n)) = image
            && n > ids.len()
        {
            return Err(Error::invalid(format!(
                "{n} image rows do not fit a prompt of {} tokens",
                ids.len()
            )));
        }
        let id_buffer = gpu.storage_init("prompt ids", bytemuck::cast_slice(ids))?;
        let mut rec = gpu.recorder();
        self.forward(&mut rec, s, &id_buffer, ids.len(), image, ids.len())?;
        self.record_logits(&mut rec, s, ids.len() - 1)?;
        rec.submit("the prefill")?;
        (s.len, s.prefix_len) = (ids.len(), ids.len());
        Ok(gpu.read_u32(&s.token, 0, 1)?[0])
    }

    /// Appends one token and returns the greedy next token; the logits stay in the session.
    pub fn step(&self, gpu: &Gpu, s: &mut Session, token: u32) -> Result<u32> {
        self.check_ids(&[token])?;
        gpu.write(&s.token, 0, bytemuck::bytes_of(&token))?;
        let mut rec = gpu.recorder();
        let ids = s.token.clone();
        self.forward(&mut rec, s, &ids, 1, None, s.prefix_len)?;
        self.record_logits(&mut rec, s, 0)?;
        rec.submit_cached("a decode step", &mut s.dispatch_cache)?;
        s.len += 1;
        Ok(gpu.read_u32(&s.token, 0, 1)?[0])
    }

    /// Logits at every row of a whole sequence computed in one pass, with positions from
    /// `prefix_len` on causal: the reference that KV-cache decoding must reproduce, and
    /// transformers' `prefill_logits` when `prefix_len == ids.len()`. `[ids.len(), vocab]`.
    pub fn all_logits(
        &self,
        gpu: &Gpu,
        ids: &[u32],
        image: Option<(&wgpu::Buffer, usize)>,
        prefix_len: usize,
    ) -> Result<Vec<f32>> {
        self.check_ids(ids)?;
        let t = ids.len();
        let mut s = self.session(gpu, t, t)?;
        let id_buffer = gpu.storage_init("ids", bytemuck::cast_slice(ids))?;
        let mut rec = gpu.recorder();
        self.forward(&mut rec, &mut s, &id_buffer, t, image, prefix_len)?;
        rec.submit("a full forward pass")?;
        let (h, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        // In blocks of rows whose logits fit one binding.
        let block = ((gpu.max_binding_bytes() / (v as u64 * 4)) as usize).clamp(1, t);
        let out = gpu.storage("all logits", (block * v * 4) as u64)?;
        let hidden = View::new(&s.scratch.h, t, h);
        let mut all = Vec::with_capacity(t * v);
        for r0 in (0..t).step_by(block) {
            let n = block.min(t - r0);
            let y = View::new(&out, n, v);
            let mut rec = gpu.recorder();
            logits(&mut rec, hidden.rows(r0, n), self.output_table(), y)?;
            if let Some(cap) = self.cfg.final_logit_softcapping {
                softcap(&mut rec, y, cap)?;
            }
            rec.submit("logits of every row")?;
            all.extend(gpu.read_f32(&out, 0, n * v)?);
        }
        Ok(all)
    }
}
