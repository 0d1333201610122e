//! The typed configs of a model (PaliGemma, PaliGemma 2 or Gemma 3), resolved from
//! `config.json` as published (`hub_config.rs` reads it) and checked against what the kernels
//! support.

use std::path::Path;

use serde_json::Value;

use super::hub_config::RawConfig;

use crate::error::{Error, Result};

/// The SigLIP vision tower.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f32,
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    /// (image_size / patch_size)^2: 256 at 224px with 14px patches.
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

/// Which decoder: Gemma (PaliGemma), Gemma 2 (PaliGemma 2) or Gemma 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoder {
    Gemma,
    Gemma2,
    Gemma3,
}

impl Decoder {
    /// Gemma 2 and 3 norm each block's output before the residual add (four norms a layer).
    pub fn post_norms(self) -> bool {
        self != Decoder::Gemma
    }
}

pub use crate::ops::rope::Rope;

/// The Gemma, Gemma 2 or Gemma 3 decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub decoder: Decoder,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    /// RoPE of the full-attention layers (every layer of Gemma and Gemma 2).
    pub rope: Rope,
    /// Gemma 3: the sliding layers' own RoPE (`rope_local_base_freq`, unscaled).
    pub sliding_rope: Option<Rope>,
    /// Gemma 3: queries and keys are RMS-normed over head_dim before RoPE.
    pub qk_norm: bool,
    pub max_position_embeddings: usize,
    /// Gemma 2: scores are scaled by query_pre_attn_scalar^-0.5 instead of head_dim^-0.5.
    pub query_pre_attn_scalar: Option<f32>,
    /// Gemma 2: c * tanh(s / c) on attention scores.
    pub attn_logit_softcapping: Option<f32>,
    /// Gemma 2: c * tanh(l / c) on the final logits.
    pub final_logit_softcapping: Option<f32>,
    /// Gemma 2 and 3: window of the sliding-attention layers.
    pub sliding_window: Option<usize>,
    /// Per layer: true where the layer uses the sliding window.
    pub sliding_layers: Vec<bool>,
    /// The logits use the token embedding (PaliGemma's case) rather than a separate `lm_head`.
    pub tie_word_embeddings: bool,
}

impl TextConfig {
    /// Weight elements one decode step reads: every layer's matrices and the tied embedding
    /// (for the logits). Times the bytes per element, over the bandwidth, is the decode floor.
    pub fn decode_weight_elements(&self) -> usize {
        let (h, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let attn = h * hd * (2 * self.num_attention_heads + 2 * self.num_key_value_heads);
        self.num_hidden_layers * (attn + 3 * h * i) + self.vocab_size * h
    }

    /// The attention score scale.
    pub fn attention_scale(&self) -> f32 {
        let d = self.query_pre_attn_scalar.unwrap_or(self.head_dim as f32);
        1.0 / d.sqrt()
    }

    /// The position of a sequence's first token: PaliGemma numbers positions from 1 (its
    /// transformers model adds 1 to the cache positions), Gemma 3 from 0.
    pub fn first_position(&self) -> usize {
        match self.decoder {
            Decoder::Gemma3 => 0,
            _ => 1,
        }
    }

    /// Gemma 3: the slots of layer `li`'s KV cache when it is a ring of the window's last
    /// keys (a sliding layer of a state longer than the window); None when it holds every
    /// position. A key the window has left is never seen again by a later query: Gemma 3's
    /// mask is AND(window, ..), so only its last `window` positions matter after a prompt.
    /// (PaliGemma 2's prefix sees its whole self whatever the window, so it keeps them all.)
    pub fn ring_slots(&self, li: usize, capacity: usize) -> Option<usize> {
        self.ring_window()
            .filter(|&w| self.sliding_layers[li] && w < capacity)
    }

    /// Gemma 3's window, the most rows a sliding layer's cache keeps (see
    /// [`ring_slots`](Self::ring_slots)); None for the decoders that keep every position.
    pub fn ring_window(&self) -> Option<usize> {
        match self.decoder {
            Decoder::Gemma3 => self.sliding_window,
            _ => None,
        }
    }

    /// The RoPE of a sliding (`true`) or full-attention layer.
    pub fn rope_of(&self, sliding: bool) -> Rope {
        match (sliding, self.sliding_rope) {
            (true, Some(r)) => r,
            _ => self.rope,
        }
    }
}

/// Gemma 3's images: SigLIP's patch grid average-pooled to `tokens_per_image` rows, each
/// image's rows wrapped in `<start_of_image>` .. `<end_of_image>` in the prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageTokens {
    pub tokens_per_image: usize,
    pub boi_token_id: u32,
    pub eoi_token_id: u32,
}

