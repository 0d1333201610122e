//! The Gemma (PaliGemma) and Gemma 2 (PaliGemma 2) decoder: each layer an attention block and an
//! MLP block around the residual stream, as transformers' `GemmaDecoderLayer` and
//! `Gemma2DecoderLayer` compute them:
//!
//! ```text
//! x = x + [post_norm](o_proj(attention(rope(q_proj(norm(x))), rope(k_proj(norm(x))), v_proj(norm(x)))))
//! x = x + [post_norm](down_proj(gelu_tanh(gate_proj(norm(x))) * up_proj(norm(x))))
//! ```
//!
//! The bracketed norms are Gemma 2's and Gemma 3's; Gemma adds each branch straight into x
//! inside its last projection. Gemma 3 also RMS-norms each head of q and k before RoPE
//! (`q_norm`, `k_norm`), and its sliding layers have a RoPE of their own. The pass these
//! layers run in (its rows, activations and caches) is `pass.rs`; the layer loop, `decoder.rs`.

use super::Loader;
use super::config::{Decoder, TextConfig};
use super::pass::Pass;
use crate::error::Result;
use crate::gpu::Recorder;
use crate::ops::activation::gelu_tanh_gated;
use crate::ops::add::add_inplace;
use crate::ops::attention::{AttentionParams, Blocks};
use crate::ops::linear::{GEMV_BATCH, Linear, gated_supported, gemv_gated};
use crate::ops::norm::RmsNorm;
use crate::ops::rope::RopeTables;
use crate::ops::{ChunkedTable, View};

/// The attention block: norm, projections, RoPE, attention over the cache, output projection.
pub struct SelfAttention {
    /// `input_layernorm`.
    pub norm: RmsNorm,
    pub q_proj: Linear, // [heads * hd, H]
    pub k_proj: Linear, // [kv_heads * hd, H]
    pub v_proj: Linear, // [kv_heads * hd, H]
    pub o_proj: Linear, // [H, heads * hd]
    /// Gemma 3's `q_norm` and `k_norm`, over each head's head_dim values.
    pub qk_norm: Option<(RmsNorm, RmsNorm)>,
    /// Gemma 2's `post_attention_layernorm`, on the block's output before the residual add.
    pub post_norm: Option<RmsNorm>,
    /// Gemma 2 and 3: this layer attends within the sliding window.
    pub sliding: bool,
}

/// The MLP block: norm, gated GELU, down projection.
pub struct Mlp {
    /// Gemma's `post_attention_layernorm`; Gemma 2's `pre_feedforward_layernorm`.
    pub norm: RmsNorm,
    pub gate_proj: Linear, // [I, H]
    pub up_proj: Linear,   // [I, H]
    pub down_proj: Linear, // [H, I]
    /// Gemma 2's `post_feedforward_layernorm`.
    pub post_norm: Option<RmsNorm>,
}

/// One decoder layer.
pub struct TextLayer {
    pub attention: SelfAttention,
    pub mlp: Mlp,
}

impl TextLayer {
    /// x = x + attention(x), then x = x + mlp(x); K and V of the new rows go to layer `li`'s
    /// cache.
    pub(crate) fn forward(&self, rec: &mut Recorder, p: &Pass, li: usize) -> Result<()> {
        self.attention.forward(rec, p, li)?;
        self.mlp.forward(rec, p)
    }
}

impl SelfAttention {
    fn forward(&self, rec: &mut Recorder, p: &Pass, li: usize) -> Result<()> {
        self.norm.forward(rec, p.residual(), p.normed())?;
        self.q_proj.forward(rec, p.normed(), p.queries())?;
        let (keys, values) = p.new_keys_values(li);
        self.k_proj.forward(rec, p.normed(), keys)?;
        self.v_proj.forward(rec, p.normed(), values)?;
        if let Some((q_norm, k_norm)) = &self.qk_norm {
            let hd = p.cfg.head_dim;
            q_norm.forward_in_place(rec, p.queries().split_rows(hd)?)?;
            k_norm.forward_in_place(rec, keys.split_rows(hd)?)?;
        }
        p.rotate(rec, keys, self.sliding)?;
        p.store_keys_values(rec, li, keys, values);
        p.attend(rec, li, self.sliding)?;
        let post_norm = self.post_norm.as_ref();
        branch_out(rec, &self.o_proj, p.attended(), p, p.residual(), post_norm)?;
        add_branch(rec, p, post_norm)
    }
}

