//! Speed at the published shapes, with random weights (no download): weight upload, vision
//! encode, prefill, time to first token, decode tokens/s and the bandwidth that implies.
//!
//!   cargo run --release --example bench                      # paligemma-3b at 224, 448, 896
//!   cargo run --release --example bench -- --decoder gemma2  # paligemma2-3b (also gemma2-10b, gemma2-28b)
//!   cargo run --release --example bench -- --decoder gemma3-4b  # Gemma 3 4B at 896 (also 12b, 27b)
//!   cargo run --release --example bench -- --small           # a small shape (lavapipe, CI)
//!   cargo run --release --example bench -- --kernels         # each kernel at the model's sizes
//!   cargo run --release --example bench -- --sizes           # GPU memory of every checkpoint
//!
//! Host times are wall-clock around work the GPU has finished (`Gpu::wait`), the median of
//! `--repeat` runs after a warm-up that builds the pipelines. Where the adapter has timestamp
//! queries, a further run is timed on the GPU itself (first dispatch to last of each
//! submission): the `GPU` columns, free of host overhead.

mod bandwidth;

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use paligemma::config::{PaliGemmaConfig, TextConfig, VisionConfig};
use paligemma::{Gpu, GpuOptions, PaliGemma, Precision, StepInput, WeightFormat};

#[derive(Parser, Debug)]
struct Args {
    /// Resolutions to run (224, 448, 896).
    #[arg(long, value_delimiter = ',', default_value = "224,448,896")]
    res: Vec<usize>,
    /// gemma (PaliGemma 3B), gemma2 (PaliGemma 2 3B), gemma2-10b, gemma2-28b, or Gemma 3's
    /// gemma3-4b, gemma3-12b, gemma3-27b (at 896 px whatever --res says).
    #[arg(long, default_value = "gemma")]
    decoder: String,
    /// Decode steps to time.
    #[arg(long, default_value_t = 128)]
    new: usize,
    /// Timed repetitions of vision and prefill (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Text tokens after the image (the prompt "<bos>caption en\n" and padding).
    #[arg(long, default_value_t = 5)]
    text_tokens: usize,
    /// A small model instead of the published shapes (for software drivers and CI).
    #[arg(long)]
    small: bool,
    /// Weights: f32, f16 (bf16 random weights kept as bf16), q8 or q4 (the decoder quantized).
    #[arg(long, default_value = "f16")]
    precision: String,
    /// Print one JSON object per shape instead of the table.
    #[arg(long)]
    json: bool,
    /// Also print GPU time per kernel (each dispatch timed alone) for vision, prefill and decode.
    #[arg(long)]
    profile: bool,
    /// Time each kernel of the test table at the real model's sizes (the same cases
    /// tests/kernels.rs checks), then exit.
    #[arg(long)]
    kernels: bool,
    /// Print the GPU memory of every published checkpoint (weights at f16/q8/q4, bytes a decode
    /// step reads, KV cache) from its config, and exit: no GPU work (the figures equal what a
    /// built model allocates, tests/footprint.rs).
    #[arg(long)]
    sizes: bool,
    /// Batched decoding: sequences decoding together (a table of aggregate tokens/s follows;
    /// `--batches` with no value for none).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64", num_args = 0..)]
    batches: Vec<usize>,
    /// Vision and prefill on cooperative matrices (tensor cores, f16 operands) where the
    /// adapter has them (otherwise the tiled f32 matmul, as without the flag).
    #[arg(long)]
    coop: bool,
}