/// A whole PaliGemma.
#[derive(Clone, Debug, PartialEq)]
pub struct PaliGemmaConfig {
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub image_token_index: u32,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
    /// Every id that ends an answer: `<eos>` and, for Gemma 3, `<end_of_turn>`.
    pub stop_token_ids: Vec<u32>,
    /// Gemma 3 (None: PaliGemma, one projected row per patch, the image rows first).
    pub image_tokens: Option<ImageTokens>,
}

impl PaliGemmaConfig {
    /// Gemma 3: the side of SigLIP's patch grid and the tile its average pool takes (64 and 4
    /// for the published models); `check` refuses a config whose pool is not exact.
    pub fn pooling(&self) -> Option<(usize, usize)> {
        let it = self.image_tokens.as_ref()?;
        let side = self.vision.image_size / self.vision.patch_size.max(1);
        let out_side = (it.tokens_per_image as f64).sqrt() as usize;
        Some((side, side.checked_div(out_side).unwrap_or(0)))
    }

    /// Rows an image takes in the prompt: one per patch (PaliGemma), or Gemma 3's pooled
    /// `mm_tokens_per_image`.
    pub fn tokens_per_image(&self) -> usize {
        self.image_tokens
            .as_ref()
            .map_or(self.vision.num_patches(), |t| t.tokens_per_image)
    }

    /// Reads and resolves `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Resolves a config from JSON text; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let bad = |message: String| Error::Config {
            path: origin.into(),
            message,
        };
        // Parsing to a `Value` first tells broken JSON from a wrong field, and keeps the
        // messages free of line numbers that would point into a one-line string.
        let root: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        if !root.is_object() {
            return Err(bad("must be a JSON object".into()));
        }
        let raw: RawConfig = serde_path_to_error::deserialize(root)
            .map_err(|e| bad(format!("field `{}`: {}", e.path(), e.inner())))?;
        let cfg = raw.resolve().map_err(bad)?;
        cfg.check(origin)?;
        Ok(cfg)
    }

    /// Checks that the sizes are consistent and within what the kernels support; `origin`
    /// names the config in errors. Run by `from_json`, and on configs built in code.
    pub fn check(&self, origin: &str) -> Result<()> {
        let bad = |message: String| {
            Err(Error::Config {
                path: origin.into(),
                message,
            })
        };
        let (v, t) = (&self.vision, &self.text);
        if v.num_attention_heads == 0 || v.hidden_size % v.num_attention_heads != 0 {
            return bad(format!(
                "vision hidden_size {} is not a multiple of num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if v.patch_size == 0 || v.image_size % v.patch_size != 0 {
            return bad(format!(
                "vision image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if t.num_key_value_heads == 0 || t.num_attention_heads % t.num_key_value_heads != 0 {
            return bad(format!(
                "text num_attention_heads {} is not a multiple of num_key_value_heads {}",
                t.num_attention_heads, t.num_key_value_heads
            ));
        }
        if t.head_dim == 0 || t.head_dim % 2 != 0 {
            return bad(format!("text head_dim {} must be even (RoPE)", t.head_dim));
        }
        let max_hd = crate::ops::attention::MAX_HEAD_DIM as usize;
        if t.head_dim > max_hd || v.head_dim() > max_hd {
            return bad(format!(
                "head_dim {} (text) / {} (vision) is over the attention kernels' {max_hd}",
                t.head_dim,
                v.head_dim()
            ));
        }
        if t.num_hidden_layers == 0 || v.num_hidden_layers == 0 || t.vocab_size == 0 {
            return bad("a model needs layers and a vocabulary".into());
        }
        if t.sliding_layers.len() != t.num_hidden_layers {
            return bad(format!(
                "text layer_types lists {} layers, num_hidden_layers is {}",
                t.sliding_layers.len(),
                t.num_hidden_layers
            ));
        }
        if let Some(it) = &self.image_tokens {
            let side = v.image_size / v.patch_size;
            let out = (it.tokens_per_image as f64).sqrt() as usize;
            if out == 0 || out * out != it.tokens_per_image || side % out != 0 {
                return bad(format!(
                    "mm_tokens_per_image {} is not a square that pools the {side}x{side} patch grid",
                    it.tokens_per_image
                ));
            }
        }
        if self.image_token_index as usize >= t.vocab_size {
            return bad(format!(
                "image_token_index {} is outside the vocabulary of {}",
                self.image_token_index, t.vocab_size
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
