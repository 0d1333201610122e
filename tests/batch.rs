//! Batched decoding: sequences of different images, prompts, lengths and sampling settings,
//! advanced together (starting at different steps, more than one GEMV batch of them), choose
//! exactly the tokens, from bit-identical logits, that each chooses alone.

mod common;

use common::gpu;
use paligemma::sampling::SamplingOptions;
use paligemma::{FinishReason, GenerateOptions, PaliGemma, Precision, Sequence, Token};

/// A small test picture: a gradient whose colours depend on `seed`.
fn picture(seed: u32) -> image::DynamicImage {
    let (w, h) = (37 + seed * 5, 29 + seed * 3);
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
        let v = |k: u32| ((x * (k + seed) + y * (3 * k + 1) + seed * 40) % 256) as u8;
        image::Rgb([v(1), v(2), v(5)])
    }))
}

struct Job {
    image: image::DynamicImage,
    prompt: String,
    opts: GenerateOptions,
    /// Joins the running batch at this step.
    joins_at: usize,
}

fn jobs() -> Vec<Job> {
    let prompts = [
        "caption en",
        "detect cat ; dog",
        "answer en what is this?",
        "ocr",
    ];
    (0..24u32)
        .map(|i| {
            let sampling = if i % 5 == 3 {
                SamplingOptions {
                    temperature: 0.8,
                    top_p: 0.9,
                    top_k: 40,
                    seed: i as u64,
                }
            } else {
                SamplingOptions::default()
            };
            Job {
                image: picture(i % 7),
                prompt: prompts[i as usize % prompts.len()].to_string(),
                opts: GenerateOptions {
                    max_new_tokens: 4 + (i as usize * 7) % 11,
                    sampling,
                    stop_at_eos: true,
                    keep_logits: true,
                    logprobs: (i % 3 == 0).then_some(i as usize % 5),
                },
                joins_at: i as usize % 3,
            }
        })
        .collect()
}

fn check(model: &PaliGemma, what: &str) {
    let jobs = jobs();
    let alone: Vec<_> = jobs
        .iter()
        .map(|j| {
            model
                .block_on(model.generate(&j.image, &j.prompt, &j.opts, |_, _| true))
                .unwrap()
        })
        .collect();

    let mut batch = model.decode_scratch().unwrap();
    let mut running: Vec<(usize, Sequence, Vec<Token>)> = Vec::new();
    let mut done: Vec<Option<(Sequence, Vec<Token>)>> = (0..jobs.len()).map(|_| None).collect();
    let mut step = 0;
    let mut largest = 0;
    while done.iter().any(Option::is_none) {
        for (i, j) in jobs.iter().enumerate() {
            if j.joins_at == step {
                let (seq, first) = model
                    .block_on(model.start(&j.image, &j.prompt, &j.opts))
                    .unwrap();
                running.push((i, seq, first.into_iter().collect()));
            }
        }
        let mut seqs: Vec<&mut Sequence> = running.iter_mut().map(|(_, s, _)| s).collect();
        largest = largest.max(seqs.iter().filter(|s| s.finished().is_none()).count());
        let out = model
            .block_on(model.advance(&mut batch, &mut seqs))
            .unwrap();
        for ((_, _, tokens), t) in running.iter_mut().zip(out) {
            tokens.extend(t);
        }
        let (finished, still): (Vec<_>, Vec<_>) = running
            .into_iter()
            .partition(|(_, s, _)| s.finished().is_some());
        for (i, s, tokens) in finished {
            done[i] = Some((s, tokens));
        }
        running = still;
        step += 1;
    }

    for (i, (a, d)) in alone.iter().zip(&done).enumerate() {
        let (seq, tokens) = d.as_ref().unwrap();
        assert_eq!(
            seq.generated_ids(),
            &a.generated_ids[..],
            "{what}: job {i} ({:?}) chose other tokens in the batch",
            jobs[i].prompt
        );
        let streamed: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        assert_eq!(streamed, a.generated_ids, "{what}: job {i}'s stream");
        let text: String = tokens.iter().map(|t| t.piece.as_str()).collect();
        assert_eq!(text, a.text, "{what}: job {i}'s text");
        let logprobs: Vec<_> = tokens.iter().filter_map(|t| t.logprobs.clone()).collect();
        match &a.logprobs {
            Some(want) => assert_eq!(&logprobs, want, "{what}: job {i}'s logprobs"),
            None => assert!(logprobs.is_empty()),
        }
        assert_eq!(seq.text(), a.text);
        let reason = seq.finished().unwrap();
        assert!(
            matches!(reason, FinishReason::Stop | FinishReason::Length),
            "{what}: job {i} {reason:?}"
        );
    }
    // Bit-identical logits, not merely the same argmax: the batched GEMV sums each row as the
    // single-row one does.
    for (i, (a, d)) in alone.iter().zip(&done).enumerate() {
        let (want, got) = (
            a.step_logits.as_ref().unwrap(),
            d.as_ref().unwrap().0.step_logits(),
        );
        let got = got.unwrap();
        assert_eq!(want.len(), got.len());
        let differ = want
            .iter()
            .zip(got)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(
            differ, 0,
            "{what}: job {i}: {differ} logits differ from decoding alone"
        );
    }
    // Each token's log-probabilities are its logits' log-softmax (f64 reference, 1e-5).
    for (a, j) in alone.iter().zip(&jobs) {
        let (Some(logprobs), Some(top)) = (&a.logprobs, j.opts.logprobs) else {
            continue;
        };
        let logits = a.step_logits.as_ref().unwrap();
        let vocab = logits.len() / a.generated_ids.len();
        for (row, l) in logits.chunks(vocab).zip(logprobs) {
            let log_z = row.iter().map(|&x| f64::from(x).exp()).sum::<f64>().ln();
            let want = (f64::from(row[l.chosen.id as usize]) - log_z) as f32;
            assert!((l.chosen.logprob - want).abs() < 1e-5, "{what}");
            assert_eq!(l.top.len(), top);
            let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert!(l.top.first().is_none_or(|t| row[t.id as usize] == best));
        }
    }
    assert!(
        largest > 16,
        "{what}: the batch never spanned two GEMV groups ({largest})"
    );
    eprintln!(
        "{what}: {} jobs, up to {largest} in one step, identical ids",
        jobs.len()
    );
}

