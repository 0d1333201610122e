//! `config.json` as published on the hub, resolved into typed configs. serde reads the JSON into
//! private structs that mirror it (unknown fields ignored: hub configs carry dozens we don't
//! use); resolving them applies transformers' defaults (`SiglipVisionConfig`, `GemmaConfig`,
//! `Gemma2Config`), so the terse configs people actually have (most fields missing) load as
//! transformers would load them.

use std::path::Path;
use std::result::Result as StdResult;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

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

/// Which decoder: Gemma (PaliGemma) or Gemma 2 (PaliGemma 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoder {
    Gemma,
    Gemma2,
}

/// The Gemma or Gemma 2 decoder.
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
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
    /// Gemma 2: scores are scaled by query_pre_attn_scalar^-0.5 instead of head_dim^-0.5.
    pub query_pre_attn_scalar: Option<f32>,
    /// Gemma 2: c * tanh(s / c) on attention scores.
    pub attn_logit_softcapping: Option<f32>,
    /// Gemma 2: c * tanh(l / c) on the final logits.
    pub final_logit_softcapping: Option<f32>,
    /// Gemma 2: window of the sliding-attention layers.
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
}

/// A whole PaliGemma.
#[derive(Clone, Debug, PartialEq)]
pub struct PaliGemmaConfig {
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub image_token_index: u32,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
}

// The raw structs hold `Option`s, not `#[serde(default = ...)]` values: serde's defaults only
// cover absent fields, but transformers writes `null` for "the default" too, and most of
// Gemma's defaults depend on `text_config.model_type`, which a field default cannot see. The
// defaults are applied in `RawConfig::resolve`, all in one place.

/// The top level of `config.json`.
#[derive(Deserialize)]
struct RawConfig {
    vision_config: Option<RawVision>,
    text_config: Option<RawText>,
    /// Older configs give the vocabulary only here.
    vocab_size: Option<usize>,
    image_token_index: Option<u32>,
    /// The newer spelling of `image_token_index`.
    image_token_id: Option<u32>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
    /// PaliGemmaForConditionalGeneration reads the top-level flag, not text_config's.
    tie_word_embeddings: Option<bool>,
}

/// transformers also accepts a list of end tokens; the first is `<eos>`.
#[derive(Deserialize)]
#[serde(untagged, expecting = "expected a token id or a list of them")]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// `vision_config`. Errors say "expected an object", not serde's "struct RawVision", a name
/// the user never wrote.
#[derive(Default, Deserialize)]
#[serde(expecting = "an object")]
struct RawVision {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_channels: Option<usize>,
    image_size: Option<usize>,
    patch_size: Option<usize>,
    layer_norm_eps: Option<f32>,
    hidden_act: Option<String>,
}

/// `text_config`.
#[derive(Default, Deserialize)]
#[serde(expecting = "an object")]
struct RawText {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    /// transformers 5 nests RoPE's base here; it wins over the older top-level `rope_theta`.
    rope_parameters: Option<RawRope>,
    max_position_embeddings: Option<usize>,
    // Gemma 2's switches: absent takes Gemma2Config's default, `null` turns them off.
    #[serde(default, deserialize_with = "explicit")]
    query_pre_attn_scalar: Option<Option<f32>>,
    #[serde(default, deserialize_with = "explicit")]
    attn_logit_softcapping: Option<Option<f32>>,
    #[serde(default, deserialize_with = "explicit")]
    final_logit_softcapping: Option<Option<f32>>,
    #[serde(default, deserialize_with = "explicit")]
    sliding_window: Option<Option<usize>>,
    layer_types: Option<Vec<String>>,
    /// Gemma reads `hidden_activation` only, whatever `hidden_act` says.
    hidden_activation: Option<String>,
}

/// `text_config.rope_parameters`.
#[derive(Default, Deserialize)]
#[serde(expecting = "an object")]
struct RawRope {
    rope_theta: Option<f32>,
}

