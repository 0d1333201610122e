//! What a game engine needs around the model: a rendered frame (a texture) answered as its
//! pixels are, memory reported and given back when the model is dropped, generation cancelled,
//! the model used from another thread than the one that loaded it.

mod common;

use std::sync::Arc;

use common::gpu;
use paligemma::{FinishReason, GenerateOptions, PaliGemma, Precision};

/// The tests of this binary run one at a time: the memory test measures the process, which
/// the others would disturb.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn model() -> PaliGemma {
    let dir = common::fixture_path("mqa/model");
    PaliGemma::load_on(
        gpu().clone(),
        &dir,
        &paligemma::LoadOptions::in_precision(Some(Precision::F32)),
    )
    .unwrap()
}

/// The fixture photo as a texture of `format` (as a render target would hold it).
fn texture_of(image: &image::DynamicImage, format: wgpu::TextureFormat) -> wgpu::Texture {
    let rgba = image.to_rgba8();
    let size = rgba.dimensions();
    paligemma::testing::texture_with(gpu(), format, size, rgba.as_raw())
}

fn photo() -> image::DynamicImage {
    paligemma::preprocess::load_image(&common::fixture_path("mqa/photo.jpg")).unwrap()
}

fn opts(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: n,
        keep_logits: true,
        ..Default::default()
    }
}

#[test]
fn a_texture_is_answered_as_its_pixels_are() {
    let _serial = serial();
    let model = model();
    let image = photo();
    let want = model
        .block_on(model.generate(&image, "detect cat", &opts(8), |_, _| true))
        .unwrap();
    for format in [
        wgpu::TextureFormat::Rgba8Unorm,
        wgpu::TextureFormat::Rgba8UnormSrgb,
        wgpu::TextureFormat::Bgra8Unorm,
        wgpu::TextureFormat::Bgra8UnormSrgb,
    ] {
        let texture = texture_of(&image, format);
        let got = model
            .block_on(model.generate(&texture, "detect cat", &opts(8), |_, _| true))
            .unwrap();
        assert_eq!(got.generated_ids, want.generated_ids, "{format:?}");
        assert_eq!(got.text, want.text, "{format:?}");
        // The GPU preprocessor is bit-identical to the CPU one, and so is everything after it.
        assert_eq!(
            got.step_logits, want.step_logits,
            "{format:?}: logits differ"
        );
    }
}

/// Every awaitable form is `Send`: an engine's task pool, tokio or a render thread may move a
/// generation between threads while it waits (the Bevy example keeps its generations in a
/// render-world resource). Checked by the compiler; nothing runs. (wgpu's error-scope guards
/// are not `Send`, so no scope may live across an await.)
#[test]
fn the_awaitable_api_is_send() {
    type Inputs<'a> = (&'a image::DynamicImage, &'a wgpu::Texture, &'a [f32]);
    type Decoding<'a, 'b> = (
        &'a mut paligemma::DecoderState,
        &'a mut paligemma::DecodeScratch,
        &'a mut [&'b mut paligemma::Sequence],
    );
    fn send_everywhere(
        m: &PaliGemma,
        (image, texture, pixels): Inputs,
        features: &paligemma::ImageFeatures,
        (state, scratch, seqs): Decoding,
    ) {
        fn send<T: Send>(_: T) {}
        let o = GenerateOptions::default();
        send(m.generate(image, "", &o, |_, _| true));
        send(m.generate(texture, "", &o, |_, _| true));
        send(m.start(image, "", &o));
        send(m.start(texture, "", &o));
        send(m.encode(paligemma::ImageInput::pixels(pixels)));
        send(m.encode(texture));
        send(m.logits(state));
        send(m.gpu().read_async(&features.buffer, 0, 4));
        send(m.prefill(state, &[], features));
        send(m.step(scratch, &mut [state], &[0]));
        send(m.advance(scratch, seqs));
        let mut scheduler = paligemma::Scheduler::new(Default::default());
        send(async move { scheduler.step(m).await });
    }
    let _ = send_everywhere;
}

#[test]
fn generation_can_be_cancelled() {
    let _serial = serial();
    let model = model();
    let image = photo();
    // From the callback.
    let mut seen = 0;
    let out = model
        .block_on(model.generate(&image, "caption en", &opts(20), |_, _| {
            seen += 1;
            seen < 3
        }))
        .unwrap();
    assert_eq!(out.generated_ids.len(), 3);
    // A sequence driven a step per frame, cancelled between frames.
    let (mut seq, _) = model
        .block_on(model.start(&image, "caption en", &opts(20)))
        .unwrap();
    let mut batch = model.decode_scratch().unwrap();
    assert!(
        model
            .block_on(model.advance(&mut batch, &mut [&mut seq]))
            .unwrap()[0]
            .is_some()
    );
    seq.cancel();
    assert_eq!(seq.finished(), Some(FinishReason::Cancelled));
    assert!(
        model
            .block_on(model.advance(&mut batch, &mut [&mut seq]))
            .unwrap()[0]
            .is_none()
    );
    assert_eq!(seq.generated_ids().len(), 2);
}

