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
use crate::ops::linear::{GEMV_BATCH, logits};
use crate::ops::rope::RopeTables;

/// One layer's KV cache: `[capacity, kv_heads * hd]` each, row t written at position t.
pub struct LayerCache {
    pub k: wgpu::Buffer,
    pub v: wgpu::Buffer,
}

impl LayerCache {
    /// Cache rows `start..start + rows` of the keys (`[.., width]`).
    pub(crate) fn k_rows(&self, start: usize, rows: usize, width: usize) -> View<'_> {
        View::new(&self.k, start + rows, width).rows(start, rows)
    }
    /// Cache rows `start..start + rows` of the values.
    pub(crate) fn v_rows(&self, start: usize, rows: usize, width: usize) -> View<'_> {
        View::new(&self.v, start + rows, width).rows(start, rows)
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
    fn bytes(&self) -> u64 {
        [
            &self.x, &self.h, &self.q, &self.a, &self.o, &self.gate, &self.up,
        ]
        .iter()
        .map(|b| b.size())
        .sum()
    }

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
    /// Tells sessions apart in a [`DecodeBatch`] (whose cached bind groups name their buffers).
    id: u64,
    cache: Vec<LayerCache>,
    capacity: usize,
    len: usize,
    prefix_len: usize,
    /// Scratch for the session's own passes: the prompt's rows until the prefill is done, then
    /// (made again on the first solo step) one row. Batched steps use the batch's.
    scratch: Option<Scratch>,
    /// `[vocab]` f32: the logits the last token was chosen from.
    pub(crate) logits: wgpu::Buffer,
    /// `u32 [1]`: the greedy choice, read back by the CPU and fed to the next step.
    token: wgpu::Buffer,
    /// MAP_READ copy of `token`, filled inside each step's own submission.
    readback: wgpu::Buffer,
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
    /// GPU memory the session holds: KV cache, logits, attention partials and scratch.
    pub fn gpu_bytes(&self) -> u64 {
        let cache: u64 = self.cache.iter().map(|c| c.k.size() + c.v.size()).sum();
        let scratch = self.scratch.as_ref().map_or(0, Scratch::bytes);
        let small = self.token.size() + self.readback.size();
        cache + self.logits.size() + small + self.partial.size() + scratch
    }
}

/// What one forward pass over `rows` new positions works with: the decoder's layers read their
/// operands from here, as views of the scratch.
pub(crate) struct Pass<'a> {
    pub cfg: &'a crate::model::config::TextConfig,
    pub rope: &'a RopeTables,
    pub rows: usize,
    /// Whose positions the rows are.
    pub kind: Rows<'a>,
    pub kv_width: usize,
    scratch: &'a Scratch,
}

/// Whose positions a pass's rows are.
pub(crate) enum Rows<'a> {
    /// Positions `start..start + rows` of one sequence; positions below `prefix_len` form the
    /// bidirectional block (image + prompt).
    Run {
        cache: &'a [LayerCache],
        start: usize,
        prefix_len: usize,
        /// Scratch of the split decode attention.
        partial: &'a wgpu::Buffer,
    },
    /// One new position for each sequence of a batch (row i: `seqs[i]`); K and V are computed
    /// into `k` and `v` and copied into each sequence's cache.
    Batch {
        seqs: Vec<BatchRow<'a>>,
        /// `u32 [rows]`: each row's RoPE position (1-based).
        positions: &'a wgpu::Buffer,
        k: &'a wgpu::Buffer,
        v: &'a wgpu::Buffer,
    },
}

/// One sequence of a batched pass.
pub(crate) struct BatchRow<'a> {
    pub cache: &'a [LayerCache],
    /// The cache position of the new token.
    pub pos: usize,
    pub prefix_len: usize,
    pub partial: &'a wgpu::Buffer,
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
}

