//! The footprint a config predicts (what the README's sizing table is made of) equals what a
//! model built from it allocates, for every fixture's shape, every precision, and both stored
//! formats.

mod common;

use common::{fixture_path, gpu};
use paligemma::config::PaliGemmaConfig;
use paligemma::{PaliGemma, Precision, WeightFormat};

#[test]
fn the_footprint_is_what_a_built_model_allocates() {
    let precisions = [Precision::F32, Precision::F16, Precision::Q8, Precision::Q4];
    for case in [
        "mqa",
        "gqa",
        "gemma2",
        "untied",
        "realdims",
        "gemma3",
        "gemma3_two",
    ] {
        let cfg =
            PaliGemmaConfig::from_file(&fixture_path(case).join("model/config.json")).unwrap();
        for stored in [WeightFormat::Bf16, WeightFormat::F32] {
            for precision in precisions {
                let want = cfg.footprint(precision, stored);
                let model =
                    PaliGemma::random(gpu().clone(), cfg.clone(), 1, stored, Some(precision))
                        .unwrap();
                let what = format!("{case} {stored:?} {precision:?}");
                // Exact but for buffers rounded up to whole 16-byte vectors.
                // Exact: every buffer is the size of what it holds.
                assert_eq!(model.weight_memory(), want.weights(), "{what}: weights");
                assert_eq!(model.decode_weight_bytes(), want.decode_reads, "{what}");
                let state = model.new_state(64, 0).unwrap();
                assert!(state.gpu_bytes() >= want.kv_bytes(64), "{what}");
                let beyond_kv = state.gpu_bytes() - want.kv_bytes(64);
                assert!(
                    beyond_kv <= (cfg.text.vocab_size * 4 + (1 << 20)) as u64,
                    "{what}"
                );
            }
        }
    }
}