#[test]
fn a_batch_decodes_as_each_sequence_alone() {
    for (name, precision) in [
        ("mqa", Precision::F32),
        ("gqa", Precision::F16),
        ("gemma2", Precision::Q8),
    ] {
        let dir = common::fixture_path(name).join("model");
        let model = PaliGemma::load_on(
            gpu().clone(),
            &dir,
            &paligemma::LoadOptions::in_precision(Some(precision)),
        )
        .unwrap();
        check(&model, &format!("{name} {precision:?}"));
    }
}

#[test]
fn a_batched_step_refuses_bad_input_and_leaves_states_alone() {
    let dir = common::fixture_path("mqa").join("model");
    let model = PaliGemma::load_on(
        gpu().clone(),
        &dir,
        &paligemma::LoadOptions::in_precision(Some(Precision::F32)),
    )
    .unwrap();
    let mut batch = model.decode_scratch().unwrap();
    let ids = model.prompt_ids("caption en").unwrap();
    let features = model
        .block_on(model.encode(paligemma::ImageInput::pixels(
            &paligemma::preprocess::preprocess(&picture(1), model.image_size() as u32),
        )))
        .unwrap();
    let mut a = model.new_state(ids.len(), 2).unwrap();
    let mut b = model.new_state(ids.len(), 2).unwrap();
    let t = model
        .block_on(model.prefill(&mut a, &ids, &features))
        .unwrap();
    // b was never prefilled.
    let err = model
        .block_on(model.step(&mut batch, &mut [&mut a, &mut b], &[t, t]))
        .unwrap_err();
    assert!(err.to_string().contains("prefilled"), "{err}");
    assert_eq!(a.len(), ids.len());
    model
        .block_on(model.prefill(&mut b, &ids, &features))
        .unwrap();
    let vocab = model.config().text.vocab_size as u32;
    let err = model
        .block_on(model.step(&mut batch, &mut [&mut a, &mut b], &[t, vocab]))
        .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let err = model
        .block_on(model.step(&mut batch, &mut [&mut a, &mut b], &[t]))
        .unwrap_err();
    assert!(err.to_string().contains("2 states but 1 tokens"), "{err}");
    assert_eq!((a.len(), b.len()), (ids.len(), ids.len()));
    // Two steps fill both; a third has no room.
    for _ in 0..2 {
        model
            .block_on(model.step(&mut batch, &mut [&mut a, &mut b], &[t, t]))
            .unwrap();
    }
    let err = model
        .block_on(model.step(&mut batch, &mut [&mut a, &mut b], &[t, t]))
        .unwrap_err();
    assert!(err.to_string().contains("room"), "{err}");
}

