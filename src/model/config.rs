//! `config.json` as published on the hub, resolved into typed configs. Absent fields take
//! transformers' defaults (`SiglipVisionConfig`, `GemmaConfig`, `Gemma2Config`), so the terse
//! configs people actually have (most fields missing) load as transformers would load them.

use std::path::Path;

use serde_json::{Map, Value};

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

struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a str,
}

impl Fields<'_> {
    fn err(&self, key: &str, what: &str) -> Error {
        Error::Config {
            path: self.path.into(),
            message: format!("field `{key}` {what}"),
        }
    }
    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| self.err(key, &format!("must be a non-negative integer, got {v}"))),
        }
    }
    fn f32_opt(&self, key: &str, default: Option<f32>) -> Result<Option<f32>> {
        match self.obj.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| self.err(key, &format!("must be a number, got {v}"))),
        }
    }
    fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        Ok(self.f32_opt(key, Some(default))?.unwrap_or(default))
    }
    fn str_or<'s>(&'s self, key: &str, default: &'s str) -> &'s str {
        self.obj.get(key).and_then(Value::as_str).unwrap_or(default)
    }
    fn sub(&self, key: &str) -> Result<Map<String, Value>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m.clone()),
            Some(v) => Err(self.err(key, &format!("must be an object, got {v}"))),
        }
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
        let root: Value = serde_json::from_str(text).map_err(|e| Error::Config {
            path: origin.into(),
            message: format!("not valid JSON: {e}"),
        })?;
        let root = root.as_object().ok_or_else(|| Error::Config {
            path: origin.into(),
            message: "must be a JSON object".into(),
        })?;
        let top = Fields {
            obj: root,
            path: origin,
        };
        let vobj = top.sub("vision_config")?;
        let tobj = top.sub("text_config")?;
        let v = Fields {
            obj: &vobj,
            path: origin,
        };
        let t = Fields {
            obj: &tobj,
            path: origin,
        };

        // Every GELU spelling transformers maps to the tanh approximation (gelu_new and gelu_fast
        // are the same formula); anything else would silently compute something different.
        let tanh_gelu = |obj: &Map<String, Value>, keys: &[&str], what: &str| -> Result<()> {
            let name = keys
                .iter()
                .find_map(|k| obj.get(*k).and_then(Value::as_str))
                .unwrap_or("gelu_pytorch_tanh");
            match name {
                "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(()),
                other => Err(Error::Config {
                    path: origin.into(),
                    message: format!(
                        "{what} activation `{other}` is not supported (gelu_pytorch_tanh)"
                    ),
                }),
            }
        };
        tanh_gelu(&vobj, &["hidden_act"], "vision_config")?;
        // Gemma reads `hidden_activation` only (absent: the tanh GELU), whatever `hidden_act` says.
        tanh_gelu(&tobj, &["hidden_activation"], "text_config")?;

        let vision = VisionConfig {
            hidden_size: v.usize_or("hidden_size", 768)?,
            intermediate_size: v.usize_or("intermediate_size", 3072)?,
            num_hidden_layers: v.usize_or("num_hidden_layers", 12)?,
            num_attention_heads: v.usize_or("num_attention_heads", 12)?,
            num_channels: v.usize_or("num_channels", 3)?,
            image_size: v.usize_or("image_size", 224)?,
            patch_size: v.usize_or("patch_size", 16)?,
            layer_norm_eps: v.f32_or("layer_norm_eps", 1e-6)?,
        };

        let decoder = match t.str_or("model_type", "gemma") {
            "gemma" => Decoder::Gemma,
            "gemma2" => Decoder::Gemma2,
            other => {
                return Err(Error::Config {
                    path: origin.into(),
                    message: format!(
                        "text_config.model_type `{other}` is not supported (gemma, gemma2)"
                    ),
                });
            }
        };
        let g2 = decoder == Decoder::Gemma2;
        let heads = t.usize_or("num_attention_heads", if g2 { 8 } else { 16 })?;
        let layers = t.usize_or("num_hidden_layers", if g2 { 26 } else { 28 })?;
        // transformers 5 nests RoPE's base under rope_parameters; older configs have rope_theta.
        let rope_obj = t.sub("rope_parameters")?;
        let rope = Fields {
            obj: &rope_obj,
            path: origin,
        };
        let rope_theta = rope.f32_or("rope_theta", t.f32_or("rope_theta", 10000.0)?)?;
        let sliding_window = match (g2, tobj.get("sliding_window")) {
            (false, _) | (true, Some(Value::Null)) => None,
            (true, _) => Some(t.usize_or("sliding_window", 4096)?),
        };
        let sliding_layers = match tobj.get("layer_types").and_then(Value::as_array) {
            Some(kinds) if g2 => kinds
                .iter()
                .map(|k| k.as_str() == Some("sliding_attention"))
                .collect(),
            // Gemma 2 alternates, starting with a sliding layer.
            _ => (0..layers).map(|i| g2 && i % 2 == 0).collect(),
        };
        let head_dim = t.usize_or("head_dim", 256)?;
        let text = TextConfig {
            decoder,
            // Older configs give the vocabulary only at the top level.
            vocab_size: t.usize_or("vocab_size", top.usize_or("vocab_size", 257_216)?)?,
            hidden_size: t.usize_or("hidden_size", if g2 { 2304 } else { 3072 })?,
            intermediate_size: t.usize_or("intermediate_size", if g2 { 9216 } else { 24576 })?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: t.usize_or("num_key_value_heads", if g2 { 4 } else { heads })?,
            head_dim,
            rms_norm_eps: t.f32_or("rms_norm_eps", 1e-6)?,
            rope_theta,
            max_position_embeddings: t.usize_or("max_position_embeddings", 8192)?,
            query_pre_attn_scalar: if g2 {
                t.f32_opt("query_pre_attn_scalar", Some(256.0))?
            } else {
                None
            },
            attn_logit_softcapping: if g2 {
                t.f32_opt("attn_logit_softcapping", Some(50.0))?
            } else {
                None
            },
            final_logit_softcapping: if g2 {
                t.f32_opt("final_logit_softcapping", Some(30.0))?
            } else {
                None
            },
            sliding_window,
            sliding_layers,
            // PaliGemmaForConditionalGeneration reads the top-level flag (default: tied).
            tie_word_embeddings: root.get("tie_word_embeddings").and_then(Value::as_bool)
                != Some(false),
        };
        let image_token_index = top.usize_or(
            "image_token_index",
            top.usize_or("image_token_id", 257_152)?,
        )?;
        let cfg = PaliGemmaConfig {
            vision,
            text,
            image_token_index: image_token_index as u32,
            bos_token_id: top.usize_or("bos_token_id", 2)? as u32,
            // transformers also accepts a list of end tokens; the first is <eos>.
            eos_token_id: match root.get("eos_token_id") {
                Some(Value::Array(ids)) => ids.first().and_then(Value::as_u64).unwrap_or(1) as u32,
                _ => top.usize_or("eos_token_id", 1)? as u32,
            },
        };
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
        let max_hd = crate::ops::attention::MAX_HEAD_DIM;
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
            vocab_size: 257_216,
            hidden_size: 2304,
            intermediate_size: 9216,
            num_hidden_layers: 26,
            num_attention_heads: 8,
            num_key_value_heads: 4,
            head_dim: 256,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            max_position_embeddings: 8192,
            query_pre_attn_scalar: Some(256.0),
            attn_logit_softcapping: Some(50.0),
            final_logit_softcapping: Some(30.0),
            sliding_window: Some(4096),
            sliding_layers: (0..26).map(|i| i % 2 == 0).collect(),
            tie_word_embeddings: true,
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
mod tests {
    use super::*;

