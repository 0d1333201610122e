//! The whole PaliGemma on the CPU, composed from the kernels' references (`ops::*_ref`): plain
//! loops, f64 accumulation, f32 weights, no KV cache. Slow, so for small configs: it is the
//! oracle the GPU pipeline is compared with end to end, layer by layer if need be, beside the
//! transformers fixtures.

use std::path::Path;

use super::checkpoint::Checkpoint;
use super::config::PaliGemmaConfig;
use super::{Precision, transpose};
use crate::error::Result;
use crate::ops::activation::{gelu_tanh_gated_ref, gelu_tanh_ref, softcap_ref};
use crate::ops::add::add_ref;
use crate::ops::attention::{AttentionParams, attention_ref};
use crate::ops::avg_pool::avg_pool_ref;
use crate::ops::gather::gather_ref;
use crate::ops::linear::linear_ref;
use crate::ops::norm::{layer_norm_ref, rms_norm_ref};
use crate::ops::patch_embed::patch_embed_ref;
use crate::ops::rope::rope_ref;

/// A checkpoint and its config, evaluated on the CPU.
pub struct Reference {
    pub cfg: PaliGemmaConfig,
    ckpt: Checkpoint,
    /// The matrices are used as the GPU stores them at this precision (rounded to 16 bits,
    /// quantized), so the GPU can be checked at every precision to f32 rounding.
    precision: Precision,
}

impl Reference {
    /// Opens a checkpoint folder (config.json and safetensors) for the CPU, weights in f32.
    pub fn open(dir: &Path) -> Result<Reference> {
        Self::open_at(dir, Precision::F32)
    }

    /// [`open`](Self::open), with every matrix rounded or quantized as the GPU stores it at
    /// `precision`.
    pub fn open_at(dir: &Path, precision: Precision) -> Result<Reference> {
        Ok(Reference {
            cfg: PaliGemmaConfig::from_file(&dir.join("config.json"))?,
            ckpt: Checkpoint::open(dir)?,
            precision,
        })
    }

    /// Tensor `name` as the GPU holds it: matrices (the weights of linear layers and the
    /// token embedding; the position embedding stays f32) in the precision's format.
    fn t(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.ckpt.get(name, shape)?;
        let values = t.to_f32()?;
        let matrix = shape.len() == 2 && !name.contains("position_embedding");
        if !matrix {
            return Ok(values);
        }
        let format = self
            .precision
            .format_for(t.format()?, shape[1], super::quantizable(name));
        Ok(format.round_trip(&values))
    }

