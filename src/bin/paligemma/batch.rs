//! `paligemma batch`: one prompt over many images, decoded together (continuous batching: an
//! image starts as soon as another finishes), one JSON line per image appended to `--out` as it
//! finishes. Images already in `--out` are skipped, so an interrupted run resumes; an image
//! that cannot be read is reported and skipped.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use paligemma::detection::{answers_with_boxes, parse_answer};
use paligemma::sampling::SamplingOptions;
use paligemma::{GenerateOptions, PaliGemma, Sequence};

use crate::load_model;

#[derive(clap::Args, Debug)]
pub struct BatchArgs {
    #[command(flatten)]
    model: crate::ModelArgs,
    /// The prompt for every image, e.g. "caption en".
    #[arg(long)]
    prompt: String,
    /// Images, or folders whose image files are all taken (sorted by name).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// The JSON-lines file results are appended to.
    #[arg(long)]
    out: PathBuf,
    /// Images decoding together at most.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// 0 = greedy (default); above 0 samples, seeded by --seed.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// The image files named, folders expanded.
fn image_files(args: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for a in args {
        if a.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(a)
                .with_context(|| format!("reading {}", a.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|x| {
                        IMAGE_EXTENSIONS.contains(&x.to_string_lossy().to_lowercase().as_str())
                    })
                })
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}

/// The images already answered in `out` (lines that do not parse, such as one cut short by an
/// interruption, are ignored).
fn already_done(out: &Path) -> anyhow::Result<HashSet<String>> {
    let file = match std::fs::File::open(out) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
    };
    Ok(BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter_map(|v| v["image"].as_str().map(str::to_string))
        .collect())
}

struct Running {
    path: String,
    size: (u32, u32),
    seq: Sequence,
}

pub fn batch(args: &BatchArgs) -> anyhow::Result<()> {
    if args.batch_size == 0 || args.max_new_tokens == 0 {
        bail!("--batch-size and --max-new-tokens must be at least 1");
    }
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!("--temperature must be a finite number >= 0");
    }
    let images = image_files(&args.images)?;
    let done = already_done(&args.out)?;
    let todo: Vec<PathBuf> = images
        .into_iter()
        .filter(|p| !done.contains(&p.display().to_string()))
        .collect();
    let skipped = done.len();
    let m = &args.model;
    let model = load_model(&m.model, m.precision, m.adapter.as_deref())?;
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .with_context(|| format!("opening {}", args.out.display()))?;
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingOptions {
            temperature: args.temperature,
            seed: args.seed,
            ..Default::default()
        },
        ..Default::default()
    };
    let bar = indicatif::ProgressBar::new(todo.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{wide_bar} {pos}/{len} images, {per_sec}, ETA {eta} {msg}",
        )
        .expect("a valid template"),
    );
    let mut queue = todo.into_iter();
    let mut running: Vec<Running> = Vec::new();
    let (mut answered, mut failed) = (0usize, 0usize);
    let mut decode = model.decode_batch()?;
    let t0 = std::time::Instant::now();
    let mut tokens = 0usize;
    loop {
        while running.len() < args.batch_size {
            let Some(path) = queue.next() else { break };
            match start(&model, &path, &args.prompt, &opts) {
                Ok(r) => running.push(r),
                Err(e) => {
                    failed += 1;
                    bar.suspend(|| eprintln!("skipped {}: {e:#}", path.display()));
                    bar.inc(1);
                }
            }
        }
        if running.is_empty() {
            break;
        }
        let mut seqs: Vec<&mut Sequence> = running.iter_mut().map(|r| &mut r.seq).collect();
        let live = seqs.iter().filter(|s| s.finished().is_none()).count();
        if live > 0 {
            model.advance(&mut decode, &mut seqs)?;
            tokens += live;
        }
        let (finished, still): (Vec<_>, Vec<_>) = running
            .into_iter()
            .partition(|r| r.seq.finished().is_some());
        running = still;
        for r in finished {
            writeln!(out, "{}", result_line(&r, &args.prompt))
                .and_then(|()| out.flush())
                .with_context(|| format!("writing {}", args.out.display()))?;
            answered += 1;
            bar.inc(1);
        }
        let secs = t0.elapsed().as_secs_f64();
        bar.set_message(format!("{:.0} tokens/s", tokens as f64 / secs));
    }
    bar.finish_and_clear();
    eprintln!(
        "{answered} answered, {failed} skipped as unreadable, {skipped} already in {} ({:.1} s)",
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn start(
    model: &PaliGemma,
    path: &Path,
    prompt: &str,
    opts: &GenerateOptions,
) -> anyhow::Result<Running> {
    let image = paligemma::preprocess::load_image(path)?;
    let (seq, _first) = model.start(&image, prompt, opts)?;
    Ok(Running {
        path: path.display().to_string(),
        size: (image.width(), image.height()),
        seq,
    })
}

fn result_line(r: &Running, prompt: &str) -> serde_json::Value {
    let mut line = serde_json::json!({
        "image": r.path,
        "prompt": prompt,
        "text": r.seq.text(),
        "generated_ids": r.seq.generated_ids(),
        "finish_reason": r.seq.finished(),
    });
    if answers_with_boxes(prompt) {
        let answer = parse_answer(r.seq.text(), r.size.0, r.size.1);
        line["detections"] = serde_json::json!(answer.detections);
    }
    line
}