    fn fixture(p: &str) -> std::path::PathBuf {
        let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let root = if built.is_dir() {
            built
        } else {
            Path::new("tests/fixtures").into()
        };
        root.join(p)
    }

    #[test]
    fn the_published_config_resolves_with_transformers_defaults() {
        // Most fields are absent from the hub's config.json: image_size, head_dim, eps, theta.
        let c =
            PaliGemmaConfig::from_file(&fixture("hub-config-paligemma-3b-pt-224.json")).unwrap();
        assert_eq!(c, PaliGemmaConfig::paligemma_3b(224));
        assert_eq!(c.vision.num_patches(), 256);
        assert_eq!(c.text.attention_scale(), 1.0 / 16.0);
    }

    #[test]
    fn transformers_5_configs_and_gemma2_resolve() {
        let c = PaliGemmaConfig::from_file(&fixture("mqa/model/config.json")).unwrap();
        assert_eq!(
            (
                c.text.hidden_size,
                c.text.num_key_value_heads,
                c.text.head_dim
            ),
            (64, 1, 16)
        );
        assert_eq!(c.vision.num_patches(), 16);
        let g = PaliGemmaConfig::from_file(&fixture("gemma2/model/config.json")).unwrap();
        assert_eq!(g.text.decoder, Decoder::Gemma2);
        // The top-level hidden_size of PaliGemma 2 configs is stale; text_config's counts.
        assert_eq!(g.text.hidden_size, 64);
        assert_eq!(g.text.sliding_layers, vec![true, false, true, false]);
        assert_eq!(g.text.sliding_window, Some(8));
        assert_eq!(g.text.attention_scale(), 1.0 / 24f32.sqrt());
        assert_eq!(g.text.final_logit_softcapping, Some(30.0));
    }

    #[test]
    fn bad_configs_name_the_field() {
        let e = PaliGemmaConfig::from_json(
            r#"{"text_config": {"num_attention_heads": "8"}}"#,
            "c.json",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("c.json") && e.contains("num_attention_heads"),
            "{e}"
        );
        let e = PaliGemmaConfig::from_json(r#"{"text_config": {"model_type": "llama"}}"#, "c.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("llama"), "{e}");
        let e = PaliGemmaConfig::from_json(
            r#"{"vision_config": {"image_size": 225, "patch_size": 14}}"#,
            "c.json",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("225"), "{e}");
        assert!(PaliGemmaConfig::from_json("[1]", "c.json").is_err());
        let e = PaliGemmaConfig::from_json(
            r#"{"text_config": {"hidden_activation": "relu"}}"#,
            "c.json",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("relu"), "{e}");
        let c = PaliGemmaConfig::from_json(r#"{"tie_word_embeddings": false}"#, "c.json").unwrap();
        assert!(!c.text.tie_word_embeddings);
    }
}