/// Tells an explicit `null` (`Some(None)`) from an absent field (`None`); a plain `Option`
/// reads both as `None`.
fn explicit<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> StdResult<Option<Option<T>>, D::Error> {
    Option::deserialize(d).map(Some)
}

/// Every GELU spelling transformers maps to the tanh approximation (gelu_new and gelu_fast are
/// the same formula); anything else would silently compute something different.
fn tanh_gelu(name: Option<&str>, what: &str) -> StdResult<(), String> {
    match name.unwrap_or("gelu_pytorch_tanh") {
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(()),
        other => Err(format!(
            "{what} activation `{other}` is not supported (gelu_pytorch_tanh)"
        )),
    }
}

impl RawConfig {
    /// Applies transformers' defaults; the error is the message for `Error::Config`.
    fn resolve(self) -> StdResult<PaliGemmaConfig, String> {
        let v = self.vision_config.unwrap_or_default();
        let t = self.text_config.unwrap_or_default();
        tanh_gelu(v.hidden_act.as_deref(), "vision_config")?;
        tanh_gelu(t.hidden_activation.as_deref(), "text_config")?;
        let vision = VisionConfig {
            hidden_size: v.hidden_size.unwrap_or(768),
            intermediate_size: v.intermediate_size.unwrap_or(3072),
            num_hidden_layers: v.num_hidden_layers.unwrap_or(12),
            num_attention_heads: v.num_attention_heads.unwrap_or(12),
            num_channels: v.num_channels.unwrap_or(3),
            image_size: v.image_size.unwrap_or(224),
            patch_size: v.patch_size.unwrap_or(16),
            layer_norm_eps: v.layer_norm_eps.unwrap_or(1e-6),
        };
        let decoder = match t.model_type.as_deref().unwrap_or("gemma") {
            "gemma" => Decoder::Gemma,
            "gemma2" => Decoder::Gemma2,
            other => {
                return Err(format!(
                    "text_config.model_type `{other}` is not supported (gemma, gemma2)"
                ));
            }
        };
        let g2 = decoder == Decoder::Gemma2;
        // Gemma's or Gemma 2's default; Gemma 2's switches are off on Gemma.
        let pick = |gemma: usize, gemma2: usize| if g2 { gemma2 } else { gemma };
        let switch =
            |x: Option<Option<f32>>, default: f32| g2.then(|| x.unwrap_or(Some(default))).flatten();
        let rope_theta = t
            .rope_parameters
            .and_then(|r| r.rope_theta)
            .or(t.rope_theta);
        let heads = t.num_attention_heads.unwrap_or(pick(16, 8));
        let layers = t.num_hidden_layers.unwrap_or(pick(28, 26));
        let sliding_layers = match t.layer_types {
            Some(kinds) if g2 => kinds.iter().map(|k| k == "sliding_attention").collect(),
            // Gemma 2 alternates, starting with a sliding layer.
            _ => (0..layers).map(|i| g2 && i % 2 == 0).collect(),
        };
        let text = TextConfig {
            decoder,
            vocab_size: t.vocab_size.or(self.vocab_size).unwrap_or(257_216),
            hidden_size: t.hidden_size.unwrap_or(pick(3072, 2304)),
            intermediate_size: t.intermediate_size.unwrap_or(pick(24576, 9216)),
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: t.num_key_value_heads.unwrap_or(pick(heads, 4)),
            head_dim: t.head_dim.unwrap_or(256),
            rms_norm_eps: t.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10000.0),
            max_position_embeddings: t.max_position_embeddings.unwrap_or(8192),
            query_pre_attn_scalar: switch(t.query_pre_attn_scalar, 256.0),
            attn_logit_softcapping: switch(t.attn_logit_softcapping, 50.0),
            final_logit_softcapping: switch(t.final_logit_softcapping, 30.0),
            sliding_window: g2.then(|| t.sliding_window.unwrap_or(Some(4096))).flatten(),
            sliding_layers,
            tie_word_embeddings: self.tie_word_embeddings != Some(false),
        };
        let image_token = self.image_token_index.or(self.image_token_id);
        Ok(PaliGemmaConfig {
            vision,
            text,
            image_token_index: image_token.unwrap_or(257_152),
            bos_token_id: self.bos_token_id.unwrap_or(2),
            eos_token_id: match self.eos_token_id {
                Some(TokenIds::One(id)) => id,
                Some(TokenIds::Many(ids)) => ids.first().copied().unwrap_or(1),
                None => 1,
            },
        })
    }
}