    /// y [m, out] = x [m, in] W^T (+ b) for the linear layer `name`.
    fn linear(
        &self,
        name: &str,
        x: &[f32],
        m: usize,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Vec<f32>> {
        let w = self.t(&format!("{name}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.t(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(linear_ref(x, &w, b.as_deref(), m, out, inp))
    }

    /// SigLIP: pixels [3, S, S] -> vision_out [N, D].
    pub fn vision(&self, pixels: &[f32]) -> Result<Vec<f32>> {
        let v = &self.cfg.vision;
        let (d, i, n, eps) = (
            v.hidden_size,
            v.intermediate_size,
            v.num_patches(),
            v.layer_norm_eps,
        );
        let (c, p) = (v.num_channels, v.patch_size);
        let geo = v.patch_geometry();
        let e = "vision.embeddings";
        let mut x = patch_embed_ref(
            &geo,
            pixels,
            &self.t(&format!("{e}.patch_embedding.weight"), &[d, c, p, p])?,
            &self.t(&format!("{e}.patch_embedding.bias"), &[d])?,
            &self.t(&format!("{e}.position_embedding.weight"), &[n, d])?,
        );
        let ln = |name: &str, x: &[f32]| -> Result<Vec<f32>> {
            let w = self.t(&format!("{name}.weight"), &[d])?;
            let b = self.t(&format!("{name}.bias"), &[d])?;
            Ok(layer_norm_ref(x, &w, &b, n, d, eps))
        };
        let attn = v.attention();
        for li in 0..v.num_hidden_layers {
            let pre = format!("vision.encoder.layers.{li}");
            let h = ln(&format!("{pre}.layer_norm1"), &x)?;
            let proj = |name: &str, h: &[f32]| {
                self.linear(&format!("{pre}.self_attn.{name}"), h, n, d, d, true)
            };
            let a = attention_ref(
                &proj("q_proj", &h)?,
                &proj("k_proj", &h)?,
                &proj("v_proj", &h)?,
                &attn,
            );
            x = add_ref(&x, &proj("out_proj", &a)?);
            let h = ln(&format!("{pre}.layer_norm2"), &x)?;
            let m = gelu_tanh_ref(&self.linear(&format!("{pre}.mlp.fc1"), &h, n, i, d, true)?);
            x = add_ref(
                &x,
                &self.linear(&format!("{pre}.mlp.fc2"), &m, n, d, i, true)?,
            );
        }
        ln("vision.post_layernorm", &x)
    }

    /// The projector: vision_out [N, Dv] -> image features [n, H] (n = N for PaliGemma; Gemma
    /// 3 average-pools the patch grid to its tokens per image, RMS-norms and projects them).
    pub fn project(&self, vision_out: &[f32]) -> Result<Vec<f32>> {
        let v = &self.cfg.vision;
        let (n, dv, h) = (v.num_patches(), v.hidden_size, self.cfg.text.hidden_size);
        let Some((side, k)) = self.cfg.pooling() else {
            return self.linear("projector.linear", vision_out, n, h, dv, true);
        };
        let pooled = avg_pool_ref(vision_out, side, k, dv);
        let m = self.cfg.tokens_per_image();
        let w = self.t("projector.mm_soft_emb_norm.weight", &[dv])?;
        let normed = rms_norm_ref(&pooled, &w, m, dv, v.layer_norm_eps);
        let proj = self.t("projector.mm_input_projection_weight", &[dv, h])?;
        Ok(linear_ref(
            &normed,
            &transpose(&proj, dv, h),
            None,
            m,
            h,
            dv,
        ))
    }

    /// The decoder over a whole sequence in one pass: logits [T, vocab] for `ids`, whose first
    /// rows are replaced by `image` ([n, H]); positions from `prefix_len` on are causal
    /// (PaliGemma).
    pub fn logits(&self, ids: &[u32], image: &[f32], prefix_len: usize) -> Result<Vec<f32>> {
        self.logits_with(ids, &[(0, image)], prefix_len)
    }

    /// [`logits`](Self::logits) with images placed anywhere: each `(at, rows)` replaces the
    /// rows from `at` on; the mask is that of a prompt of `prompt_len` rows holding them
    /// (PaliGemma's whole prompt bidirectional, Gemma 3's images each a block), then causal.
    pub fn logits_with(
        &self,
        ids: &[u32],
        images: &[(usize, &[f32])],
        prompt_len: usize,
    ) -> Result<Vec<f32>> {
        let c = &self.cfg.text;
        let (h, v, t) = (c.hidden_size, c.vocab_size, ids.len());
        let embed = self.t("text.embed_tokens.weight", &[v, h])?;
        let mut x = gather_ref(ids, &embed, h, (h as f64).sqrt() as f32);
        let mut ranges = Vec::new();
        for &(at, rows) in images {
            x[at * h..][..rows.len()].copy_from_slice(rows);
            ranges.push(at..at + rows.len() / h);
        }
        let (prefix_len, blocks) = c.prompt_mask(prompt_len.min(t), &ranges)?;
        for (li, &sliding) in c.sliding_layers.iter().enumerate() {
            let params = c.attention(sliding, t, 0, prefix_len, blocks);
            let a = self.attention_block(li, &x, &params)?;
            x = self.residual_add(li, "post_attention_layernorm", &x, &a)?;
            let norm = if c.decoder.post_norms() {
                "pre_feedforward_layernorm"
            } else {
                "post_attention_layernorm"
            };
            let hn = self.rms(&format!("text.layers.{li}.{norm}.weight"), &x, h)?;
            let m = self.mlp_block(li, &hn, t)?;
            x = self.residual_add(li, "post_feedforward_layernorm", &x, &m)?;
        }
        let hn = self.rms("text.norm.weight", &x, h)?;
        let head = if c.tie_word_embeddings {
            embed
        } else {
            self.t("text.lm_head.weight", &[v, h])?
        };
        let logits = linear_ref(&hn, &head, None, t, v, h);
        Ok(match c.final_logit_softcapping {
            Some(cap) => softcap_ref(&logits, cap),
            None => logits,
        })
    }

    /// RMSNorm `name` over rows of `n`.
    fn rms(&self, name: &str, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let eps = self.cfg.text.rms_norm_eps;
        Ok(rms_norm_ref(x, &self.t(name, &[n])?, x.len() / n, n, eps))
    }

    /// Layer `li`'s attention block on the residual stream `x` (its output projection
    /// included): norm, q/k/v, Gemma 3's QK-norm, RoPE from the first position, attention.
    fn attention_block(&self, li: usize, x: &[f32], params: &AttentionParams) -> Result<Vec<f32>> {
        let c = &self.cfg.text;
        let (h, hd, t) = (c.hidden_size, c.head_dim, x.len() / c.hidden_size);
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
        let p = format!("text.layers.{li}.self_attn");
        let hn = self.rms(&format!("text.layers.{li}.input_layernorm.weight"), x, h)?;
        let proj =
            |name: &str, out: usize| self.linear(&format!("{p}.{name}"), &hn, t, out, h, false);
        let (mut q, mut k) = (proj("q_proj", nh * hd)?, proj("k_proj", nkv * hd)?);
        if c.qk_norm {
            q = self.rms(&format!("{p}.q_norm.weight"), &q, hd)?;
            k = self.rms(&format!("{p}.k_norm.weight"), &k, hd)?;
        }
        let rope = c.rope_of(c.sliding_layers[li]);
        let pos0 = c.first_position();
        let q = rope_ref(&q, t, nh, hd, pos0, rope);
        let k = rope_ref(&k, t, nkv, hd, pos0, rope);
        let a = attention_ref(&q, &k, &proj("v_proj", nkv * hd)?, params);
        self.linear(&format!("{p}.o_proj"), &a, t, h, nh * hd, false)
    }

    /// Layer `li`'s MLP on the normed rows `hn`.
    fn mlp_block(&self, li: usize, hn: &[f32], t: usize) -> Result<Vec<f32>> {
        let (h, i) = (self.cfg.text.hidden_size, self.cfg.text.intermediate_size);
        let p = format!("text.layers.{li}.mlp");
        let gate = self.linear(&format!("{p}.gate_proj"), hn, t, i, h, false)?;
        let up = self.linear(&format!("{p}.up_proj"), hn, t, i, h, false)?;
        let g = gelu_tanh_gated_ref(&gate, &up);
        self.linear(&format!("{p}.down_proj"), &g, t, h, i, false)
    }

    /// x + branch, the branch first normed by `post_norm` where the decoder has post-norms.
    fn residual_add(
        &self,
        li: usize,
        post_norm: &str,
        x: &[f32],
        branch: &[f32],
    ) -> Result<Vec<f32>> {
        let h = self.cfg.text.hidden_size;
        Ok(if self.cfg.text.decoder.post_norms() {
            add_ref(
                x,
                &self.rms(&format!("text.layers.{li}.{post_norm}.weight"), branch, h)?,
            )
        } else {
            add_ref(x, branch)
        })
    }
}