/// The sizing table: each published checkpoint at each resolution, weights as bf16 checkpoints
/// load them, one answer's KV cache (the image, 32 prompt tokens and 256 generated).
fn print_sizes() {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "| checkpoint | image tokens | weights f16 / q8 / q4 GiB | decode reads f16 / q8 / q4 GB/token | KV cache KiB/token | one answer's KV MiB | GPU memory for one answer, q4 / f16 GiB |"
    );
    println!("|---|---|---|---|---|---|---|");
    type Shape = fn(usize) -> PaliGemmaConfig;
    let families: [(&str, Shape); 4] = [
        ("paligemma-3b", PaliGemmaConfig::paligemma_3b),
        ("paligemma2-3b", PaliGemmaConfig::paligemma2_3b),
        ("paligemma2-10b", PaliGemmaConfig::paligemma2_10b),
        ("paligemma2-28b", PaliGemmaConfig::paligemma2_28b),
    ];
    type Preset = fn() -> PaliGemmaConfig;
    let gemma3: [(&str, Preset); 3] = [
        ("gemma-3-4b", PaliGemmaConfig::gemma3_4b),
        ("gemma-3-12b", PaliGemmaConfig::gemma3_12b),
        ("gemma-3-27b", PaliGemmaConfig::gemma3_27b),
    ];
    let rows = families
        .iter()
        .flat_map(|&(name, config)| [224, 448, 896].map(|r| (format!("{name}-{r}"), config(r))))
        .chain(
            gemma3
                .iter()
                .map(|&(name, config)| (name.to_string(), config())),
        );
    for (name, cfg) in rows {
        let [f16, q8, q4] = [Precision::F16, Precision::Q8, Precision::Q4]
            .map(|p| cfg.footprint(p, WeightFormat::Bf16));
        let image_tokens = cfg.tokens_per_image();
        let tokens = image_tokens + 32 + 256;
        let kv = q4.kv_bytes(tokens);
        println!(
            "| {name} | {image_tokens} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {} | {:.0} | {:.1} / {:.1} |",
            gib(f16.weights()),
            gib(q8.weights()),
            gib(q4.weights()),
            f16.decode_reads as f64 / 1e9,
            q8.decode_reads as f64 / 1e9,
            q4.decode_reads as f64 / 1e9,
            q4.kv_per_token / 1024,
            kv as f64 / (1 << 20) as f64,
            gib(q4.weights() + kv),
            gib(f16.weights() + kv),
        );
    }
}

/// The published shape `--decoder` names, at `r` px (Gemma 3: 896 px whatever `r`).
fn shape(decoder: &str, r: usize) -> anyhow::Result<(String, PaliGemmaConfig)> {
    Ok(match decoder {
        "gemma" => (
            format!("paligemma-3b-{r}"),
            PaliGemmaConfig::paligemma_3b(r),
        ),
        "gemma2" => (
            format!("paligemma2-3b-{r}"),
            PaliGemmaConfig::paligemma2_3b(r),
        ),
        "gemma2-10b" => (
            format!("paligemma2-10b-{r}"),
            PaliGemmaConfig::paligemma2_10b(r),
        ),
        "gemma2-28b" => (
            format!("paligemma2-28b-{r}"),
            PaliGemmaConfig::paligemma2_28b(r),
        ),
        "gemma3-4b" => ("gemma-3-4b".into(), PaliGemmaConfig::gemma3_4b()),
        "gemma3-12b" => ("gemma-3-12b".into(), PaliGemmaConfig::gemma3_12b()),
        "gemma3-27b" => ("gemma-3-27b".into(), PaliGemmaConfig::gemma3_27b()),
        d => anyhow::bail!(
            "--decoder {d}: expected gemma, gemma2, gemma2-10b, gemma2-28b, gemma3-4b, \
             gemma3-12b or gemma3-27b"
        ),
    })
}

/// The kernel table's real-size cases: time per run and the bandwidth their bytes imply.
fn bench_kernels(gpu: &Gpu) -> anyhow::Result<()> {
    println!("adapter: {}", gpu.adapter_name());
    println!("| case | ms | GB/s (bytes in + out / time) |\n|---|---|---|");
    for case in paligemma::testing::kernel_cases() {
        if !case.real_size || case.refuses.is_some() {
            continue;
        }
        if !case.runs_on(gpu) {
            println!("| {} | not run: no cooperative matrices | |", case.name);
            continue;
        }
        let (ms, bytes) = case.time(gpu, 5)?;
        println!(
            "| {} | {ms:.3} | {:.1} |",
            case.name,
            bytes as f64 / ms / 1e6
        );
    }
    Ok(())
}

fn small_config() -> PaliGemmaConfig {
    let mut c = PaliGemmaConfig::paligemma_3b(112);
    c.vision = VisionConfig {
        hidden_size: 128,
        intermediate_size: 512,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        ..VisionConfig::so400m_14(112)
    };
    c.text = TextConfig {
        vocab_size: 8192,
        hidden_size: 256,
        intermediate_size: 1024,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 1,
        head_dim: 64,
        sliding_layers: vec![false; 2],
        ..c.text
    };
    c.image_token_index = 8000;
    c
}

