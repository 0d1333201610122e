//! The SigLIP vision tower (transformers' `SiglipVisionTransformer`, no pooling head):
//! patch embedding + positions, pre-norm encoder layers, post LayerNorm.

use super::Loader;
use super::config::VisionConfig;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops::activation::gelu_tanh;
use crate::ops::add::add_inplace;
use crate::ops::attention::{AttentionParams, attention};
use crate::ops::linear::linear;
use crate::ops::norm::layer_norm;
use crate::ops::patch_embed::{PatchGeometry, patch_embed};
use crate::ops::{Rows, Weight};

/// One encoder layer; field names follow the checkpoint's.
pub struct VisionLayer {
    pub layer_norm1: (wgpu::Buffer, wgpu::Buffer), // (w, b) [D]
    pub q_proj: (Weight, wgpu::Buffer),            // [D, D], [D]
    pub k_proj: (Weight, wgpu::Buffer),
    pub v_proj: (Weight, wgpu::Buffer),
    pub out_proj: (Weight, wgpu::Buffer),
    pub layer_norm2: (wgpu::Buffer, wgpu::Buffer),
    pub fc1: (Weight, wgpu::Buffer), // [I, D], [I]
    pub fc2: (Weight, wgpu::Buffer), // [D, I], [D]
}

/// The vision tower's weights on the GPU.
pub struct VisionTower {
    pub cfg: VisionConfig,
    pub patch_embedding: (wgpu::Buffer, wgpu::Buffer), // [D, C, P, P] f32, [D]
    pub position_embedding: wgpu::Buffer,              // [N, D]
    pub layers: Vec<VisionLayer>,
    pub post_layernorm: (wgpu::Buffer, wgpu::Buffer),
}

impl VisionTower {
    pub fn load(l: &Loader, cfg: &VisionConfig) -> Result<Self> {
        let (d, i, n) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_patches());
        let (c, p) = (cfg.num_channels, cfg.patch_size);
        let norm = |name: &str| -> Result<(wgpu::Buffer, wgpu::Buffer)> {
            Ok((
                l.f32(&format!("{name}.weight"), &[d])?,
                l.f32(&format!("{name}.bias"), &[d])?,
            ))
        };
        let lin = |name: &str, rows: usize, cols: usize| -> Result<(Weight, wgpu::Buffer)> {
            Ok((
                l.weight(&format!("{name}.weight"), rows, cols)?,
                l.f32(&format!("{name}.bias"), &[rows])?,
            ))
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for li in 0..cfg.num_hidden_layers {
            let pre = format!("vision.encoder.layers.{li}");
            layers.push(VisionLayer {
                layer_norm1: norm(&format!("{pre}.layer_norm1"))?,
                q_proj: lin(&format!("{pre}.self_attn.q_proj"), d, d)?,
                k_proj: lin(&format!("{pre}.self_attn.k_proj"), d, d)?,
                v_proj: lin(&format!("{pre}.self_attn.v_proj"), d, d)?,
                out_proj: lin(&format!("{pre}.self_attn.out_proj"), d, d)?,
                layer_norm2: norm(&format!("{pre}.layer_norm2"))?,
                fc1: lin(&format!("{pre}.mlp.fc1"), i, d)?,
                fc2: lin(&format!("{pre}.mlp.fc2"), d, i)?,
            });
        }
        Ok(VisionTower {
            cfg: cfg.clone(),
            patch_embedding: (
                l.f32("vision.embeddings.patch_embedding.weight", &[d, c, p, p])?,
                l.f32("vision.embeddings.patch_embedding.bias", &[d])?,
            ),
            position_embedding: l.f32("vision.embeddings.position_embedding.weight", &[n, d])?,
            layers,
            post_layernorm: norm("vision.post_layernorm")?,
        })
    }

    /// Encodes preprocessed pixels [C, S, S] into `out` [N, D] ("vision_out").
    pub fn encode(&self, gpu: &Gpu, pixels: &[f32], out: &wgpu::Buffer) -> Result<()> {
        let cfg = &self.cfg;
        let (d, i, n, s, c) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_patches(),
            cfg.image_size,
            cfg.num_channels,
        );
        if pixels.len() != c * s * s {
            return Err(Error::invalid(format!(
                "pixel buffer holds {} values, the vision tower wants {c} x {s} x {s}",
                pixels.len()
            )));
        }
        // Scratch, shapes in comments.
        let f = |label: &str, len: usize| gpu.storage(label, len as u64 * 4);
        let px = gpu.upload_f32("pixels", pixels)?; // [C, S, S]
        let x = f("vision x", n * d)?; // [N, D] residual stream
        let h = f("vision h", n * d)?; // [N, D] normed
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
        let eps = cfg.layer_norm_eps;
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

        let mut rec = gpu.recorder();
        patch_embed(
            &mut rec,
            &geo,
            &px,
            &self.patch_embedding.0,
            &self.patch_embedding.1,
            &self.position_embedding,
            &x,
        )?;
        for layer in &self.layers {
            layer_norm(
                &mut rec,
                &x,
                &layer.layer_norm1.0,
                &layer.layer_norm1.1,
                &h,
                n,
                d,
                eps,
            )?;
            linear(
                &mut rec,
                &h,
                dp,
                &layer.q_proj.0,
                Some(&layer.q_proj.1),
                &q,
                dp,
                n,
            )?;
            linear(
                &mut rec,
                &h,
                dp,
                &layer.k_proj.0,
                Some(&layer.k_proj.1),
                &k,
                dp,
                n,
            )?;
            linear(
                &mut rec,
                &h,
                dp,
                &layer.v_proj.0,
                Some(&layer.v_proj.1),
                &v,
                dp,
                n,
            )?;
            attention(&mut rec, &q, &k, &v, &a, &attn)?;
            linear(
                &mut rec,
                &a,
                dp,
                &layer.out_proj.0,
                Some(&layer.out_proj.1),
                &h,
                dp,
                n,
            )?;
            add_inplace(&mut rec, &x, &h, n * d)?;
            layer_norm(
                &mut rec,
                &x,
                &layer.layer_norm2.0,
                &layer.layer_norm2.1,
                &h,
                n,
                d,
                eps,
            )?;
            linear(
                &mut rec,
                &h,
                dp,
                &layer.fc1.0,
                Some(&layer.fc1.1),
                &m1,
                ip,
                n,
            )?;
            gelu_tanh(&mut rec, &m1, &m2, n * i)?;
            linear(
                &mut rec,
                &m2,
                ip,
                &layer.fc2.0,
                Some(&layer.fc2.1),
                &h,
                dp,
                n,
            )?;
            add_inplace(&mut rec, &x, &h, n * d)?;
        }
        layer_norm(
            &mut rec,
            &x,
            &self.post_layernorm.0,
            &self.post_layernorm.1,
            out,
            n,
            d,
            eps,
        )?;
        rec.submit("the vision tower")
    }
}
