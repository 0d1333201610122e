//! `config.json` as written on the hub, read into private structs that mirror it (unknown
//! fields ignored: hub configs carry dozens we don't use), then resolved with transformers'
//! defaults (`SiglipVisionConfig`, `GemmaConfig`, `Gemma2Config`, `Gemma3TextConfig`,
//! `Gemma3Config`), so that the terse configs people actually have load as transformers loads
//! them.
//!
//! The raw structs hold `Option`s, not `#[serde(default = ...)]` values: serde's defaults only
//! cover absent fields, but transformers writes `null` for "the default" too, and most defaults
//! depend on the decoder, which a field default cannot see. They are applied in one place,
//! [`Defaults`].

use std::result::Result as StdResult;

use serde::{Deserialize, Deserializer};

use super::config::{Decoder, ImageTokens, PaliGemmaConfig, Rope, TextConfig, VisionConfig};

/// The top level of `config.json`.
#[derive(Deserialize)]
pub(super) struct RawConfig {
    model_type: Option<String>,
    vision_config: Option<RawVision>,
    text_config: Option<RawText>,
    /// Older configs give the vocabulary only here.
    vocab_size: Option<usize>,
    image_token_index: Option<u32>,
    /// The newer spelling of `image_token_index`.
    image_token_id: Option<u32>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
    /// The ConditionalGeneration classes read the top-level flag, not text_config's.
    tie_word_embeddings: Option<bool>,
    // Gemma 3.
    mm_tokens_per_image: Option<usize>,
    boi_token_index: Option<u32>,
    eoi_token_index: Option<u32>,
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
    /// transformers 5 nests RoPE here (per layer type for Gemma 3); it wins over the older
    /// top-level fields.
    rope_parameters: Option<RawRope>,
    /// The published Gemma 3 configs' scaling of the full-attention layers.
    rope_scaling: Option<RawRope>,
    /// The published Gemma 3 configs' base of the sliding layers.
    rope_local_base_freq: Option<f32>,
    max_position_embeddings: Option<usize>,
    // Switches: absent takes the decoder's default, `null` turns them off.
    #[serde(default, deserialize_with = "explicit")]
    query_pre_attn_scalar: Option<Option<f32>>,
    #[serde(default, deserialize_with = "explicit")]
    attn_logit_softcapping: Option<Option<f32>>,
    #[serde(default, deserialize_with = "explicit")]
    final_logit_softcapping: Option<Option<f32>>,
    #[serde(default, deserialize_with = "explicit")]
    sliding_window: Option<Option<usize>>,
    layer_types: Option<Vec<String>>,
    /// The published Gemma 3 configs' form of `layer_types`: every n-th layer is full.
    sliding_window_pattern: Option<usize>,
    /// Gemma reads `hidden_activation` only, whatever `hidden_act` says.
    hidden_activation: Option<String>,
}

/// `rope_parameters` or `rope_scaling`: one layer kind's RoPE, or (Gemma 3 in transformers 5)
/// one per layer kind.
#[derive(Clone, Default, Deserialize)]
#[serde(expecting = "an object")]
struct RawRope {
    rope_theta: Option<f32>,
    rope_type: Option<String>,
    factor: Option<f32>,
    full_attention: Option<Box<RawRope>>,
    sliding_attention: Option<Box<RawRope>>,
}

