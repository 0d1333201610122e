//! Decoding with the GPU running ahead of the host (`StepInput::Chosen`: a step's input is the
//! previous step's argmax, never read by the host first) gives the tokens of decoding one
//! step at a time, and `generate`'s greedy path, which runs ahead, gives transformers' ids;
//! misuse of the pipelined calls is an error, not a wrong answer.

mod common;

use common::gpu;
use paligemma::{GenerateOptions, PaliGemma, Precision, StepInput};

fn load(name: &str) -> (PaliGemma, serde_json::Value) {
    let dir = common::fixture_path(name);
    let model = PaliGemma::load_on(
        gpu().clone(),
        &dir.join("model"),
        &paligemma::LoadOptions::in_precision(Some(Precision::F32)),
    )
    .unwrap();
    let expected = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    (model, serde_json::from_str(&expected).unwrap())
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    let ids = v.as_array().unwrap().iter();
    ids.map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn chained_steps_choose_what_single_steps_choose() {
    let (model, expected) = load("gqa");
    let image = paligemma::preprocess::load_image(&common::fixture_path("gqa/image.png")).unwrap();
    let feats = model.block_on(model.encode(&image)).unwrap();
    let prompt = ids(&expected["input_ids"]);
    let n = 10;
    // One step at a time, the host feeding each token back.
    let mut s = model.new_state(prompt.len(), n + 2).unwrap();
    let mut scratch = model.decode_scratch().unwrap();
    let mut tok = model
        .block_on(model.prefill(&mut s, &prompt, &feats))
        .unwrap();
    let mut one_by_one = vec![tok];
    for _ in 0..n {
        tok = model
            .block_on(model.step(&mut scratch, &mut [&mut s], &[tok]))
            .unwrap()[0];
        one_by_one.push(tok);
    }
    // Two steps in flight: each submitted before the one before it is read.
    let mut s = model.new_state(prompt.len(), n + 2).unwrap();
    let first = model
        .block_on(model.prefill(&mut s, &prompt, &feats))
        .unwrap();
    let mut ahead = vec![first];
    let start = StepInput::Tokens(&[first]);
    model
        .block_on(model.submit_step(&mut scratch, &mut [&mut s], start))
        .unwrap();
    for _ in 1..n {
        let chained = StepInput::Chosen;
        model
            .block_on(model.submit_step(&mut scratch, &mut [&mut s], chained))
            .unwrap();
        ahead.push(model.block_on(model.finish_step(&mut scratch)).unwrap()[0]);
    }
    ahead.push(model.block_on(model.finish_step(&mut scratch)).unwrap()[0]);
    assert_eq!(ahead, one_by_one);
    // The state's logits are the last step's, as after single steps.
    let last = model.block_on(model.logits(&s)).unwrap();
    let best = (0..last.len()).max_by(|&a, &b| last[a].total_cmp(&last[b]).then(b.cmp(&a)));
    assert_eq!(best.unwrap() as u32, *ahead.last().unwrap());
}

#[test]
fn generate_runs_ahead_to_transformers_tokens() {
    for name in ["mqa", "gqa", "gemma2"] {
        let (model, expected) = load(name);
        let dir = common::fixture_path(name);
        let image = paligemma::preprocess::load_image(&dir.join("image.png")).unwrap();
        let prompt = expected["prompt"].as_str().unwrap();
        let want = ids(&expected["generated_ids"]);
        let opts = |keep_logits| GenerateOptions {
            max_new_tokens: want.len(),
            stop_at_eos: false,
            keep_logits,
            ..Default::default()
        };
        // Runs ahead (greedy, no logits kept), and one step at a time (logits kept).
        let run = |o: &GenerateOptions| {
            let mut streamed = Vec::new();
            let out = model
                .block_on(model.generate(&image, prompt, o, |id, _| {
                    streamed.push(id);
                    true
                }))
                .unwrap();
            assert_eq!(streamed, out.generated_ids, "{name}: streamed");
            out.generated_ids
        };
        assert_eq!(run(&opts(false)), want, "{name}: running ahead");
        assert_eq!(run(&opts(true)), want, "{name}: one step at a time");
        // Stopped early from the callback and at a length: the step in flight past the end is
        // discarded, not returned.
        for stop in [1, 3] {
            let mut seen = 0;
            let out = model
                .block_on(model.generate(&image, prompt, &opts(false), |_, _| {
                    seen += 1;
                    seen < stop
                }))
                .unwrap();
            assert_eq!(out.generated_ids, want[..stop], "{name}: stopped at {stop}");
        }
        let short = GenerateOptions {
            max_new_tokens: 2,
            ..opts(false)
        };
        let out = model.block_on(model.generate(&image, prompt, &short, |_, _| true));
        assert_eq!(out.unwrap().generated_ids, want[..2], "{name}: 2 tokens");
    }
}

/// A sampled sequence runs ahead too (each step's draw chained on the GPU): `generate` gives
/// the tokens of the one-step-at-a-time path (logits kept) and of a batch of one beside
/// others, for a seed; another seed gives other tokens.
#[test]
fn sampled_generation_runs_ahead_to_the_same_tokens() {
    let (model, expected) = load("gqa");
    let dir = common::fixture_path("gqa");
    let image = paligemma::preprocess::load_image(&dir.join("image.png")).unwrap();
    let prompt = expected["prompt"].as_str().unwrap();
    let opts = |keep_logits, seed| GenerateOptions {
        max_new_tokens: 12,
        stop_at_eos: false,
        keep_logits,
        sampling: paligemma::sampling::SamplingOptions {
            temperature: 1.5,
            top_p: 0.95,
            top_k: 0,
            seed,
        },
        ..Default::default()
    };
    let run = |o: &GenerateOptions| {
        let out = model.block_on(model.generate(&image, prompt, o, |_, _| true));
        out.unwrap().generated_ids
    };
    let ahead = run(&opts(false, 7));
    assert_eq!(ahead.len(), 12);
    assert_eq!(run(&opts(true, 7)), ahead, "one step at a time");
    assert_ne!(run(&opts(false, 8)), ahead, "another seed");
    // Batched with a greedy sequence and another seed's, through `advance`.
    let mut scratch = model.decode_scratch().unwrap();
    let mut greedy = opts(false, 0);
    greedy.sampling.temperature = 0.0;
    let mut seqs: Vec<_> = [opts(false, 7), greedy, opts(false, 9)]
        .iter()
        .map(|o| model.block_on(model.start(&image, prompt, o)).unwrap().0)
        .collect();
    while seqs.iter().any(|s| s.finished().is_none()) {
        let mut all: Vec<_> = seqs.iter_mut().collect();
        model
            .block_on(model.advance(&mut scratch, &mut all))
            .unwrap();
    }
    assert_eq!(seqs[0].generated_ids(), ahead, "batched");
}

/// The error's message, or "" for a success.
fn err<T>(r: paligemma::Result<T>) -> String {
    r.err().map(|e| e.to_string()).unwrap_or_default()
}

#[test]
fn pipelined_misuse_is_an_error() {
    let (model, expected) = load("mqa");
    let image = paligemma::preprocess::load_image(&common::fixture_path("mqa/image.png")).unwrap();
    let feats = model.block_on(model.encode(&image)).unwrap();
    let prompt = ids(&expected["input_ids"]);
    let mut scratch = model.decode_scratch().unwrap();
    let mut a = model.new_state(prompt.len(), 8).unwrap();
    let mut b = model.new_state(prompt.len(), 8).unwrap();
    let ta = model
        .block_on(model.prefill(&mut a, &prompt, &feats))
        .unwrap();
    let tb = model
        .block_on(model.prefill(&mut b, &prompt, &feats))
        .unwrap();
    // Nothing in flight to read; nothing chosen to chain from.
    assert!(err(model.block_on(model.finish_step(&mut scratch))).contains("no decode step"));
    let chained = model.block_on(model.submit_step(&mut scratch, &mut [&mut a], StepInput::Chosen));
    assert!(err(chained).contains("last step's states"));
    // A chain names the same states as the step it continues.
    let start = StepInput::Tokens(&[ta]);
    model
        .block_on(model.submit_step(&mut scratch, &mut [&mut a], start))
        .unwrap();
    let other = model.block_on(model.submit_step(&mut scratch, &mut [&mut b], StepInput::Chosen));
    assert!(err(other).contains("last step's states"));
    // Two in flight at most, and `step` waits for none.
    model
        .block_on(model.submit_step(&mut scratch, &mut [&mut a], StepInput::Chosen))
        .unwrap();
    let third = model.block_on(model.submit_step(&mut scratch, &mut [&mut a], StepInput::Chosen));
    assert!(err(third).contains("in flight"));
    let step = model.block_on(model.step(&mut scratch, &mut [&mut b], &[tb]));
    assert!(err(step).contains("in flight"));
    // A refused call advanced nothing: both steps in flight read back, in order.
    assert_eq!(a.len(), prompt.len() + 2);
    model.block_on(model.finish_step(&mut scratch)).unwrap();
    model.block_on(model.finish_step(&mut scratch)).unwrap();
}