#[test]
fn the_model_answers_from_another_thread() {
    let _serial = serial();
    let model = Arc::new(model());
    let image = photo();
    let here = model
        .block_on(model.generate(&image, "caption en", &opts(6), |_, _| true))
        .unwrap();
    let (m, img) = (model.clone(), image.clone());
    let there = std::thread::spawn(move || {
        m.block_on(m.generate(&img, "caption en", &opts(6), |_, _| true))
            .unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(here.generated_ids, there.generated_ids);
}

/// A game's frame loop drives a generation without ever blocking on the GPU: the device is
/// polled by the loop (`set_polled_by_caller`), and the `_async` future, polled once a frame
/// with a no-op waker, returns to the loop between layers (the frame's own work is queued
/// between them, not behind the whole prefill) and at every read-back, and ends with what the
/// blocking call gives.
#[test]
fn a_frame_loop_drives_generation_without_blocking() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    use std::time::{Duration, Instant};

    let _serial = serial();
    // A device of its own: the flag is the device's, and the other tests block.
    let gpu = paligemma::Gpu::new(&Default::default()).unwrap();
    let dir = common::fixture_path("mqa/model");
    let model = PaliGemma::load_on(
        gpu.clone(),
        &dir,
        &paligemma::LoadOptions::in_precision(Some(Precision::F32)),
    )
    .unwrap();
    let image = photo();
    let want = model
        .block_on(model.generate(&image, "caption en", &opts(8), |_, _| true))
        .unwrap();
    gpu.set_polled_by_caller(true);
    // Rendered on the model's device (a texture of another device is a wgpu panic).
    let rgba = image.to_rgba8();
    let format = wgpu::TextureFormat::Rgba8UnormSrgb;
    let texture = paligemma::testing::texture_with(&gpu, format, rgba.dimensions(), rgba.as_raw());
    let mut streamed = Vec::new();
    let (mut frames, mut longest) = (0usize, Duration::ZERO);
    let got = {
        let on_token = |id, _: &str| {
            streamed.push(id);
            true
        };
        let opts = opts(8);
        let future = model.generate(&texture, "caption en", &opts, on_token);
        let mut future = std::pin::pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            let t = Instant::now();
            let poll = future.as_mut().poll(&mut cx);
            longest = longest.max(t.elapsed());
            if let Poll::Ready(out) = poll {
                break out.unwrap();
            }
            // The rest of the frame: the engine renders, then polls its device.
            frames += 1;
            gpu.device().poll(wgpu::PollType::Poll).unwrap();
            std::thread::sleep(Duration::from_micros(100));
        }
    };
    gpu.set_polled_by_caller(false);
    assert_eq!(got.generated_ids, want.generated_ids);
    assert_eq!(got.step_logits, want.step_logits);
    assert_eq!(streamed, got.generated_ids);
    // Back to the loop between the layers of the vision tower and of the prefill, and at each
    // token's read-back.
    let cfg = model.config();
    let layers = cfg.vision.num_hidden_layers + cfg.text.num_hidden_layers;
    assert!(
        frames >= layers + got.generated_ids.len(),
        "{frames} frames for {layers} layers and {} tokens",
        got.generated_ids.len()
    );
    eprintln!(
        "{} tokens over {frames} frames; the longest poll of the future took {longest:?}",
        got.generated_ids.len()
    );
}

/// Anonymous + shared resident memory of this process, in KiB (lavapipe's GPU memory is host
/// memory, so GPU buffers count here).
#[cfg(target_os = "linux")]
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .filter(|l| l.starts_with("RssAnon:") || l.starts_with("RssShmem:"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A model at the fixture's shapes but with a 16384 x 256 vocabulary table (16 MiB in f32,
/// random weights), so a leaked model would show.
fn heavier_model() -> PaliGemma {
    let text = std::fs::read_to_string(common::fixture_path("mqa/model/config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    cfg["text_config"]["vocab_size"] = 16384.into();
    cfg["text_config"]["hidden_size"] = 256.into();
    let cfg = paligemma::config::PaliGemmaConfig::from_json(&cfg.to_string(), "heavier").unwrap();
    let (f32, p) = (paligemma::WeightFormat::F32, Some(Precision::F32));
    PaliGemma::random(gpu().clone(), cfg, 7, f32, p).unwrap()
}

#[cfg(target_os = "linux")]
#[test]
fn memory_is_reported_and_given_back_on_drop() {
    let _serial = serial();
    let image = photo();
    let texture = texture_of(&image, wgpu::TextureFormat::Rgba8UnormSrgb);
    let cycle = || {
        let model = heavier_model();
        assert!(
            model.weight_memory() > 16 << 20,
            "{}",
            model.weight_memory()
        );
        let features = model.block_on(model.encode(&texture)).unwrap();
        let t = &model.config().text;
        let mut ids = vec![model.config().image_token_index; features.n];
        ids.extend([2, 100, 101]);
        let mut s = model.new_state(ids.len(), 4).unwrap();
        // At least the KV cache: layers x 2 x positions x kv width x 4 bytes.
        let cache = t.num_hidden_layers * 2 * (ids.len() + 4) * t.head_dim * 4;
        assert!(s.gpu_bytes() >= cache as u64, "{} < {cache}", s.gpu_bytes());
        let mut tok = model
            .block_on(model.prefill(&mut s, &ids, &features))
            .unwrap();
        let mut scratch = model.decode_scratch().unwrap();
        for _ in 0..3 {
            tok = model
                .block_on(model.step(&mut scratch, &mut [&mut s], &[tok]))
                .unwrap()[0];
        }
        gpu().wait().unwrap();
    };
    for _ in 0..3 {
        cycle();
    }
    let before = rss_kib();
    for _ in 0..15 {
        cycle();
    }
    let after = rss_kib();
    let grown = after.saturating_sub(before) as f64 / 1024.0;
    eprintln!(
        "15 load/generate/drop cycles of a 16 MiB model: {:.1} -> {:.1} MB",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    assert!(grown < 8.0, "memory grew by {grown:.1} MB over 15 cycles");
}