/// The library's scheduler: requests submitted at once and while others run, with a batch
/// smaller than the work, each answered as it is alone (ids, text, reason); a request that
/// cannot start fails alone; one cancelled while running is reported cancelled; the events
/// of a request come in order (its tokens, then its end) and every request ends once.
#[test]
fn the_scheduler_answers_each_request_as_alone() {
    use paligemma::{Event, ImageInput, Request, Scheduler, SchedulerOptions};
    use std::collections::HashMap;
    let dir = common::fixture_path("mqa").join("model");
    let load = paligemma::LoadOptions::in_precision(Some(Precision::F32));
    let model = PaliGemma::load_on(gpu().clone(), &dir, &load).unwrap();
    let jobs: Vec<Job> = jobs().into_iter().take(7).collect();
    let alone: Vec<_> = jobs
        .iter()
        .map(|j| model.block_on(model.generate(&j.image, &j.prompt, &j.opts, |_, _| true)))
        .collect::<Result<_, _>>()
        .unwrap();
    let mut s = Scheduler::new(SchedulerOptions {
        max_batch: 3,
        max_waiting: 16,
        starts_per_step: 2,
    });
    let request = |j: &Job| Request {
        images: vec![j.image.clone().into()],
        prompt: j.prompt.as_str().into(),
        opts: j.opts.clone(),
    };
    // Four now, the rest after the first step; a bad one and one to cancel.
    let mut ids: Vec<u64> = jobs[..4]
        .iter()
        .map(|j| s.submit(request(j)).unwrap())
        .collect();
    let bad = s
        .submit(Request {
            images: vec![ImageInput::Pixels(vec![0.0; 10].into())],
            ..request(&jobs[0])
        })
        .unwrap();
    let long = GenerateOptions {
        max_new_tokens: 50,
        stop_at_eos: false,
        ..jobs[0].opts.clone()
    };
    let cancelled = s
        .submit(Request {
            opts: long,
            ..request(&jobs[0])
        })
        .unwrap();
    let (mut tokens, mut ends) = (HashMap::<u64, Vec<u32>>::new(), HashMap::new());
    let mut steps = 0;
    while !s.is_idle() {
        for event in model.block_on(s.step(&model)).unwrap() {
            match event {
                Event::Token { id, token } => {
                    assert!(!ends.contains_key(&id), "a token after the end of {id}");
                    tokens.entry(id).or_default().push(token.id);
                }
                Event::Done { id, generation } => {
                    assert!(ends.insert(id, Ok(generation)).is_none())
                }
                Event::Failed { id, error } => assert!(ends.insert(id, Err(error)).is_none()),
                Event::Cancelled { id } => {
                    assert!(ends.insert(id, Err("cancelled".into())).is_none())
                }
            }
        }
        steps += 1;
        if steps == 1 {
            ids.extend(jobs[4..].iter().map(|j| s.submit(request(j)).unwrap()));
        }
        if tokens.get(&cancelled).is_some_and(|t| t.len() == 3) && !ends.contains_key(&cancelled) {
            assert!(s.cancel(cancelled), "a running request can be cancelled");
            assert!(!s.cancel(cancelled + 100), "no such request");
        }
        assert!(
            s.running() <= 3,
            "{} running over a batch of 3",
            s.running()
        );
        assert!(steps < 500, "the scheduler does not finish");
    }
    for (i, id) in ids.iter().enumerate() {
        let g = ends[id].as_ref().unwrap();
        assert_eq!(g.generated_ids, alone[i].generated_ids, "request {i}");
        assert_eq!(g.text, alone[i].text, "request {i}");
        assert_eq!(g.finish_reason, alone[i].finish_reason, "request {i}");
        assert_eq!(tokens[id], g.generated_ids, "request {i}: streamed tokens");
    }
    assert!(
        ends[&bad].as_ref().unwrap_err().contains("pixel"),
        "{:?}",
        ends[&bad].as_ref().err()
    );
    assert_eq!(ends[&cancelled].as_ref().unwrap_err(), "cancelled");
    assert_eq!(tokens[&cancelled].len(), 3);
    assert_eq!(ends.len(), jobs.len() + 2);
}