impl RawRope {
    /// This RoPE over `base` (the fields it leaves out).
    fn over(&self, base: Rope) -> StdResult<Rope, String> {
        let factor = match self.rope_type.as_deref().unwrap_or("default") {
            "default" => 1.0,
            "linear" => self.factor.unwrap_or(1.0),
            other => {
                return Err(format!(
                    "rope_type `{other}` is not supported (default, linear)"
                ));
            }
        };
        if factor.is_nan() || factor <= 0.0 {
            return Err(format!("rope factor {factor} must be positive"));
        }
        Ok(Rope {
            theta: self.rope_theta.unwrap_or(base.theta),
            factor: factor * base.factor,
        })
    }
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

/// One decoder's config class defaults (transformers' `GemmaConfig`, `Gemma2Config`,
/// `Gemma3TextConfig`).
struct Defaults {
    vocab: usize,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    /// None: as many as query heads.
    kv_heads: Option<usize>,
    max_positions: usize,
    query_pre_attn_scalar: Option<f32>,
    attn_softcap: Option<f32>,
    final_softcap: Option<f32>,
    window: Option<usize>,
    /// Every n-th layer is full attention, the others sliding (0: no sliding layers).
    pattern: usize,
    theta: f32,
    sliding_theta: Option<f32>,
}

impl Defaults {
    fn of(decoder: Decoder) -> Defaults {
        let gemma = Defaults {
            vocab: 257_216,
            hidden: 3072,
            intermediate: 24576,
            layers: 28,
            heads: 16,
            kv_heads: None,
            max_positions: 8192,
            query_pre_attn_scalar: None,
            attn_softcap: None,
            final_softcap: None,
            window: None,
            pattern: 0,
            theta: 10_000.0,
            sliding_theta: None,
        };
        let gemma2 = Defaults {
            hidden: 2304,
            intermediate: 9216,
            layers: 26,
            heads: 8,
            kv_heads: Some(4),
            query_pre_attn_scalar: Some(256.0),
            attn_softcap: Some(50.0),
            final_softcap: Some(30.0),
            window: Some(4096),
            pattern: 2,
            ..gemma
        };
        match decoder {
            Decoder::Gemma => gemma,
            Decoder::Gemma2 => gemma2,
            Decoder::Gemma3 => Defaults {
                vocab: 262_208,
                max_positions: 131_072,
                attn_softcap: None,
                final_softcap: None,
                pattern: 6,
                theta: 1_000_000.0,
                sliding_theta: Some(10_000.0),
                ..gemma2
            },
        }
    }
}

impl RawConfig {
    /// Applies transformers' defaults; the error is the message for `Error::Config`.
    pub(super) fn resolve(self) -> StdResult<PaliGemmaConfig, String> {
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
        let gemma3_top = self.model_type.as_deref() == Some("gemma3");
        let decoder = match t.model_type.as_deref() {
            None if gemma3_top => Decoder::Gemma3,
            None | Some("gemma") => Decoder::Gemma,
            Some("gemma2") => Decoder::Gemma2,
            Some("gemma3_text") => Decoder::Gemma3,
            Some(other) => {
                return Err(format!(
                    "text_config.model_type `{other}` is not supported (gemma, gemma2, gemma3_text)"
                ));
            }
        };
        let tie = self.tie_word_embeddings != Some(false);
        let text = t.resolve(decoder, self.vocab_size, tie)?;
        let stop_token_ids = match self.eos_token_id {
            Some(TokenIds::One(id)) => vec![id],
            Some(TokenIds::Many(ids)) if !ids.is_empty() => ids,
            _ => vec![1],
        };
        let gemma3 = decoder == Decoder::Gemma3;
        let image_tokens = gemma3.then(|| ImageTokens {
            tokens_per_image: self.mm_tokens_per_image.unwrap_or(256),
            boi_token_id: self.boi_token_index.unwrap_or(255_999),
            eoi_token_id: self.eoi_token_index.unwrap_or(256_000),
        });
        let image_token = self.image_token_index.or(self.image_token_id);
        Ok(PaliGemmaConfig {
            vision,
            text,
            image_token_index: image_token.unwrap_or(if gemma3 { 262_144 } else { 257_152 }),
            bos_token_id: self.bos_token_id.unwrap_or(2),
            eos_token_id: stop_token_ids[0],
            stop_token_ids,
            image_tokens,
        })
    }
}

impl RawText {
    fn resolve(
        self,
        decoder: Decoder,
        top_vocab: Option<usize>,
        tie: bool,
    ) -> StdResult<TextConfig, String> {
        let d = Defaults::of(decoder);
        let on = |x: Option<Option<f32>>, default: Option<f32>| match x {
            Some(explicit) => explicit,
            None => default,
        };
        let heads = self.num_attention_heads.unwrap_or(d.heads);
        let layers = self.num_hidden_layers.unwrap_or(d.layers);
        let pattern = self.sliding_window_pattern.unwrap_or(d.pattern);
        let sliding_layers = match (&self.layer_types, d.pattern) {
            (Some(kinds), p) if p > 0 => kinds.iter().map(|k| k == "sliding_attention").collect(),
            // Every `pattern`-th layer full, starting with sliding ones.
            _ => (0..layers)
                .map(|i| pattern > 0 && (i + 1) % pattern != 0)
                .collect(),
        };
        let (rope, sliding_rope) = self.ropes(&d)?;
        Ok(TextConfig {
            decoder,
            vocab_size: self.vocab_size.or(top_vocab).unwrap_or(d.vocab),
            hidden_size: self.hidden_size.unwrap_or(d.hidden),
            intermediate_size: self.intermediate_size.unwrap_or(d.intermediate),
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: self.num_key_value_heads.or(d.kv_heads).unwrap_or(heads),
            head_dim: self.head_dim.unwrap_or(256),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope,
            sliding_rope,
            qk_norm: decoder == Decoder::Gemma3,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(d.max_positions),
            query_pre_attn_scalar: on(self.query_pre_attn_scalar, d.query_pre_attn_scalar),
            attn_logit_softcapping: on(self.attn_logit_softcapping, d.attn_softcap),
            final_logit_softcapping: on(self.final_logit_softcapping, d.final_softcap),
            sliding_window: match self.sliding_window {
                Some(explicit) if d.pattern > 0 => explicit,
                _ => d.window,
            },
            sliding_layers,
            tie_word_embeddings: tie,
        })
    }

    /// The full-attention layers' RoPE and, for Gemma 3, the sliding layers'. Either form:
    /// transformers 5's `rope_parameters` (per layer kind for Gemma 3), or the published
    /// `rope_theta` + `rope_scaling` (full layers) and `rope_local_base_freq` (sliding layers).
    fn ropes(&self, d: &Defaults) -> StdResult<(Rope, Option<Rope>), String> {
        let params = self.rope_parameters.clone().unwrap_or_default();
        let base = Rope::new(self.rope_theta.unwrap_or(d.theta));
        let scaled = match &self.rope_scaling {
            Some(s) => s.over(base)?,
            None => base,
        };
        let full = match &params.full_attention {
            Some(p) => p.over(scaled)?,
            None => params.over(scaled)?,
        };
        let sliding = match d.sliding_theta {
            None => None,
            Some(theta) => {
                let base = Rope::new(self.rope_local_base_freq.unwrap_or(theta));
                Some(match &params.sliding_attention {
                    Some(p) => p.over(base)?,
                    None => base,
                })
            }
        };
        Ok((full, sliding))
    }
}
