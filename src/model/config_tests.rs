//! `config.json` resolution against the hub's and the fixtures' configs.

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
    let c = PaliGemmaConfig::from_file(&fixture("hub-config-paligemma-3b-pt-224.json")).unwrap();
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
    let e =
        PaliGemmaConfig::from_json(r#"{"text_config": {"num_attention_heads": "8"}}"#, "c.json")
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

#[test]
fn nulls_eos_lists_and_nested_rope_resolve_as_transformers_does() {
    // Gemma 2: an explicit null turns a switch off; a null count takes the default.
    let g = PaliGemmaConfig::from_json(
        r#"{"text_config": {"model_type": "gemma2", "sliding_window": null,
            "final_logit_softcapping": null, "num_attention_heads": null}}"#,
        "c.json",
    )
    .unwrap();
    assert_eq!(g.text.sliding_window, None);
    assert_eq!(g.text.final_logit_softcapping, None);
    assert_eq!(g.text.attn_logit_softcapping, Some(50.0));
    assert_eq!(g.text.num_attention_heads, 8);
    let c = PaliGemmaConfig::from_json(
        r#"{"eos_token_id": [107, 1], "image_token_id": 5, "vocab_size": 1000,
            "text_config": {"rope_theta": 5e5, "rope_parameters": {"rope_theta": 1e6}}}"#,
        "c.json",
    )
    .unwrap();
    assert_eq!((c.eos_token_id, c.image_token_index), (107, 5));
    assert_eq!((c.text.vocab_size, c.text.rope), (1000, Rope::new(1e6)));
}

#[test]
fn errors_give_the_json_path() {
    let e = |json: &str| {
        PaliGemmaConfig::from_json(json, "c.json")
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        e(r#"{"text_config": {"num_attention_heads": "8"}}"#),
        r#"c.json: field `text_config.num_attention_heads`: invalid type: string "8", expected usize"#
    );
    assert!(e(r#"{"eos_token_id": ["x"]}"#).contains("`eos_token_id`"));
    assert!(e(r#"{"text_config": []}"#).contains("`text_config`"));
    assert!(e(r#"{"vision_config": "#).contains("not valid JSON"));
    assert!(e("[1]").contains("must be a JSON object"));
}

#[test]
fn the_larger_paligemma2_presets_are_consistent() {
    let (c10, c28) = (
        PaliGemmaConfig::paligemma2_10b(448),
        PaliGemmaConfig::paligemma2_28b(896),
    );
    c10.check("10b").unwrap();
    c28.check("28b").unwrap();
    assert_eq!(c28.vision.num_patches(), 4096);
    assert_eq!(c28.text.attention_scale(), 1.0 / 12.0);
    // Gemma 2 9B and 27B with the tied 257216-row embedding: about 9.2 and 27.2 billion.
    let billions = |c: &PaliGemmaConfig| c.text.decode_weight_elements() as f64 / 1e9;
    assert!((9.1..9.4).contains(&billions(&c10)), "{}", billions(&c10));
    assert!((27.0..27.4).contains(&billions(&c28)), "{}", billions(&c28));
}

#[test]
fn gemma3_configs_resolve_in_both_forms() {
    // The hub's terse config: most text fields take Gemma3TextConfig's defaults.
    let c = PaliGemmaConfig::from_file(&fixture("hub-config-gemma-3-4b-it.json")).unwrap();
    assert_eq!(c, PaliGemmaConfig::gemma3_4b());
    assert_eq!(c.text.attention_scale(), 1.0 / 16.0);
    // The published form in the fixture: rope_theta + rope_scaling on full layers,
    // rope_local_base_freq on sliding ones, every third layer full.
    let g = PaliGemmaConfig::from_file(&fixture("gemma3/model/config.json")).unwrap();
    assert_eq!(g.text.decoder, Decoder::Gemma3);
    assert!(g.text.qk_norm);
    let full = Rope {
        theta: 1e6,
        factor: 8.0,
    };
    assert_eq!(
        (g.text.rope, g.text.sliding_rope),
        (full, Some(Rope::new(1e4)))
    );
    let s_s_f = vec![true, true, false, true, true, false];
    assert_eq!(g.text.sliding_layers, s_s_f);
    assert_eq!(
        (g.text.sliding_window, g.text.first_position()),
        (Some(8), 0)
    );
    let it = g.image_tokens.as_ref().unwrap();
    assert_eq!(
        (it.tokens_per_image, it.boi_token_id, it.eoi_token_id),
        (16, 1558, 1559)
    );
    assert_eq!(g.stop_token_ids, vec![1, 1557]);
    // transformers 5's form: layer_types and rope_parameters per layer kind.
    let t = PaliGemmaConfig::from_file(&fixture("gemma3_two/model/config.json")).unwrap();
    assert_eq!(t.text.sliding_layers, vec![true, false, true]);
    let full = Rope {
        theta: 5e5,
        factor: 4.0,
    };
    assert_eq!(
        (t.text.rope, t.text.sliding_rope),
        (full, Some(Rope::new(1e4)))
    );
    assert_eq!(t.text.attn_logit_softcapping, None);
}

#[test]
fn gemma3_configs_refuse_what_they_cannot_run() {
    let bad = |json: &str| {
        PaliGemmaConfig::from_json(json, "c.json")
            .unwrap_err()
            .to_string()
    };
    let e =
        bad(r#"{"model_type": "gemma3", "text_config": {"rope_scaling": {"rope_type": "yarn"}}}"#);
    assert!(e.contains("yarn"), "{e}");
    // 64x64 patches cannot pool to 200 tokens.
    let e = bad(r#"{"model_type": "gemma3", "mm_tokens_per_image": 200,
        "vision_config": {"image_size": 896, "patch_size": 14}}"#);
    assert!(e.contains("mm_tokens_per_image 200"), "{e}");
}
