//! Property tests ("fuzzing") of everything that parses untrusted input: the server's request
//! JSON, data URIs and image decoding, and the config and safetensors parsing behind
//! `--model`. Each input must give a value or an error, never a panic or a hang, and what is
//! accepted must be in range.
//!
//! CI runs a few hundred cases per property; for a long run:
//! `PROPTEST_CASES=20000 cargo test --release --test fuzz` (see the closing note of the
//! serving issue for what it found).

mod common;

use paligemma::config::PaliGemmaConfig;
use paligemma::serve::openai::{ChatRequest, decode_image, generate_options, image_source};
use proptest::prelude::*;
use serde_json::{Value, json};

fn config() -> ProptestConfig {
    // PROPTEST_CASES overrides this.
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        prop_oneof![Just(0.0), Just(-1.0), Just(1e308), Just(2.0), Just(0.5)].prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A content part: mostly well-formed, with any value anywhere.
fn part() -> impl Strategy<Value = Value> {
    prop_oneof![
        ".{0,20}".prop_map(|t| json!({"type": "text", "text": t})),
        image_url().prop_map(|u| json!({"type": "image_url", "image_url": {"url": u}})),
        any_json(),
    ]
}

fn image_url() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9+/=]{0,40}".prop_map(|b| format!("data:image/png;base64,{b}")),
        ".{0,30}".prop_map(|s| format!("data:{s}")),
        ".{0,30}",
        Just("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==".to_string()),
    ]
}

/// A chat request: OpenAI's shape with random values, fields and roles.
fn request() -> impl Strategy<Value = Value> {
    let content = prop_oneof![
        ".{0,20}".prop_map(Value::from),
        prop::collection::vec(part(), 0..4).prop_map(Value::from),
        any_json(),
    ];
    let message = (
        prop_oneof![Just("user"), Just("system"), Just("assistant"), Just("")],
        content,
    )
        .prop_map(|(role, content)| json!({"role": role, "content": content}));
    let field = prop_oneof![
        any_json(),
        (-5i64..5000).prop_map(Value::from),
        (-1.0f64..3.0).prop_map(|f| json!(f))
    ];
    (
        prop::collection::vec(message, 0..3),
        prop::collection::btree_map(
            prop_oneof![
                Just("max_tokens"),
                Just("max_completion_tokens"),
                Just("temperature"),
                Just("top_p"),
                Just("top_k"),
                Just("seed"),
                Just("stream"),
                Just("n"),
                Just("model"),
                Just("tools"),
            ],
            field,
            0..6,
        ),
    )
        .prop_map(|(messages, fields)| {
            let mut r = json!({"messages": messages});
            for (k, v) in fields {
                r[k] = v;
            }
            r
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn request_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Err(e) = ChatRequest::parse(&bytes) {
            prop_assert_eq!(e.status, 400);
        }
    }

    #[test]
    fn accepted_requests_are_in_range(req in request(), prompt_len in 0usize..9000,
                                      context in 0usize..9000, default_max in 1usize..512) {
        let body = serde_json::to_vec(&req).unwrap();
        match ChatRequest::parse(&body) {
            Err(e) => prop_assert_eq!(e.status, 400),
            Ok(r) => {
                prop_assert!((0.0..=2.0).contains(&r.sampling.temperature));
                prop_assert!(r.sampling.top_p > 0.0 && r.sampling.top_p <= 1.0);
                prop_assert!(r.max_tokens != Some(0));
                if let Ok((prompt, _)) = r.paligemma_input() {
                    prop_assert!(!prompt.is_empty());
                }
                if let Ok(o) = generate_options(&r, prompt_len, context, default_max) {
                    prop_assert!(o.max_new_tokens >= 1);
                    prop_assert!(prompt_len + o.max_new_tokens <= context);
                }
            }
        }
    }

    #[test]
    fn image_urls_never_panic(url in image_url()) {
        if let Ok(paligemma::serve::openai::ImageSource::Bytes(b)) = image_source(&url) {
            let _ = decode_image(&b, 4096);
        }
    }

    #[test]
    fn mutated_images_decode_or_fail_cleanly(
        which in 0usize..3,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = sample_images()[which].clone();
        for (i, v) in edits {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        if let Err(e) = decode_image(&bytes, 4096) {
            prop_assert_eq!(e.status, 400);
        }
    }

    #[test]
    fn mutated_configs_load_or_fail_cleanly(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any_json()), 1..4),
    ) {
        let text = std::fs::read_to_string(common::fixture_path("mqa/model/config.json")).unwrap();
        let mut cfg: Value = serde_json::from_str(&text).unwrap();
        for (i, v) in edits {
            // Replace one field (of the top level or a sub-config) with any value.
            let sub = ["text_config", "vision_config", ""][i.index(3)];
            let obj = if sub.is_empty() { &mut cfg } else { &mut cfg[sub] };
            if let Some(map) = obj.as_object_mut().filter(|m| !m.is_empty()) {
                let keys: Vec<String> = map.keys().cloned().collect();
                let key = keys[i.index(keys.len())].clone();
                map.insert(key, v);
            }
        }
        if let Ok(c) = PaliGemmaConfig::from_json(&cfg.to_string(), "fuzzed") {
            let _ = c.check("fuzzed");
        }
    }

    #[test]
    fn config_bytes_never_panic(text in ".{0,300}") {
        let _ = PaliGemmaConfig::from_json(&text, "fuzzed");
    }
}