impl Mlp {
    fn forward(&self, rec: &mut Recorder, p: &Pass) -> Result<()> {
        self.norm.forward(rec, p.residual(), p.normed())?;
        let (gate, up) = (&self.gate_proj.weight, &self.up_proj.weight);
        let post_norm = self.post_norm.as_ref();
        // In blocks of rows, so the [rows, I] intermediates fit one binding.
        for (r0, n) in p.mlp_blocks() {
            let (h, g, u) = (p.normed().rows(r0, n), p.gate(n), p.up(n));
            if n <= GEMV_BATCH && gated_supported(gate, up) {
                // Decode: gate, up and the activation in one pass over both weights.
                gemv_gated(rec, h, gate, up, u)?;
            } else {
                self.gate_proj.forward(rec, h, g)?;
                self.up_proj.forward(rec, h, u)?;
                gelu_tanh_gated(rec, g, u)?;
            }
            let x = p.residual().rows(r0, n);
            branch_out(rec, &self.down_proj, u, p, x, post_norm)?;
        }
        add_branch(rec, p, post_norm)
    }
}

/// A block's last projection of `input`: added straight into the residual rows `x` (Gemma), or
/// written to the same rows of the branch buffer when a post-norm must come first (Gemma 2).
fn branch_out(
    rec: &mut Recorder,
    proj: &Linear,
    input: View,
    p: &Pass,
    x: View,
    post_norm: Option<&RmsNorm>,
) -> Result<()> {
    match post_norm {
        None => proj.forward_add(rec, input, x),
        Some(_) => {
            let branch = View {
                buffer: p.branch().buffer,
                ..x
            };
            proj.forward(rec, input, branch)
        }
    }
}

/// Gemma 2: x += post_norm(branch). Nothing for Gemma, whose branch is already in x.
fn add_branch(rec: &mut Recorder, p: &Pass, post_norm: Option<&RmsNorm>) -> Result<()> {
    match post_norm {
        None => Ok(()),
        Some(norm) => {
            norm.forward(rec, p.branch(), p.normed())?;
            add_inplace(rec, p.residual(), p.normed())
        }
    }
}

impl TextConfig {
    /// The attention problem of one layer (`sliding` for the windowed layers): `rows` queries
    /// from cache position `start` over the cache up to them, positions below `prefix_len` one
    /// bidirectional block (PaliGemma), each of `blocks` another (Gemma 3's images). Shared by
    /// the GPU path and the CPU reference.
    pub(crate) fn attention(
        &self,
        sliding: bool,
        rows: usize,
        start: usize,
        prefix_len: usize,
        blocks: Blocks,
    ) -> AttentionParams {
        let (nh, nkv, hd) = (
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
        );
        AttentionParams {
            prefix_len: prefix_len as u32,
            blocks,
            window: match (sliding, self.sliding_window) {
                (true, Some(w)) => w as u32,
                _ => 0,
            },
            scale: self.attention_scale(),
            softcap: self.attn_logit_softcapping.unwrap_or(0.0),
            ..AttentionParams::new(nh, nkv, hd, rows, start, start + rows)
        }
    }

    /// The mask of a prompt of `t` rows holding images at `images` (row ranges): PaliGemma's
    /// whole prompt is one bidirectional prefix (`prefix_len` t); Gemma 3's text is causal and
    /// each image a bidirectional block.
    pub(crate) fn prompt_mask(
        &self,
        t: usize,
        images: &[std::ops::Range<usize>],
    ) -> Result<(usize, Blocks)> {
        if let Some(r) = images.iter().find(|r| r.end > t) {
            return Err(crate::Error::invalid(format!(
                "image rows {r:?} do not fit a prompt of {t} tokens"
            )));
        }
        match self.decoder {
            Decoder::Gemma3 => Ok((0, Blocks::new(images)?)),
            _ => Ok((t, Blocks::default())),
        }
    }
}

