//! The published models' configs, for benchmarks and footprints at real shapes without a
//! download (and for tests that resolve the hub's terse configs against them).

use super::config::{Decoder, ImageTokens, PaliGemmaConfig, Rope, TextConfig, VisionConfig};

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
                rope: Rope::new(10000.0),
                sliding_rope: None,
                qk_norm: false,
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
            stop_token_ids: vec![1],
            image_tokens: None,
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

impl PaliGemmaConfig {
    /// google/gemma-3-4b-{pt,it} (and MedGemma 4B): SigLIP So400m/14 at 896px pooled to 256
    /// tokens + the Gemma 3 4B decoder (5 sliding layers of window 1024 to 1 full one).
    pub fn gemma3_4b() -> Self {
        let layers = 34;
        PaliGemmaConfig {
            vision: VisionConfig::so400m_14(896),
            text: TextConfig {
                decoder: Decoder::Gemma3,
                vocab_size: 262_208,
                hidden_size: 2560,
                intermediate_size: 10240,
                num_hidden_layers: layers,
                num_attention_heads: 8,
                num_key_value_heads: 4,
                head_dim: 256,
                rms_norm_eps: 1e-6,
                rope: Rope {
                    theta: 1_000_000.0,
                    factor: 8.0,
                },
                sliding_rope: Some(Rope::new(10_000.0)),
                qk_norm: true,
                max_position_embeddings: 131_072,
                query_pre_attn_scalar: Some(256.0),
                attn_logit_softcapping: None,
                final_logit_softcapping: None,
                sliding_window: Some(1024),
                sliding_layers: (0..layers).map(|i| (i + 1) % 6 != 0).collect(),
                tie_word_embeddings: true,
            },
            image_token_index: 262_144,
            bos_token_id: 2,
            eos_token_id: 1,
            stop_token_ids: vec![1, 106],
            image_tokens: Some(ImageTokens {
                tokens_per_image: 256,
                boi_token_id: 255_999,
                eoi_token_id: 256_000,
            }),
        }
    }

    /// google/gemma-3-12b-{pt,it}.
    pub fn gemma3_12b() -> Self {
        Self::gemma3_resized(3840, 15360, 48, 16, 256)
    }

    /// google/gemma-3-27b-{pt,it} (and MedGemma 27B multimodal): head_dim 128, scores scaled by
    /// (hidden / heads)^-0.5 = 168^-0.5.
    pub fn gemma3_27b() -> Self {
        let mut c = Self::gemma3_resized(5376, 21504, 62, 32, 128);
        c.text.query_pre_attn_scalar = Some(168.0);
        c
    }

    fn gemma3_resized(hidden: usize, inter: usize, layers: usize, heads: usize, hd: usize) -> Self {
        let mut c = Self::gemma3_4b();
        c.text = TextConfig {
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: heads / 2,
            head_dim: hd,
            sliding_layers: (0..layers).map(|i| (i + 1) % 6 != 0).collect(),
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