/// Scratch and outputs of batched decode steps (`PaliGemma::step_batch`): one decode step for
/// several sessions at once, each weight read once per 16 sequences (`GEMV_BATCH`).
pub struct DecodeBatch {
    scratch: Scratch,
    /// `[GEMV_BATCH, kv_heads * hd]`: the new keys and values before they go to each cache.
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    ids: wgpu::Buffer,       // u32 [GEMV_BATCH]
    positions: wgpu::Buffer, // u32 [GEMV_BATCH]
    logits: wgpu::Buffer,    // [GEMV_BATCH, vocab]
    /// `u32 [rows]` the greedy choices of every group of a step; regrown with the batch.
    tokens: wgpu::Buffer,
    /// MAP_READ copy of `tokens`.
    readback: wgpu::Buffer,
    /// Per group of GEMV_BATCH sessions: its cached bind groups, and whose they are.
    groups: Vec<(Vec<u64>, DispatchCache)>,
}

impl DecodeBatch {
    /// GPU memory the batch's scratch holds, in bytes.
    pub fn gpu_bytes(&self) -> u64 {
        let own = [
            &self.k,
            &self.v,
            &self.ids,
            &self.positions,
            &self.logits,
            &self.tokens,
        ];
        self.scratch.bytes() + own.iter().map(|b| b.size()).sum::<u64>()
    }

    /// Drops the cached bind groups, and with them the last step's sessions' buffers they
    /// hold: call when the batch will not step for a while (the engine does when it goes idle
    /// or down to one sequence).
    pub fn release(&mut self) {
        self.groups.clear();
    }

    fn group(&mut self, g: usize, members: Vec<u64>) -> &mut DispatchCache {
        if self.groups.len() <= g {
            self.groups.resize_with(g + 1, Default::default);
        }
        let (who, cache) = &mut self.groups[g];
        if *who != members {
            // Other sessions: the cached bind groups would keep the old ones' caches alive.
            (*who, *cache) = (members, DispatchCache::default());
        }
        cache
    }
}