/// The decoder's weights on the GPU.
pub struct TextModel {
    pub cfg: TextConfig,
    /// [vocab, H]: the token embedding and, tied (PaliGemma), the logits projection.
    pub embed_tokens: ChunkedTable,
    /// [vocab, H]: a separate logits projection, for untied checkpoints.
    pub lm_head: Option<ChunkedTable>,
    pub layers: Vec<TextLayer>,
    pub norm: RmsNorm, // [H]
    /// `[max_positions + 1, hd / 2]`: the full-attention layers' (every layer's for Gemma and
    /// Gemma 2).
    pub rope: RopeTables,
    /// Gemma 3: the sliding layers' own tables.
    pub sliding_rope: Option<RopeTables>,
    /// Text embeddings are multiplied by sqrt(hidden).
    pub embed_scale: f32,
}

impl TextModel {
    /// Loads the decoder, the checkpoint's norms given the roles of Gemma or Gemma 2.
    pub async fn load(l: &Loader<'_>, cfg: &TextConfig) -> Result<Self> {
        let (h, i, hd, eps) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.head_dim,
            cfg.rms_norm_eps,
        );
        let (qd, kvd) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
        let g2 = cfg.decoder.post_norms();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for li in 0..cfg.num_hidden_layers {
            let p = format!("text.layers.{li}");
            let lin = async |name: &str, r, c| l.linear(&format!("{p}.{name}"), r, c, false).await;
            let norm = async |name: &str| l.rms_norm(&format!("{p}.{name}"), h, eps).await;
            let gemma2_norm = async |name: &str| match g2 {
                true => norm(name).await.map(Some),
                false => Ok(None),
            };
            let head_norm =
                async |name: &str| l.rms_norm(&format!("{p}.self_attn.{name}"), hd, eps).await;
            let qk_norm = match cfg.qk_norm {
                true => Some((head_norm("q_norm").await?, head_norm("k_norm").await?)),
                false => None,
            };
            layers.push(TextLayer {
                attention: SelfAttention {
                    norm: norm("input_layernorm").await?,
                    q_proj: lin("self_attn.q_proj", qd, h).await?,
                    k_proj: lin("self_attn.k_proj", kvd, h).await?,
                    v_proj: lin("self_attn.v_proj", kvd, h).await?,
                    o_proj: lin("self_attn.o_proj", h, qd).await?,
                    qk_norm,
                    post_norm: gemma2_norm("post_attention_layernorm").await?,
                    sliding: cfg.sliding_layers[li],
                },
                mlp: Mlp {
                    norm: norm(if g2 {
                        "pre_feedforward_layernorm"
                    } else {
                        "post_attention_layernorm"
                    })
                    .await?,
                    gate_proj: lin("mlp.gate_proj", i, h).await?,
                    up_proj: lin("mlp.up_proj", i, h).await?,
                    down_proj: lin("mlp.down_proj", h, i).await?,
                    post_norm: gemma2_norm("post_feedforward_layernorm").await?,
                },
            });
        }
        let lm_head = if cfg.tie_word_embeddings {
            if l.has("text.lm_head.weight") {
                log::warn!("the config ties the embeddings: the checkpoint's lm_head is not used");
            }
            None
        } else {
            Some(l.table("text.lm_head.weight", cfg.vocab_size, h).await?)
        };
        Ok(TextModel {
            embed_tokens: l
                .table("text.embed_tokens.weight", cfg.vocab_size, h)
                .await?,
            lm_head,
            layers,
            norm: l.rms_norm("text.norm", h, eps).await?,
            // PaliGemma's positions are 1-based, so the tables have one row more than the
            // maximum.
            rope: RopeTables::new(l.gpu, hd, cfg.rope, cfg.max_position_embeddings + 1)?,
            sliding_rope: cfg
                .sliding_rope
                .map(|r| RopeTables::new(l.gpu, hd, r, cfg.max_position_embeddings + 1))
                .transpose()?,
            embed_scale: (h as f64).sqrt() as f32,
            cfg: cfg.clone(),
        })
    }

    /// Bytes of the matrices a decode step reads: every layer's projections and the logits
    /// table (the embedding gather reads one row of it).
    pub fn weight_bytes(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                let (a, m) = (&l.attention, &l.mlp);
                [
                    &a.q_proj,
                    &a.k_proj,
                    &a.v_proj,
                    &a.o_proj,
                    &m.gate_proj,
                    &m.up_proj,
                    &m.down_proj,
                ]
                .iter()
                .map(|p| p.weight.bytes())
                .sum::<u64>()
            })
            .sum();
        layers + self.output_table().bytes()
    }

    /// The table the logits are computed against.
    pub(crate) fn output_table(&self) -> &ChunkedTable {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }
}
