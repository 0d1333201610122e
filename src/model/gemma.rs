//! The Gemma (PaliGemma) and Gemma 2 (PaliGemma 2) decoder, and a [`Session`]: the KV cache and
//! scratch buffers of one sequence, resident on the GPU from prefill to the last token.

use super::Loader;
use super::config::{Decoder, TextConfig};
use crate::error::{Error, Result};
use crate::gpu::{DispatchCache, Gpu, Recorder};
use crate::ops::activation::{gelu_tanh_gated, softcap};
use crate::ops::add::add_inplace;
use crate::ops::argmax::argmax;
use crate::ops::attention::{AttentionParams, attention, attention_split, partial_len};
use crate::ops::embedding::gather;
use crate::ops::linear::{Linear, gated_supported, gemv_gated, logits};
use crate::ops::norm::RmsNorm;
use crate::ops::rope::{RopeTables, rope};
use crate::ops::{ChunkedTable, Rows};

/// One decoder layer; field names follow the checkpoint's.
pub struct TextLayer {
    pub input_layernorm: RmsNorm, // [H]
    pub q_proj: Linear,           // [heads * hd, H]
    pub k_proj: Linear,           // [kv_heads * hd, H]
    pub v_proj: Linear,           // [kv_heads * hd, H]
    pub o_proj: Linear,           // [H, heads * hd]
    /// Gemma: the norm before the MLP. Gemma 2: the norm of the attention output.
    pub post_attention_layernorm: RmsNorm, // [H]
    /// Gemma 2 only: the norms before and after the MLP.
    pub feedforward_layernorms: Option<(RmsNorm, RmsNorm)>,
    pub gate_proj: Linear, // [I, H]
    pub up_proj: Linear,   // [I, H]
    pub down_proj: Linear, // [H, I]
    /// Gemma 2: this layer attends within the sliding window.
    pub sliding: bool,
}

/// The decoder's weights on the GPU.
pub struct TextModel {
    pub cfg: TextConfig,
    /// [vocab, H]: the token embedding and, tied (PaliGemma), the logits projection.
    pub embed_tokens: ChunkedTable,
    /// [vocab, H]: a separate logits projection, for untied checkpoints.
    pub lm_head: Option<ChunkedTable>,
    pub layers: Vec<TextLayer>,
    pub norm: RmsNorm,    // [H]
    pub rope: RopeTables, // [max_positions + 1, hd / 2]
    /// Text embeddings are multiplied by sqrt(hidden).
    pub embed_scale: f32,
}