static NEXT_SESSION_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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
            id: NEXT_SESSION_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            cache,
            capacity,
            len: 0,
            prefix_len: 0,
            scratch: Some(Scratch::new(gpu, self, max_rows.max(1))?),
            logits: gpu.storage("logits", (c.vocab_size * 4) as u64)?,
            token: gpu.storage("next token", 4)?,
            readback: gpu.read_back_buffer("next token read-back", 4)?,
            partial: gpu.storage(
                "attention partials",
                (partial_len(c.num_attention_heads, c.head_dim, capacity) * 4) as u64,
            )?,
            dispatch_cache: DispatchCache::default(),
        })
    }

    /// Scratch and outputs for [`step_batch`](Self::step_batch).
    pub fn decode_batch(&self, gpu: &Gpu) -> Result<DecodeBatch> {
        let c = &self.cfg;
        let kv = GEMV_BATCH * c.num_key_value_heads * c.head_dim * 4;
        let u32s = |label: &str| gpu.storage(label, (GEMV_BATCH * 4) as u64);
        Ok(DecodeBatch {
            scratch: Scratch::new(gpu, self, GEMV_BATCH)?,
            k: gpu.storage("batch keys", kv as u64)?,
            v: gpu.storage("batch values", kv as u64)?,
            ids: u32s("batch ids")?,
            positions: u32s("batch positions")?,
            logits: gpu.storage("batch logits", (GEMV_BATCH * c.vocab_size * 4) as u64)?,
            tokens: u32s("batch tokens")?,
            readback: gpu.read_back_buffer("batch tokens read-back", (GEMV_BATCH * 4) as u64)?,
            groups: Vec::new(),
        })
    }

    /// Records one forward pass `p` whose token ids are in `ids` (`u32 [rows]`); the `image`
    /// rows `[n, H]` replace the first n embeddings. Leaves the final normed hidden states in
    /// the scratch's `h` and K, V in the caches. Many rows are submitted a layer at a time (no
    /// watchdog fires on a long prompt, and a caller that polls the device gets its frame loop
    /// back between layers); the caller advances the sessions once the rest is submitted, so a
    /// failure leaves them as they were.
    async fn forward(
        &self,
        rec: &mut Recorder<'_>,
        p: &Pass<'_>,
        ids: &wgpu::Buffer,
        image: Option<(&wgpu::Buffer, usize)>,
    ) -> Result<()> {
        gather(rec, ids, &self.embed_tokens, self.embed_scale, p.x())?;
        if let Some((features, n)) = image {
            // The image features enter as they are (transformers divides them by sqrt(H) and
            // the embedding scale multiplies them back).
            let bytes = (n * self.cfg.hidden_size * 4) as u64;
            rec.copy(features, 0, p.x().buffer, 0, bytes);
        }
        for (li, layer) in self.layers.iter().enumerate() {
            layer.forward(rec, p, li)?;
            if matches!(p.kind, Rows::Run { .. }) && p.rows > 1 {
                rec.flush(&format!("decoder layer {li}"))?;
                rec.gpu().between_layers().await;
            }
        }
        self.norm.forward(rec, p.x(), p.h())
    }

    /// A pass over `rows` new positions of `s`, with the session's scratch grown to fit.
    fn run_pass<'a>(
        &'a self,
        gpu: &Gpu,
        s: &'a mut Session,
        rows: usize,
        prefix_len: usize,
    ) -> Result<Pass<'a>> {
        if s.len + rows > s.capacity {
            return Err(Error::invalid(format!(
                "the sequence would reach {} positions, over the session's capacity {}",
                s.len + rows,
                s.capacity
            )));
        }
        if s.scratch.as_ref().is_none_or(|sc| sc.rows < rows) {
            s.scratch = Some(Scratch::new(gpu, self, rows)?);
        }
        let c = &self.cfg;
        Ok(Pass {
            cfg: c,
            rope: &self.rope,
            rows,
            kind: Rows::Run {
                cache: &s.cache,
                start: s.len,
                prefix_len,
                partial: &s.partial,
            },
            kv_width: c.num_key_value_heads * c.head_dim,
            scratch: s.scratch.as_ref().expect("just made"),
        })
    }

    /// Records the logits of the hidden rows `h` into `out` (soft-capped for Gemma 2) and
    /// their argmax into `tokens[first..first + rows]`.
    fn record_logits(
        &self,
        rec: &mut Recorder,
        h: View,
        out: View,
        tokens: &wgpu::Buffer,
        first: usize,
    ) -> Result<()> {
        logits(rec, h, self.output_table(), out)?;
        if let Some(cap) = self.cfg.final_logit_softcapping {
            softcap(rec, out, cap)?;
        }
        for r in 0..h.rows {
            argmax(rec, out.row(r), tokens, first + r)?;
        }
        Ok(())
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
    /// session and returns the greedy next token. The prompt's scratch is freed after it.
    pub async fn prefill(
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
        let (logits_buf, token) = (s.logits.clone(), s.token.clone());
        let t = ids.len();
        let mut rec = gpu.recorder();
        let p = self.run_pass(gpu, s, t, t)?;
        self.forward(&mut rec, &p, &id_buffer, image).await?;
        let out = View::new(&logits_buf, 1, self.cfg.vocab_size);
        self.record_logits(&mut rec, p.h().row(t - 1), out, &token, 0)?;
        rec.copy(&token, 0, &s.readback, 0, 4);
        rec.submit("the prefill")?;
        (s.len, s.prefix_len) = (t, t);
        if t > 1 {
            s.scratch = None;
        }
        Ok(gpu.read_mapped(&s.readback, 1).await?[0])
    }

    /// Appends one token and returns the greedy next token; the logits stay in the session.
    pub async fn step(&self, gpu: &Gpu, s: &mut Session, token: u32) -> Result<u32> {
        self.check_ids(&[token])?;
        gpu.write(&s.token, 0, bytemuck::bytes_of(&token))?;
        let (ids, logits_buf) = (s.token.clone(), s.logits.clone());
        let mut cache = std::mem::take(&mut s.dispatch_cache);
        let mut rec = gpu.recorder();
        let prefix_len = s.prefix_len;
        let p = self.run_pass(gpu, s, 1, prefix_len)?;
        self.forward(&mut rec, &p, &ids, None).await?;
        let out = View::new(&logits_buf, 1, self.cfg.vocab_size);
        self.record_logits(&mut rec, p.h(), out, &ids, 0)?;
        rec.copy(&ids, 0, &s.readback, 0, 4);
        let done = rec.submit_cached("a decode step", &mut cache);
        s.dispatch_cache = cache;
        done?;
        s.len += 1;
        Ok(gpu.read_mapped(&s.readback, 1).await?[0])
    }

    /// One decode step for several sessions at once: `tokens[i]` is appended to
    /// `sessions[i]`; returns each one's greedy next token, and leaves each one's logits in
    /// it. Every [`GEMV_BATCH`] sessions read the weights once. Each row's sums are formed as
    /// [`step`](Self::step) forms them, so the logits are bit-identical to stepping alone on
    /// lavapipe (tested); a driver that contracts multiply-adds differently in the one-row and
    /// many-row pipelines could differ in the last bit.
    ///
    /// On an error no session's length has advanced. (With more than 16 sessions, groups
    /// submitted before the failure have written their cache row and logits; the next step
    /// writes the same row again.)
    pub async fn step_batch(
        &self,
        gpu: &Gpu,
        b: &mut DecodeBatch,
        sessions: &mut [&mut Session],
        tokens: &[u32],
    ) -> Result<Vec<u32>> {
        if sessions.len() != tokens.len() {
            return Err(Error::invalid(format!(
                "{} sessions but {} tokens",
                sessions.len(),
                tokens.len()
            )));
        }
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        self.check_ids(tokens)?;
        for s in sessions.iter() {
            if s.len == 0 || s.len >= s.capacity {
                return Err(Error::invalid(format!(
                    "a batched step needs prefilled sessions with room for a token; one holds \
                     {} of {} positions",
                    s.len, s.capacity
                )));
            }
        }
        let n = sessions.len();
        if b.tokens.size() < (n * 4) as u64 {
            let bytes = (n.next_power_of_two() * 4) as u64;
            b.tokens = gpu.storage("batch tokens", bytes)?;
            b.readback = gpu.read_back_buffer("batch tokens read-back", bytes)?;
            b.release(); // the cached bind groups name the old buffer
        }
        // Groups past this step's last one would keep their sessions alive.
        b.groups.truncate(n.div_ceil(GEMV_BATCH));
        let (c, v) = (&self.cfg, self.cfg.vocab_size);
        let kv_width = c.num_key_value_heads * c.head_dim;
        for (g, (group, ids)) in sessions
            .chunks(GEMV_BATCH)
            .zip(tokens.chunks(GEMV_BATCH))
            .enumerate()
        {
            let rows = group.len();
            let positions: Vec<u32> = group.iter().map(|s| s.len as u32 + 1).collect();
            gpu.write(&b.ids, 0, bytemuck::cast_slice(ids))?;
            gpu.write(&b.positions, 0, bytemuck::cast_slice(&positions))?;
            let mut rec = gpu.recorder();
            let p = Pass {
                cfg: c,
                rope: &self.rope,
                rows,
                kind: Rows::Batch {
                    seqs: group
                        .iter()
                        .map(|s| BatchRow {
                            cache: &s.cache,
                            pos: s.len,
                            prefix_len: s.prefix_len,
                            partial: &s.partial,
                        })
                        .collect(),
                    positions: &b.positions,
                    k: &b.k,
                    v: &b.v,
                },
                kv_width,
                scratch: &b.scratch,
            };
            self.forward(&mut rec, &p, &b.ids, None).await?;
            let out = View::new(&b.logits, rows, v);
            self.record_logits(&mut rec, p.h(), out, &b.tokens, g * GEMV_BATCH)?;
            // Each session keeps the logits its token was chosen from, as its own step does.
            for (i, s) in group.iter().enumerate() {
                rec.copy(&b.logits, (i * v * 4) as u64, &s.logits, 0, (v * 4) as u64);
            }
            let at = (g * GEMV_BATCH * 4) as u64;
            rec.copy(&b.tokens, at, &b.readback, at, (rows * 4) as u64);
            let members = group.iter().map(|s| s.id).collect();
            rec.submit_cached("a batched decode step", b.group(g, members))?;
        }
        let next = gpu.read_mapped(&b.readback, n).await?;
        for s in sessions.iter_mut() {
            s.len += 1;
        }
        Ok(next)
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
        let p = self.run_pass(gpu, &mut s, t, prefix_len)?;
        let pass = self.forward(&mut rec, &p, &id_buffer, image);
        gpu.block_on("all_logits", pass)?;
        rec.submit("a full forward pass")?;
        let (h, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        // In blocks of rows whose logits fit one binding.
        let block = ((gpu.max_binding_bytes() / (v as u64 * 4)) as usize).clamp(1, t);
        let out = gpu.storage("all logits", (block * v * 4) as u64)?;
        let hidden = View::new(p.h().buffer, t, h);
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
