//! The server's objects: a `segment` answer's masks come with a decoder and only with one.

use super::answer::{Meta, usage_and_extension};
use super::engine::Outcome;
use super::*;
use crate::detection::parse_answer;
use crate::segmentation::{masks, objects_json};

fn decoder() -> Arc<SegDecoder> {
    let gpu = crate::Gpu::new(&Default::default()).expect("a GPU adapter (lavapipe in CI)");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seg/vae.npz");
    Arc::new(SegDecoder::load(&gpu, &path).unwrap())
}

#[test]
fn segment_answers_carry_masks_only_with_a_decoder() {
    let segs: String = (0..16).map(|i| format!("<seg{:03}>", i * 7)).collect();
    let outcome = Outcome {
        reason: crate::generation::FinishReason::Stop,
        prompt_tokens: 5,
        generated_ids: vec![7, 8],
        text: format!(
            "<loc0192><loc0597><loc0704><loc0896>{segs} box ; <loc0384><loc0128><loc0832><loc0427> ball"
        ),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    for decoder in [None, Some(decoder())] {
        let meta = Meta {
            id: "chatcmpl-0".into(),
            model: "m".into(),
            created: 0,
            detect: Some((640, 480)),
            decoder: decoder.clone(),
            logprobs: false,
            metrics: Default::default(),
            arrived: std::time::Instant::now(),
            last_token: Default::default(),
        };
        let (usage, ext) = rt.block_on(usage_and_extension(&meta, &outcome)).unwrap();
        assert_eq!(usage["total_tokens"], 7);
        let answer = parse_answer(&outcome.text, 640, 480);
        let want = masks(&answer.detections, decoder.as_deref()).unwrap();
        assert_eq!(ext["detections"], objects_json(&answer.detections, &want));
        let objects = ext["detections"].as_array().unwrap();
        assert_eq!(objects.len(), 2);
        // The box has `<seg>` codes, the ball none.
        assert_eq!(objects[0]["mask"].is_null(), decoder.is_none(), "{ext}");
        assert!(objects[1]["mask"].is_null());
    }
}
