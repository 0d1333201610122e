//! `paligemma batch`: one prompt over many images, decoded together by the library's
//! [`Scheduler`] (continuous batching: an image starts as soon as another finishes), one JSON line per image appended to `--out` as it
//! finishes. Images already in `--out` are skipped, so an interrupted run resumes; an image
//! that cannot be read is reported and skipped.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use paligemma::detection::{answers_with_boxes, parse_answer};
use paligemma::sampling::SamplingOptions;
use paligemma::{
    Event, GenerateOptions, Generation, PaliGemma, Request, RequestId, Scheduler, SchedulerOptions,
};

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

/// An image whose request is in the scheduler.
struct Pending {
    path: String,
    size: (u32, u32),
}

/// Where answers go, and the counts so far.
struct Output {
    file: std::fs::File,
    path: PathBuf,
    prompt: String,
    bar: indicatif::ProgressBar,
    pending: HashMap<RequestId, Pending>,
    answered: usize,
    failed: usize,
    tokens: usize,
}

impl Output {
    fn skip(&mut self, what: &str, why: &dyn std::fmt::Display) {
        self.failed += 1;
        self.bar.suspend(|| eprintln!("skipped {what}: {why}"));
        self.bar.inc(1);
    }

    /// Counts a token, writes a finished answer's line, reports a failed one.
    fn record(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::Token { .. } => self.tokens += 1,
            Event::Done { id, generation } => {
                let p = self.pending.remove(&id).expect("a submitted image");
                let line = result_line(&p, &self.prompt, &generation);
                writeln!(self.file, "{line}")
                    .and_then(|()| self.file.flush())
                    .with_context(|| format!("writing {}", self.path.display()))?;
                self.answered += 1;
                self.bar.inc(1);
            }
            Event::Failed { id, error } => {
                let p = self.pending.remove(&id).expect("a submitted image");
                self.skip(&p.path, &error);
            }
            Event::Cancelled { .. } => {}
        }
        Ok(())
    }
}

pub fn batch(args: &BatchArgs) -> anyhow::Result<()> {
    if args.batch_size == 0 || args.max_new_tokens == 0 {
        bail!("--batch-size and --max-new-tokens must be at least 1");
    }
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: crate::sampling_options(SamplingOptions {
            temperature: args.temperature,
            seed: args.seed,
            ..Default::default()
        })?,
        ..Default::default()
    };
    let images = image_files(&args.images)?;
    let done = already_done(&args.out)?;
    let todo: Vec<PathBuf> = images
        .into_iter()
        .filter(|p| !done.contains(&p.display().to_string()))
        .collect();
    let m = &args.model;
    let model = load_model(&m.model, m.precision, m.adapter.as_deref())?;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .with_context(|| format!("opening {}", args.out.display()))?;
    let bar = indicatif::ProgressBar::new(todo.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{wide_bar} {pos}/{len} images, {per_sec}, ETA {eta} {msg}",
        )
        .expect("a valid template"),
    );
    let mut out = Output {
        file,
        path: args.out.clone(),
        prompt: args.prompt.clone(),
        bar,
        pending: HashMap::new(),
        answered: 0,
        failed: 0,
        tokens: 0,
    };
    let t0 = std::time::Instant::now();
    run(&model, todo, &opts, args.batch_size, &mut out)?;
    out.bar.finish_and_clear();
    eprintln!(
        "{} answered, {} skipped as unreadable, {} already in {} ({:.1} s)",
        out.answered,
        out.failed,
        done.len(),
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every image starts as soon as there is room: `batch_size` decoding together.
fn run(
    model: &PaliGemma,
    todo: Vec<PathBuf>,
    opts: &GenerateOptions,
    batch_size: usize,
    out: &mut Output,
) -> anyhow::Result<()> {
    let mut scheduler = Scheduler::new(SchedulerOptions {
        max_batch: batch_size,
        max_waiting: batch_size,
        starts_per_step: batch_size,
    });
    let mut queue = todo.into_iter();
    let t0 = std::time::Instant::now();
    loop {
        while scheduler.has_room() {
            let Some(path) = queue.next() else { break };
            match submit(&mut scheduler, &path, &out.prompt, opts) {
                Ok((id, p)) => {
                    out.pending.insert(id, p);
                }
                Err(e) => out.skip(&path.display().to_string(), &format!("{e:#}")),
            }
        }
        if scheduler.is_idle() {
            return Ok(());
        }
        for event in model.block_on(scheduler.step(model))? {
            out.record(event)?;
        }
        let secs = t0.elapsed().as_secs_f64();
        let rate = out.tokens as f64 / secs;
        out.bar.set_message(format!("{rate:.0} tokens/s"));
    }
}

/// Reads the image at `path` and queues its request.
fn submit(
    scheduler: &mut Scheduler,
    path: &Path,
    prompt: &str,
    opts: &GenerateOptions,
) -> anyhow::Result<(RequestId, Pending)> {
    let image = paligemma::preprocess::load_image(path)?;
    let size = (image.width(), image.height());
    let id = scheduler.submit(Request {
        image: image.into(),
        prompt: prompt.into(),
        opts: opts.clone(),
    })?;
    let path = path.display().to_string();
    Ok((id, Pending { path, size }))
}

fn result_line(p: &Pending, prompt: &str, g: &Generation) -> serde_json::Value {
    let mut line = serde_json::json!({
        "image": p.path,
        "prompt": prompt,
        "text": g.text,
        "generated_ids": g.generated_ids,
        "finish_reason": g.finish_reason,
    });
    if answers_with_boxes(prompt) {
        let answer = parse_answer(&g.text, p.size.0, p.size.1);
        line["detections"] = serde_json::json!(answer.detections);
    }
    line
}
