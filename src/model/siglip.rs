//! The SigLIP vision tower (transformers' `SiglipVisionTransformer`, no pooling head):
//! patch embedding + positions, pre-norm encoder layers, post LayerNorm.

use super::Loader;
use super::config::VisionConfig;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recorder};
use crate::ops::View;
use crate::ops::activation::gelu_tanh;
use crate::ops::attention::{AttentionKernel, AttentionParams, attention};
use crate::ops::linear::Linear;
use crate::ops::norm::LayerNorm;
use crate::ops::patch_embed::{PatchEmbedding, PatchGeometry};

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
    pub embeddings: PatchEmbedding,
    pub layers: Vec<VisionLayer>,
    pub post_layernorm: LayerNorm,
}

/// The tower's activations for one image, `[N, D]` each (`[N, I]` for the MLP).
struct VisionActivations {
    x: wgpu::Buffer, // residual stream
    h: wgpu::Buffer, // normed
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    a: wgpu::Buffer,  // attention output
    m1: wgpu::Buffer, // fc1
    m2: wgpu::Buffer, // gelu(fc1)
}

impl VisionConfig {
    /// The tower's attention problem: every patch sees every patch. Shared by the GPU path
    /// and the CPU reference.
    pub(crate) fn attention(&self) -> AttentionParams {
        let (heads, n) = (self.num_attention_heads, self.num_patches());
        AttentionParams::new(heads, heads, self.head_dim(), n, 0, n)
    }

    pub(crate) fn patch_geometry(&self) -> PatchGeometry {
        PatchGeometry {
            image_size: self.image_size,
            patch: self.patch_size,
            channels: self.num_channels,
            dim: self.hidden_size,
        }
    }
}

impl VisionLayer {
    /// x = x + out_proj(attention(layer_norm1(x))), then x = x + fc2(gelu(fc1(layer_norm2(x)))).
    fn forward(&self, rec: &mut Recorder, cfg: &VisionConfig, s: &VisionActivations) -> Result<()> {
        let (n, d, i) = (cfg.num_patches(), cfg.hidden_size, cfg.intermediate_size);
        let rows = |b| View::new(b, n, d);
        let (x, h, a) = (rows(&s.x), rows(&s.h), rows(&s.a));
        self.layer_norm1.forward(rec, x, h)?;
        self.q_proj.forward(rec, h, rows(&s.q))?;
        self.k_proj.forward(rec, h, rows(&s.k))?;
        self.v_proj.forward(rec, h, rows(&s.v))?;
        let kernel = AttentionKernel::Blocked;
        let (q, k, v) = (rows(&s.q), rows(&s.k), rows(&s.v));
        attention(rec, kernel, q, k, v, a, &cfg.attention())?;
        self.out_proj.forward_add(rec, a, x)?;
        let (m1, m2) = (View::new(&s.m1, n, i), View::new(&s.m2, n, i));
        self.layer_norm2.forward(rec, x, h)?;
        self.fc1.forward(rec, h, m1)?;
        gelu_tanh(rec, m1, m2)?;
        self.fc2.forward_add(rec, m2, x)
    }
}

impl VisionTower {
    pub async fn load(l: &Loader<'_>, cfg: &VisionConfig) -> Result<Self> {
        let (d, i, n) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_patches());
        let (c, p, eps) = (cfg.num_channels, cfg.patch_size, cfg.layer_norm_eps);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for li in 0..cfg.num_hidden_layers {
            let pre = format!("vision.encoder.layers.{li}");
            let attn = async |name: &str| {
                l.linear(&format!("{pre}.self_attn.{name}"), d, d, true)
                    .await
            };
            layers.push(VisionLayer {
                layer_norm1: l.layer_norm(&format!("{pre}.layer_norm1"), d, eps).await?,
                q_proj: attn("q_proj").await?,
                k_proj: attn("k_proj").await?,
                v_proj: attn("v_proj").await?,
                out_proj: attn("out_proj").await?,
                layer_norm2: l.layer_norm(&format!("{pre}.layer_norm2"), d, eps).await?,
                fc1: l.linear(&format!("{pre}.mlp.fc1"), i, d, true).await?,
                fc2: l.linear(&format!("{pre}.mlp.fc2"), d, i, true).await?,
            });
        }
        let emb = "vision.embeddings";
        let values =
            async |name: &str, shape: &[usize]| l.values(&format!("{emb}.{name}"), shape).await;
        Ok(VisionTower {
            cfg: cfg.clone(),
            embeddings: PatchEmbedding::new(
                l.gpu,
                cfg.patch_geometry(),
                &values("patch_embedding.weight", &[d, c, p, p]).await?,
                &values("patch_embedding.bias", &[d]).await?,
                &values("position_embedding.weight", &[n, d]).await?,
            )?,
            layers,
            post_layernorm: l.layer_norm("vision.post_layernorm", d, eps).await?,
        })
    }

    /// Encodes preprocessed pixels [C, S, S] into `out` [N, D] ("vision_out"), a submission
    /// per layer so that no command buffer runs long enough to trip a driver watchdog (and,
    /// when the caller polls the device, a return to its frame loop between layers).
    /// The pixels are on the GPU, `[3, S, S]` f32.
    pub async fn encode_buffer(
        &self,
        gpu: &Gpu,
        pixels: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (d, i, n) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_patches());
        let (size, c) = (cfg.image_size, cfg.num_channels);
        if pixels.size() < (c * size * size * 4) as u64 {
            return Err(Error::invalid(format!(
                "the pixel buffer holds {} bytes, the vision tower wants {c} x {size} x {size} f32",
                pixels.size()
            )));
        }
        let f = |label: &str, len: usize| gpu.storage(label, len as u64 * 4);
        let s = VisionActivations {
            x: f("vision x", n * d)?,
            h: f("vision h", n * d)?,
            q: f("vision q", n * d)?,
            k: f("vision k", n * d)?,
            v: f("vision v", n * d)?,
            a: f("vision attn", n * d)?,
            m1: f("vision fc1", n * i)?,
            m2: f("vision gelu", n * i)?,
        };
        let mut rec = gpu.recorder();
        self.embeddings
            .forward(&mut rec, pixels, View::new(&s.x, n, d))?;
        for (li, layer) in self.layers.iter().enumerate() {
            layer.forward(&mut rec, cfg, &s)?;
            rec.flush(&format!("vision layer {li}"))?;
            gpu.between_layers().await;
        }
        let x = View::new(&s.x, n, d);
        self.post_layernorm
            .forward(&mut rec, x, View::new(out, n, d))?;
        rec.submit("the vision tower")
    }
}