fn print_kernels(what: &str, times: Vec<(String, usize, f64)>) {
    let total: f64 = times.iter().map(|t| t.2).sum();
    println!("\n{what}: {total:.2} ms of GPU time, each dispatch timed alone");
    println!("| kernel | dispatches | ms | share |\n|---|---|---|---|");
    for (name, n, ms) in times {
        println!(
            "| {name} | {n} | {ms:.3} | {:.0}% |",
            100.0 * ms / total.max(1e-9)
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,wgpu_hal::gles=off"),
    )
    .init();
    let args = Args::parse();
    if args.sizes {
        print_sizes();
        return Ok(());
    }
    let gpu = Gpu::new(&GpuOptions {
        cooperative_matrix: args.coop,
        ..Default::default()
    })?;
    println!(
        "many-row products (vision, prefill): {}",
        if gpu.cooperative_matrix() {
            "cooperative matrices (tensor cores, f16 operands)"
        } else {
            "tiled f32 matmul"
        }
    );
    if args.kernels {
        return bench_kernels(&gpu);
    }
    let shapes: Vec<(String, PaliGemmaConfig)> = if args.small {
        vec![("small-112".into(), small_config())]
    } else {
        let mut shapes = Vec::new();
        for &r in &args.res {
            match shape(&args.decoder, r)? {
                // Gemma 3 has one resolution: bench it once.
                s if shapes.contains(&s) => {}
                s => shapes.push(s),
            }
        }
        shapes
    };
    let (format, precision) = match args.precision.as_str() {
        "f32" => (WeightFormat::F32, Precision::F32),
        "f16" => (WeightFormat::Bf16, Precision::F16),
        "q8" => (WeightFormat::Bf16, Precision::Q8),
        "q4" => (WeightFormat::Bf16, Precision::Q4),
        p => anyhow::bail!("--precision {p}: expected f32, f16, q8 or q4"),
    };
    // The small shape's copy stays small: CI runs it on a CPU.
    let copy = bandwidth::Copy::measure(&gpu, if args.small { 64 << 20 } else { 1 << 30 })?;
    let copy_bps = copy.best();
    if !args.json {
        println!("adapter: {}", gpu.adapter_name());
        println!(
            "device memory bandwidth (bytes read + written): {:.1} GB/s by a copy kernel, {:.1} GB/s by copy_buffer_to_buffer; the decode floor is a step's weight bytes at the better",
            copy.kernel / 1e9,
            copy.engine / 1e9
        );
        println!(
            "| model | precision | upload s | vision ms | prefill ms (tokens) | TTFT ms | decode tok/s | run-ahead tok/s | sampled run-ahead tok/s | decode GB/token | decode GB/s | floor tok/s | of floor | GPU vision / prefill / step ms | weights MiB | state MiB | dispatches per token | host us per step |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    for (name, cfg) in shapes {
        let before = gpu.allocated_bytes();
        let t = Instant::now();
        let model = PaliGemma::random(gpu.clone(), cfg.clone(), 1, format, Some(precision))
            .with_context(|| format!("building {name}"))?;
        let upload_s = t.elapsed().as_secs_f64();
        let weight_bytes = gpu.allocated_bytes() - before;
        let n = model.num_image_tokens();
        let s = cfg.vision.image_size;
        let pixels: Vec<f32> = (0..3 * s * s)
            .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
            .collect();
        let mut ids = vec![cfg.image_token_index; n];
        ids.push(cfg.bos_token_id);
        ids.extend((0..args.text_tokens.saturating_sub(1)).map(|i| 1000 + i as u32));

        let mut vision_ms = Vec::new();
        let mut prefill_ms = Vec::new();
        let mut feats = None;
        for rep in 0..=args.repeat {
            let t = Instant::now();
            let f = model.block_on(model.encode(paligemma::ImageInput::pixels(&pixels)))?;
            gpu.wait()?;
            let v = t.elapsed().as_secs_f64() * 1e3;
            let mut session = model.new_state(ids.len(), args.new + 1)?;
            let t = Instant::now();
            model.block_on(model.prefill(&mut session, &ids, &f))?;
            let p = t.elapsed().as_secs_f64() * 1e3;
            if rep > 0 {
                vision_ms.push(v);
                prefill_ms.push(p);
            }
            feats = Some(f);
        }
        let feats = feats.expect("at least one run");
        let before_session = gpu.allocated_bytes();
        let mut session = model.new_state(ids.len(), args.new + 1)?;
        let session_bytes = gpu.allocated_bytes() - before_session;
        let mut tok = model.block_on(model.prefill(&mut session, &ids, &feats))?;
        let mut scratch = model.decode_scratch()?;
        tok = model.block_on(model.step(&mut scratch, &mut [&mut session], &[tok]))?[0]; // warm-up step
        let (t, dispatched) = (Instant::now(), gpu.dispatch_count());
        let mut host_us = Vec::with_capacity(args.new);
        for _ in 0..args.new {
            tok = model.block_on(model.step(
                &mut scratch,
                &mut [&mut session],
                &[tok.min(cfg.text.vocab_size as u32 - 1)],
            ))?[0];
            host_us.push(scratch.last_host_us());
        }
        let decode_s = t.elapsed().as_secs_f64();
        // Counted as recorded: no timestamp queries needed.
        let dispatches = (gpu.dispatch_count() - dispatched) as usize / args.new.max(1);
        let host_us = median(host_us);
        let ahead_tps = run_ahead(&model, &mut scratch, &ids, &feats, args.new, None)?;
        // Drawn on the GPU at T = 1, top-p 0.9: the difference is what sampling costs a token.
        let top_p = paligemma::sampling::SamplingOptions {
            temperature: 1.0,
            top_p: 0.9,
            ..Default::default()
        };
        let sampled_tps = run_ahead(&model, &mut scratch, &ids, &feats, args.new, Some(&top_p))?;
        // The same work timed by GPU timestamps.
        gpu.set_profiling(true, false);
        model.block_on(model.encode(paligemma::ImageInput::pixels(&pixels)))?;
        let gpu_vision = gpu.take_gpu_ms();
        let mut s2 = model.new_state(ids.len(), 9)?;
        let mut t2 = model.block_on(model.prefill(&mut s2, &ids, &feats))?;
        let gpu_prefill = gpu.take_gpu_ms();
        for _ in 0..8 {
            t2 = model.block_on(model.step(
                &mut scratch,
                &mut [&mut s2],
                &[t2.min(cfg.text.vocab_size as u32 - 1)],
            ))?[0];
        }
        let gpu_step = gpu.take_gpu_ms().map(|ms| ms / 8.0);
        // Dispatches per decode token, counted by the per-kernel profile of 8 steps.
        gpu.set_profiling(true, true);
        if args.profile {
            model.block_on(model.encode(paligemma::ImageInput::pixels(&pixels)))?;
            print_kernels(&format!("{name} vision"), gpu.take_kernel_times());
        }
        let mut s3 = model.new_state(ids.len(), 9)?;
        let mut t3 = model.block_on(model.prefill(&mut s3, &ids, &feats))?;
        let prefill_kernels = gpu.take_kernel_times();
        for _ in 0..8 {
            let t = t3.min(cfg.text.vocab_size as u32 - 1);
            t3 = model.block_on(model.step(&mut scratch, &mut [&mut s3], &[t]))?[0];
        }
        let decode_kernels = gpu.take_kernel_times();
        if args.profile {
            print_kernels(&format!("{name} prefill"), prefill_kernels);
            print_kernels(&format!("{name} 8 decode steps"), decode_kernels);
        }
        gpu.set_profiling(false, false);
        let batch_rows = bench_batches(&model, &feats, &ids, &args)?;
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let tps = args.new as f64 / decode_s;
        // What a decode step must read: the decoder's weight buffers, block scales included.
        let bytes = model.decode_weight_bytes() as f64;
        let gbs = bytes * tps / 1e9;
        let floor_tps = copy_bps / bytes;
        // Weights, and one session (KV cache, scratch); the vision tower's transient scratch
        // is not counted.
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let (weights_mib, session_mib) = (mib(weight_bytes), mib(session_bytes));
        let (v, p) = (median(vision_ms), median(prefill_ms));
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "model": name, "adapter": gpu.adapter_name(), "upload_s": upload_s,
                    "vision_ms": v, "prefill_ms": p, "prompt_tokens": ids.len(), "ttft_ms": v + p,
                    "precision": args.precision, "decode_bytes_per_token": bytes,
                    "decode_tokens_per_s": tps, "decode_gb_per_s": gbs,
                    "decode_run_ahead_tokens_per_s": ahead_tps,
                    "decode_sampled_run_ahead_tokens_per_s": sampled_tps,
                    "weights_mib": weights_mib, "session_mib": session_mib,
                    "gpu_vision_ms": gpu_vision, "gpu_prefill_ms": gpu_prefill,
                    "gpu_decode_step_ms": gpu_step, "decode_dispatches_per_token": dispatches,
                    "decode_host_us_per_step": host_us, "copy_gb_per_s": copy_bps / 1e9,
                    "decode_floor_tokens_per_s": floor_tps,
                })
            );
        } else {
            println!(
                "| {name} | {} | {upload_s:.2} | {v:.1} | {p:.1} ({}) | {:.1} | {tps:.1} | {ahead_tps:.1} | {sampled_tps:.1} | {:.3} | {gbs:.1} | {floor_tps:.0} | {:.0}% | {} / {} / {} | {weights_mib:.0} | {session_mib:.0} | {dispatches} | {host_us:.0} |",
                args.precision,
                ids.len(),
                v + p,
                bytes / 1e9,
                100.0 * tps.max(ahead_tps) / floor_tps,
                fmt(gpu_vision),
                fmt(gpu_prefill),
                fmt(gpu_step),
            );
        }
        if !args.json && !batch_rows.is_empty() {
            println!();
            println!(
                "| {name} {} | sequences | step ms | aggregate tok/s | tok/s per sequence | weight passes per step |",
                args.precision
            );
            println!("|---|---|---|---|---|---|");
            for (b, step_ms) in batch_rows {
                let agg = b as f64 * 1e3 / step_ms;
                println!(
                    "| | {b} | {step_ms:.2} | {agg:.1} | {:.1} | {} |",
                    agg / b as f64,
                    b.div_ceil(16)
                );
            }
            println!();
        }
        drop(model);
    }
    Ok(())
}

