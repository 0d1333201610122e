//! The whole PaliGemma on the CPU, composed from the kernels' references (`ops::*_ref`): plain
//! loops, f64 accumulation, f32 weights, no KV cache. Slow, so for small configs: it is the
//! oracle the GPU pipeline is compared with end to end, layer by layer if need be, beside the
//! transformers fixtures.

use std::path::Path;

use super::Precision;
use super::checkpoint::Checkpoint;
use super::config::{Decoder, PaliGemmaConfig};
use crate::error::Result;
use crate::ops::activation::{gelu_tanh_gated_ref, gelu_tanh_ref, softcap_ref};
use crate::ops::add::add_ref;
use crate::ops::attention::attention_ref;
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

    /// The projector: vision_out [N, Dv] -> image features [N, H].
    pub fn project(&self, vision_out: &[f32]) -> Result<Vec<f32>> {
        let (n, dv, h) = (
            self.cfg.vision.num_patches(),
            self.cfg.vision.hidden_size,
            self.cfg.text.hidden_size,
        );
        self.linear("projector.linear", vision_out, n, h, dv, true)
    }

    /// The decoder over a whole sequence in one pass: logits [T, vocab] for `ids`, whose first
    /// rows are replaced by `image` ([n, H]); positions from `prefix_len` on are causal.
    pub fn logits(&self, ids: &[u32], image: &[f32], prefix_len: usize) -> Result<Vec<f32>> {
        let c = &self.cfg.text;
        let (h, i, hd, eps, v) = (
            c.hidden_size,
            c.intermediate_size,
            c.head_dim,
            c.rms_norm_eps,
            c.vocab_size,
        );
        let (nh, nkv, t) = (c.num_attention_heads, c.num_key_value_heads, ids.len());
        let (qd, kvd) = (nh * hd, nkv * hd);
        let embed = self.t("text.embed_tokens.weight", &[v, h])?;
        let mut x = gather_ref(ids, &embed, h, (h as f64).sqrt() as f32);
        x[..image.len()].copy_from_slice(image);
        let rms = |name: &str, x: &[f32]| -> Result<Vec<f32>> {
            Ok(rms_norm_ref(x, &self.t(name, &[h])?, t, h, eps))
        };
        for (li, &sliding) in c.sliding_layers.iter().enumerate() {
            let p = format!("text.layers.{li}");
            let hn = rms(&format!("{p}.input_layernorm.weight"), &x)?;
            let proj = |name: &str, out: usize| {
                self.linear(&format!("{p}.self_attn.{name}"), &hn, t, out, h, false)
            };
            let q = rope_ref(&proj("q_proj", qd)?, t, nh, hd, 1, c.rope_theta);
            let k = rope_ref(&proj("k_proj", kvd)?, t, nkv, hd, 1, c.rope_theta);
            let params = c.attention(sliding, t, 0, prefix_len);
            let a = attention_ref(&q, &k, &proj("v_proj", kvd)?, &params);
            let o = self.linear(&format!("{p}.self_attn.o_proj"), &a, t, h, qd, false)?;
            let gemma2 = c.decoder == Decoder::Gemma2;
            x = if gemma2 {
                add_ref(
                    &x,
                    &rms(&format!("{p}.post_attention_layernorm.weight"), &o)?,
                )
            } else {
                add_ref(&x, &o)
            };
            let norm = if gemma2 {
                "pre_feedforward_layernorm"
            } else {
                "post_attention_layernorm"
            };
            let hn = rms(&format!("{p}.{norm}.weight"), &x)?;
            let gate = self.linear(&format!("{p}.mlp.gate_proj"), &hn, t, i, h, false)?;
            let up = self.linear(&format!("{p}.mlp.up_proj"), &hn, t, i, h, false)?;
            let d = self.linear(
                &format!("{p}.mlp.down_proj"),
                &gelu_tanh_gated_ref(&gate, &up),
                t,
                h,
                i,
                false,
            )?;
            x = if gemma2 {
                add_ref(
                    &x,
                    &rms(&format!("{p}.post_feedforward_layernorm.weight"), &d)?,
                )
            } else {
                add_ref(&x, &d)
            };
        }
        let hn = rms("text.norm.weight", &x)?;
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
}