impl TextModel {
    pub fn load(l: &Loader, cfg: &TextConfig) -> Result<Self> {
        let (h, i, hd, eps) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.head_dim,
            cfg.rms_norm_eps,
        );
        let (qd, kvd) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
        let g2 = cfg.decoder == Decoder::Gemma2;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for li in 0..cfg.num_hidden_layers {
            let p = format!("text.layers.{li}");
            let lin = |name: &str, r, c| l.linear(&format!("{p}.{name}"), r, c, false);
            let norm = |name: &str| l.rms_norm(&format!("{p}.{name}"), h, eps);
            layers.push(TextLayer {
                input_layernorm: norm("input_layernorm")?,
                q_proj: lin("self_attn.q_proj", qd, h)?,
                k_proj: lin("self_attn.k_proj", kvd, h)?,
                v_proj: lin("self_attn.v_proj", kvd, h)?,
                o_proj: lin("self_attn.o_proj", h, qd)?,
                post_attention_layernorm: norm("post_attention_layernorm")?,
                feedforward_layernorms: if g2 {
                    Some((
                        norm("pre_feedforward_layernorm")?,
                        norm("post_feedforward_layernorm")?,
                    ))
                } else {
                    None
                },
                gate_proj: lin("mlp.gate_proj", i, h)?,
                up_proj: lin("mlp.up_proj", i, h)?,
                down_proj: lin("mlp.down_proj", h, i)?,
                sliding: cfg.sliding_layers[li],
            });
        }
        let lm_head = if cfg.tie_word_embeddings {
            if l.has("text.lm_head.weight") {
                log::warn!("the config ties the embeddings: the checkpoint's lm_head is not used");
            }
            None
        } else {
            Some(l.table("text.lm_head.weight", cfg.vocab_size, h)?)
        };
        Ok(TextModel {
            embed_tokens: l.table("text.embed_tokens.weight", cfg.vocab_size, h)?,
            lm_head,
            layers,
            norm: l.rms_norm("text.norm", h, eps)?,
            // Positions are 1-based, so the table has one row more than the maximum.
            rope: RopeTables::new(l.gpu, hd, cfg.rope_theta, cfg.max_position_embeddings + 1)?,
            embed_scale: (h as f64).sqrt() as f32,
            cfg: cfg.clone(),
        })
    }

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
        let kvd = c.num_key_value_heads * c.head_dim;
        let mut k_cache = Vec::new();
        let mut v_cache = Vec::new();
        for li in 0..c.num_hidden_layers {
            k_cache.push(gpu.storage(&format!("k cache {li}"), (capacity * kvd * 4) as u64)?);
            v_cache.push(gpu.storage(&format!("v cache {li}"), (capacity * kvd * 4) as u64)?);
        }
        Ok(Session {
            k_cache,
            v_cache,
            capacity,
            len: 0,
            prefix_len: 0,
            scratch: Scratch::new(gpu, c, max_rows.max(1))?,
            logits: gpu.storage("logits", (c.vocab_size * 4) as u64)?,
            token: gpu.storage("next token", 4)?,
            partial: gpu.storage(
                "attention partials",
                (partial_len(c.num_attention_heads, c.head_dim, capacity) * 4) as u64,
            )?,
            dispatch_cache: DispatchCache::default(),
        })
    }

    /// Records one forward pass over `rows` new positions of `s` (from `s.len`), whose token
    /// ids are in `ids` (`u32 [rows]`); `image` rows `[n, H]` replace the first n embeddings;
    /// positions below `prefix_len` form the bidirectional block. Leaves the final normed hidden
    /// states in `s.scratch.h` and K, V in the cache. The caller advances `s.len` once the work
    /// is submitted, so a failed submission leaves the session as it was.
    fn record_forward(
        &self,
        rec: &mut Recorder,
        s: &mut Session,
        ids: &wgpu::Buffer,
        rows: usize,
        image: Option<(&wgpu::Buffer, usize)>,
        prefix_len: usize,
    ) -> Result<()> {
        let c = &self.cfg;
        let (h, hd, i) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let start = s.len;
        if start + rows > s.capacity {
            return Err(Error::invalid(format!(
                "the sequence would reach {} positions, over the session's capacity {}",
                start + rows,
                s.capacity
            )));
        }
        if rows > s.scratch.rows {
            s.scratch = Scratch::new(rec.gpu(), c, rows)?;
        }
        let sc = &s.scratch;
        let (hp, qp) = (Rows::packed(h), Rows::packed(qd));

        gather(rec, ids, rows, &self.embed_tokens, self.embed_scale, &sc.x)?;
        if let Some((feat, n)) = image {
            // The image features enter as they are (transformers divides them by sqrt(H) and
            // the embedding scale multiplies them back).
            rec.copy(feat, 0, &sc.x, 0, (n * h * 4) as u64);
        }
        for (li, layer) in self.layers.iter().enumerate() {
            let (kc, vc) = (&s.k_cache[li], &s.v_cache[li]);
            let at_cache = Rows::from_row(start, kvd);
            // h = x + o_proj(attn(input_layernorm(x))), K and V appended to the cache.
            layer.input_layernorm.forward(rec, &sc.x, &sc.h, rows)?;
            layer.q_proj.forward(rec, &sc.h, hp, &sc.q, qp, rows)?;
            layer.k_proj.forward(rec, &sc.h, hp, kc, at_cache, rows)?;
            layer.v_proj.forward(rec, &sc.h, hp, vc, at_cache, rows)?;
            // transformers numbers positions from 1.
            rope(rec, &sc.q, qp, &self.rope, rows, nh, start + 1)?;
            rope(rec, kc, at_cache, &self.rope, rows, nkv, start + 1)?;
            let window = match (layer.sliding, c.sliding_window) {
                (true, Some(w)) => w as u32,
                _ => 0,
            };
            let params = AttentionParams {
                q_rows: rows as u32,
                n_heads: nh as u32,
                n_kv_heads: nkv as u32,
                head_dim: hd as u32,
                q_stride: qd as u32,
                kv_stride: kvd as u32,
                kv_len: (start + rows) as u32,
                q_pos0: start as u32,
                prefix_len: prefix_len as u32,
                window,
                o_stride: qd as u32,
                scale: c.attention_scale(),
                softcap: c.attn_logit_softcapping.unwrap_or(0.0),
                ..Default::default()
            };
            if rows == 1 {
                // Decode: the cache split over many workgroups.
                attention_split(rec, &sc.q, kc, vc, &sc.a, &s.partial, &params)?;
            } else {
                attention(rec, &sc.q, kc, vc, &sc.a, &params)?;
            }
            let mlp_norm = match &layer.feedforward_layernorms {
                // Gemma 2 normalises the attention output before the residual add.
                Some((pre, _)) => {
                    layer.o_proj.forward(rec, &sc.a, qp, &sc.o, hp, rows)?;
                    let post = &layer.post_attention_layernorm;
                    post.forward(rec, &sc.o, &sc.h, rows)?;
                    add_inplace(rec, &sc.x, &sc.h, rows * h)?;
                    pre
                }
                // Gemma adds it straight into x, inside the projection.
                None => {
                    layer.o_proj.forward_add(rec, &sc.a, qp, &sc.x, hp, rows)?;
                    &layer.post_attention_layernorm
                }
            };
            // x = h + down(gelu_tanh(gate(norm(h))) * up(norm(h))), in blocks of rows so the
            // [rows, I] intermediates fit one binding.
            mlp_norm.forward(rec, &sc.x, &sc.h, rows)?;
            let ip = Rows::packed(i);
            let (gate, up) = (&layer.gate_proj.weight, &layer.up_proj.weight);
            // Decode: gate, up and the activation in one pass over both weights.
            let fused = rows == 1 && gated_supported(gate, up);
            for r0 in (0..rows).step_by(sc.mlp_rows) {
                let n = sc.mlp_rows.min(rows - r0);
                let at = Rows::from_row(r0, h);
                if fused {
                    gemv_gated(rec, &sc.h, at, gate, up, &sc.up, 0)?;
                } else {
                    layer.gate_proj.forward(rec, &sc.h, at, &sc.gate, ip, n)?;
                    layer.up_proj.forward(rec, &sc.h, at, &sc.up, ip, n)?;
                    gelu_tanh_gated(rec, &sc.gate, &sc.up, n * i)?;
                }
                match &layer.feedforward_layernorms {
                    Some(_) => layer.down_proj.forward(rec, &sc.up, ip, &sc.o, at, n)?,
                    None => layer.down_proj.forward_add(rec, &sc.up, ip, &sc.x, at, n)?,
                }
            }
            if let Some((_, post)) = &layer.feedforward_layernorms {
                post.forward(rec, &sc.o, &sc.a, rows)?;
                add_inplace(rec, &sc.x, &sc.a, rows * h)?;
            }
        }
        self.norm.forward(rec, &sc.x, &sc.h, rows)
    }

    /// The table the logits are computed against.
    fn output_table(&self) -> &ChunkedTable {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Records the logits of hidden row `row` of the last forward pass into `s.logits`
    /// (soft-capped for Gemma 2) and their argmax into `s.token`.
    fn record_logits(&self, rec: &mut Recorder, s: &Session, row: usize) -> Result<()> {
        let (h, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        logits(
            rec,
            &s.scratch.h,
            Rows::from_row(row, h),
            self.output_table(),
            &s.logits,
            Rows::packed(v),
            1,
        )?;
        if let Some(cap) = self.cfg.final_logit_softcapping {
            softcap(rec, &s.logits, v, cap)?;
        }
        argmax(rec, &s.logits, 0, v, &s.token, 0)
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

    /// Runs the prompt: `ids` (image placeholders first, replaced by the `n_image` rows of
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
        let idb = gpu.storage_init("prompt ids", bytemuck::cast_slice(ids))?;
        let mut rec = gpu.recorder();
        self.record_forward(&mut rec, s, &idb, ids.len(), image, ids.len())?;
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
        let tok = s.token.clone();
        self.record_forward(&mut rec, s, &tok, 1, None, s.prefix_len)?;
        self.record_logits(&mut rec, s, 0)?;
        rec.submit_cached("a decode step", Some(&mut s.dispatch_cache))?;
        s.len += 1;
        Ok(gpu.read_u32(&s.token, 0, 1)?[0])
    }

    /// Logits at every row of a whole sequence computed in one pass, with positions from
    /// `prefix_len` on causal: the reference that KV-cache decoding must reproduce, and
    /// transformers' `prefill_logits` when `prefix_len == ids.len()`. [ids.len(), vocab].
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
        let idb = gpu.storage_init("ids", bytemuck::cast_slice(ids))?;
        let mut rec = gpu.recorder();
        self.record_forward(&mut rec, &mut s, &idb, t, image, prefix_len)?;
        rec.submit("a full forward pass")?;
        let (h, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let block = ((gpu.max_binding_bytes() / (v as u64 * 4)) as usize).clamp(1, t);
        let out = gpu.storage("all logits", (block * v * 4) as u64)?;
        let mut all = Vec::with_capacity(t * v);
        for r0 in (0..t).step_by(block) {
            let n = block.min(t - r0);
            let mut rec = gpu.recorder();
            logits(
                &mut rec,
                &s.scratch.h,
                Rows::from_row(r0, h),
                self.output_table(),
                &out,
                Rows::packed(v),
                n,
            )?;
            if let Some(cap) = self.cfg.final_logit_softcapping {
                softcap(&mut rec, &out, n * v, cap)?;
            }
            rec.submit("logits of every row")?;
            all.extend(gpu.read_f32(&out, 0, n * v)?);
        }
        Ok(all)
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
    a: wgpu::Buffer,    // [rows, max(heads * hd, H)] attention output
    o: wgpu::Buffer,    // [rows, H]
    gate: wgpu::Buffer, // [mlp_rows, I]
    up: wgpu::Buffer,   // [mlp_rows, I]
}

impl Scratch {
    fn new(gpu: &Gpu, c: &TextConfig, rows: usize) -> Result<Scratch> {
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
            a: f("attn", rows * qd.max(h))?,
            o: f("o", rows * h)?,
            gate: f("gate", mlp_rows * i)?,
            up: f("up", mlp_rows * i)?,
        })
    }
}

/// One sequence's state on the GPU: the KV cache (`[layer][capacity, kv_heads * hd]`, row t
/// written at position t), scratch buffers, the last logits and the next token.
pub struct Session {
    k_cache: Vec<wgpu::Buffer>,
    v_cache: Vec<wgpu::Buffer>,
    capacity: usize,
    len: usize,
    prefix_len: usize,
    scratch: Scratch,
    /// `[vocab]` f32: the logits the last token was chosen from.
    pub logits: wgpu::Buffer,
    /// `u32 [1]`: the greedy choice, read back by the CPU and fed to the next step.
    pub token: wgpu::Buffer,
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
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