/// Decode tokens/s with the GPU running ahead of the host, as `generate` decodes an answer:
/// each step's input is the previous step's choice on the GPU (argmax, or a draw as
/// `sampling` says), submitted before that step is read back.
fn run_ahead(
    model: &PaliGemma,
    scratch: &mut paligemma::DecodeScratch,
    ids: &[u32],
    feats: &paligemma::ImageFeatures,
    new: usize,
    sampling: Option<&paligemma::sampling::SamplingOptions>,
) -> anyhow::Result<f64> {
    let mut state = model.new_state(ids.len(), new + 2)?;
    if let Some(s) = sampling {
        state.set_sampling(s)?;
    }
    let first = model.block_on(model.prefill(&mut state, ids, feats))?;
    let tokens = StepInput::Tokens(&[first]);
    model.block_on(model.submit_step(scratch, &mut [&mut state], tokens))?;
    let t = Instant::now();
    for _ in 0..new {
        model.block_on(model.submit_step(scratch, &mut [&mut state], StepInput::Chosen))?;
        model.block_on(model.finish_step(scratch))?;
    }
    model.block_on(model.finish_step(scratch))?;
    Ok(new as f64 / t.elapsed().as_secs_f64())
}

/// Batched decoding: for each batch size, that many sessions prefilled with the same prompt
/// decode `--new` steps together (`step` over all of them); returns (sequences, ms per step). Each group
/// of 16 sequences reads the weights once per step.
fn bench_batches(
    model: &PaliGemma,
    feats: &paligemma::ImageFeatures,
    ids: &[u32],
    args: &Args,
) -> anyhow::Result<Vec<(usize, f64)>> {
    let vocab = model.config().text.vocab_size as u32;
    let mut batch = model.decode_scratch()?;
    let mut rows = Vec::new();
    for &b in &args.batches {
        let mut sessions = Vec::with_capacity(b);
        let mut tokens = Vec::with_capacity(b);
        for _ in 0..b {
            let mut s = model.new_state(ids.len(), args.new + 1)?;
            tokens.push(model.block_on(model.prefill(&mut s, ids, feats))?);
            sessions.push(s);
        }
        let mut refs: Vec<&mut paligemma::DecoderState> = sessions.iter_mut().collect();
        tokens = model.block_on(model.step(&mut batch, &mut refs, &tokens))?; // warm-up
        let t = Instant::now();
        for _ in 1..args.new {
            let next: Vec<u32> = tokens.iter().map(|&t| t.min(vocab - 1)).collect();
            tokens = model.block_on(model.step(&mut batch, &mut refs, &next))?;
        }
        let steps = args.new.saturating_sub(1).max(1);
        rows.push((b, t.elapsed().as_secs_f64() * 1e3 / steps as f64));
    }
    Ok(rows)
}