impl PaliGemmaConfig {
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
        if self.image_token_index as usize >= t.vocab_size {
            return bad(format!(
                "image_token_index {} is outside the vocabulary of {}",
                self.image_token_index, t.vocab_size
            ));
        }
        Ok(())
    }
}

impl PaliGemmaConfig {
    /// google/paligemma-3b-pt-{224,448,896}: SigLIP So400m/14 + Gemma 2B.
    pub fn paligemma_3b(resolution: usize) -> Self {
        PaliGemmaConfig {
            vision: VisionConfig::so400m_14(resolution),
            text: TextConfig {
                decoder: Decoder::Gemma,
                vocab_size: 257_216,
                hidden_size: 2048,
                intermediate_size: 16384,
                num_hidden_layers: 18,
                num_attention_heads: 8,
                num_key_value_heads: 1,
                head_dim: 256,
                rms_norm_eps: 1e-6,
                rope_theta: 10000.0,
                max_position_embeddings: 8192,
                query_pre_attn_scalar: None,
                attn_logit_softcapping: None,
                final_logit_softcapping: None,
                sliding_window: None,
                sliding_layers: vec![false; 18],
                tie_word_embeddings: true,
            },
            image_token_index: 257_152,
            bos_token_id: 2,
            eos_token_id: 1,
        }
    }

    /// google/paligemma2-3b-pt-{224,448,896}: SigLIP So400m/14 + Gemma 2 2B.
    pub fn paligemma2_3b(resolution: usize) -> Self {
        let mut c = Self::paligemma_3b(resolution);
        c.text = TextConfig {
            decoder: Decoder::Gemma2,
            hidden_size: 2304,
            intermediate_size: 9216,
            num_hidden_layers: 26,
            num_key_value_heads: 4,
            query_pre_attn_scalar: Some(256.0),
            attn_logit_softcapping: Some(50.0),
            final_logit_softcapping: Some(30.0),
            sliding_window: Some(4096),
            sliding_layers: (0..26).map(|i| i % 2 == 0).collect(),
            ..c.text
        };
        c
    }

    /// google/paligemma2-10b-pt-{224,448,896}: SigLIP So400m/14 + Gemma 2 9B.
    pub fn paligemma2_10b(resolution: usize) -> Self {
        let mut c = Self::paligemma2_3b(resolution);
        c.text = TextConfig {
            hidden_size: 3584,
            intermediate_size: 14336,
            num_hidden_layers: 42,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            sliding_layers: (0..42).map(|i| i % 2 == 0).collect(),
            ..c.text
        };
        c
    }

    /// google/paligemma2-28b-pt-{224,448,896}: SigLIP So400m/14 + Gemma 2 27B (head_dim 128,
    /// scores scaled by (hidden / heads)^-0.5 = 144^-0.5).
    pub fn paligemma2_28b(resolution: usize) -> Self {
        let mut c = Self::paligemma2_3b(resolution);
        c.text = TextConfig {
            hidden_size: 4608,
            intermediate_size: 36864,
            num_hidden_layers: 46,
            num_attention_heads: 32,
            num_key_value_heads: 16,
            head_dim: 128,
            query_pre_attn_scalar: Some(144.0),
            sliding_layers: (0..46).map(|i| i % 2 == 0).collect(),
            ..c.text
        };
        c
    }
}

impl VisionConfig {
    /// SigLIP So400m with 14px patches at `resolution` px.
    pub fn so400m_14(resolution: usize) -> Self {
        VisionConfig {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_hidden_layers: 27,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: resolution,
            patch_size: 14,
            layer_norm_eps: 1e-6,
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
