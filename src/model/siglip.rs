//! The SigLIP vision tower (transformers' `SiglipVisionTransformer`, no pooling head):
//! patch embedding + positions, pre-norm encoder layers, post LayerNorm.

use super::Loader;
use super::config::VisionConfig;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops::Rows;
use crate::ops::activation::gelu_tanh;
use crate::ops::attention::{AttentionParams, attention};
use crate::ops::linear::Linear;
use crate::ops::norm::LayerNorm;
use crate::ops::patch_embed::{PatchGeometry, patch_embed};

/// One encoder layer; field names follow the checkpoint's.
pub struct VisionLayer {
    pub layer_norm1: LayerNorm, // [D]
    pub q_proj: Linear,         // [D, D] + [D]
    pub k_proj: Linear,         // [D, D] + [D]
    pub v_proj: Linear,         // [D, D] + [D]
    pub out_proj: Linear,       // [D, D] + [D]
    pub layer_norm2: LayerNorm, // [D]
    pub fc1: Linear,            // [I, D] + [I]
    pub fc2: Linear,            // [D, I] + [D]
}

/// The vision tower's weights on the GPU.
pub struct VisionTower {
    pub cfg: VisionConfig,
    pub patch_weight: wgpu::Buffer,       // [D, C, P, P] f32
    pub patch_bias: wgpu::Buffer,         // [D]
    pub position_embedding: wgpu::Buffer, // [N, D]
    pub layers: Vec<VisionLayer>,
    pub post_layernorm: LayerNorm,
}

impl VisionTower {
    pub fn load(l: &Loader, cfg: &VisionConfig) -> Result<Self> {
        let (d, i, n) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_patches());
        let (c, p, eps) = (cfg.num_channels, cfg.patch_size, cfg.layer_norm_eps);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for li in 0..cfg.num_hidden_layers {
            let pre = format!("vision.encoder.layers.{li}");
            let attn = |name: &str| l.linear(&format!("{pre}.self_attn.{name}"), d, d, true);
            layers.push(VisionLayer {
                layer_norm1: l.layer_norm(&format!("{pre}.layer_norm1"), d, eps)?,
                q_proj: attn("q_proj")?,
                k_proj: attn("k_proj")?,
                v_proj: attn("v_proj")?,
                out_proj: attn("out_proj")?,
                layer_norm2: l.layer_norm(&format!("{pre}.layer_norm2"), d, eps)?,
                fc1: l.linear(&format!("{pre}.mlp.fc1"), i, d, true)?,
                fc2: l.linear(&format!("{pre}.mlp.fc2"), d, i, true)?,
            });
        }
        let emb = "vision.embeddings";
        Ok(VisionTower {
            cfg: cfg.clone(),
            patch_weight: l.f32(&format!("{emb}.patch_embedding.weight"), &[d, c, p, p])?,
            patch_bias: l.f32(&format!("{emb}.patch_embedding.bias"), &[d])?,
            position_embedding: l.f32(&format!("{emb}.position_embedding.weight"), &[n, d])?,
            layers,
            post_layernorm: l.layer_norm("vision.post_layernorm", d, eps)?,
        })
    }

    /// Encodes preprocessed pixels [C, S, S] into `out` [N, D] ("vision_out").
    pub fn encode(&self, gpu: &Gpu, pixels: &[f32], out: &wgpu::Buffer) -> Result<()> {
        let cfg = &self.cfg;
        let (d, i, n) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_patches());
        let (s, c) = (cfg.image_size, cfg.num_channels);
        if pixels.len() != c * s * s {
            return Err(Error::invalid(format!(
                "pixel buffer holds {} values, the vision tower wants {c} x {s} x {s}",
                pixels.len()
            )));
        }
        let f = |label: &str, len: usize| gpu.storage(label, len as u64 * 4);
        let px = gpu.upload_f32("pixels", pixels)?; // [C, S, S]
        let x = f("vision x", n * d)?; // [N, D] residual stream
        let h = f("vision h", n * d)?; // [N, D] normed / sublayer output
        let q = f("vision q", n * d)?; // [N, D]
        let k = f("vision k", n * d)?; // [N, D]
        let v = f("vision v", n * d)?; // [N, D]
        let a = f("vision attn", n * d)?; // [N, D]
        let m1 = f("vision fc1", n * i)?; // [N, I]
        let m2 = f("vision gelu", n * i)?; // [N, I]
        let geo = PatchGeometry {
            image_size: s,
            patch: cfg.patch_size,
            channels: c,
            dim: d,
        };
        let (dp, ip) = (Rows::packed(d), Rows::packed(i));
        let heads = cfg.num_attention_heads as u32;
        let hd = cfg.head_dim() as u32;
        let attn = AttentionParams {
            q_rows: n as u32,
            n_heads: heads,
            n_kv_heads: heads,
            head_dim: hd,
            q_stride: d as u32,
            kv_stride: d as u32,
            kv_len: n as u32,
            prefix_len: n as u32, // every patch sees every patch
            o_stride: d as u32,
            scale: 1.0 / (hd as f32).sqrt(),
            ..Default::default()
        };

        let mut recorder = gpu.recorder();
        let rec = &mut recorder;
        let pos = &self.position_embedding;
        patch_embed(
            rec,
            &geo,
            &px,
            &self.patch_weight,
            &self.patch_bias,
            pos,
            &x,
        )?;
        for layer in &self.layers {
            // x = x + out_proj(attn(layer_norm1(x)))
            layer.layer_norm1.forward(rec, &x, &h, n)?;
            layer.q_proj.forward(rec, &h, dp, &q, dp, n)?;
            layer.k_proj.forward(rec, &h, dp, &k, dp, n)?;
            layer.v_proj.forward(rec, &h, dp, &v, dp, n)?;
            attention(rec, &q, &k, &v, &a, &attn)?;
            layer.out_proj.forward_add(rec, &a, dp, &x, dp, n)?;
            // x = x + fc2(gelu_tanh(fc1(layer_norm2(x))))
            layer.layer_norm2.forward(rec, &x, &h, n)?;
            layer.fc1.forward(rec, &h, dp, &m1, ip, n)?;
            gelu_tanh(rec, &m1, &m2, n * i)?;
            layer.fc2.forward_add(rec, &m2, ip, &x, dp, n)?;
        }
        self.post_layernorm.forward(rec, &x, out, n)?;
        recorder.submit("the vision tower")
    }
}