fn sample_images() -> &'static [Vec<u8>; 3] {
    static IMAGES: std::sync::OnceLock<[Vec<u8>; 3]> = std::sync::OnceLock::new();
    IMAGES.get_or_init(|| {
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(23, 17, |x, y| {
            image::Rgb([(x * 11) as u8, (y * 13) as u8, (x ^ y) as u8])
        }));
        let encode = |f: image::ImageFormat| {
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, f).unwrap();
            out.into_inner()
        };
        [
            encode(image::ImageFormat::Png),
            encode(image::ImageFormat::Jpeg),
            encode(image::ImageFormat::Gif),
        ]
    })
}

/// Checkpoints with their safetensors bytes damaged (header or data) load as an error naming
/// the problem, or load, but never panic. Slower (each case loads on the GPU), so fewer cases.
#[test]
fn mutated_checkpoints_load_or_fail_cleanly() {
    let src = common::fixture_path("mqa/model");
    let original = std::fs::read(src.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let dir = std::env::temp_dir().join(format!("paligemma-fuzz-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let cases: usize = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(48, |n: usize| n / 8);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases as u32,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let (errors, loaded) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    // Byte edits in the header (mostly broken JSON), or one tensor's entry rewritten (dtype,
    // shape, offsets: JSON that parses but lies), then maybe a cut.
    let header: Value = serde_json::from_slice(&original[8..8 + header_len]).unwrap();
    let names: Vec<String> = header.as_object().unwrap().keys().cloned().collect();
    let field = prop_oneof![
        Just("dtype".to_string()).prop_flat_map(|k| {
            prop_oneof![
                Just("F32"),
                Just("BF16"),
                Just("F16"),
                Just("I8"),
                Just("U8"),
                Just("F64"),
                Just("BOOL"),
                Just("X")
            ]
            .prop_map(move |d| (k.clone(), json!(d)))
        }),
        prop::collection::vec(prop_oneof![0u64..70, any::<u64>()], 0..4)
            .prop_map(|v| ("shape".to_string(), json!(v))),
        prop::collection::vec(prop_oneof![0u64..200_000, any::<u64>()], 0..4)
            .prop_map(|v| ("data_offsets".to_string(), json!(v))),
    ];
    let strategy = (
        prop::collection::vec((0..8 + header_len, any::<u8>()), 0..4),
        prop::option::of((any::<prop::sample::Index>(), field)),
        prop::option::of(0..original.len()),
    );
    runner
        .run(&strategy, |(edits, entry, cut)| {
            let mut bytes = original.clone();
            if let Some((i, (key, value))) = entry {
                let mut h = header.clone();
                let name = &names[i.index(names.len())];
                if name != "__metadata__" {
                    h[name][&key] = value;
                }
                let text = h.to_string().into_bytes();
                bytes = [
                    &(text.len() as u64).to_le_bytes()[..],
                    &text,
                    &original[8 + header_len..],
                ]
                .concat();
            }
            for (i, v) in edits {
                let i = i.min(bytes.len() - 1);
                bytes[i] = v;
            }
            if let Some(n) = cut {
                bytes.truncate(n);
            }
            std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
            match paligemma::PaliGemma::load_on(
                common::gpu().clone(),
                &dir,
                &paligemma::LoadOptions::in_precision(None),
            ) {
                Ok(_) => loaded.set(loaded.get() + 1),
                Err(e) => {
                    prop_assert!(!e.to_string().is_empty());
                    errors.set(errors.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
    let (errors, loaded) = (errors.get(), loaded.get());
    eprintln!("damaged checkpoints: {errors} refused, {loaded} loaded");
    let _ = std::fs::remove_dir_all(&dir);
}
