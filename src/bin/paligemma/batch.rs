//! `paligemma batch`: one prompt over many images, decoded together by the library's
//! [`Scheduler`] (continuous batching: an image starts as soon as another finishes), one JSON
//! line per image appended to `--out` as it finishes. Images already answered in `--out` with
//! the same prompt and options are skipped (an image is known by its canonical path, whatever
//! path names it), so an interrupted run resumes; an image that cannot be read is reported and
//! skipped, and a run that could read none fails.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use paligemma::detection::{answers_with_boxes, parse_answer};
use paligemma::segmentation::{SegDecoder, masks, objects_json};
use paligemma::{
    Event, GenerateOptions, Generation, PaliGemma, Precision, Request, RequestId, Scheduler,
    SchedulerOptions,
};
use serde_json::{Value, json};

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
    #[arg(long, visible_alias = "batch-size", default_value_t = 16)]
    max_batch: usize,
    #[command(flatten)]
    sampling: crate::SamplingArgs,
    /// big_vision's segmentation-mask decoder (`vae-oid.npz`): `segment` answers get masks.
    #[arg(long)]
    seg_decoder: Option<PathBuf>,
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
    // One name per file, whatever path reached it: the key of a finished answer in `--out`.
    Ok(out
        .into_iter()
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .collect())
}

/// What, besides the image, an answer depends on: the prompt and these (sampling settings
/// matter only when sampling). Lines of `--out` are matched on all of them.
fn answer_key(prompt: &str, opts: &GenerateOptions, precision: Precision) -> Value {
    let s = &opts.sampling;
    // Through the f32's shortest decimal, so 0.7 is written 0.7.
    let decimal = |x: f32| x.to_string().parse::<f64>().unwrap_or(f64::NAN);
    let sampling = match s.is_greedy() {
        true => json!("greedy"),
        false => json!({"temperature": decimal(s.temperature), "top_p": decimal(s.top_p),
                        "top_k": s.top_k, "seed": s.seed}),
    };
    let precision = format!("{precision:?}").to_lowercase();
    json!({"prompt": prompt, "options": {"max_new_tokens": opts.max_new_tokens,
           "sampling": sampling, "precision": precision}})
}

/// The images `out` already answers under `key`, and the other keys it holds answers under
/// (lines that do not parse, such as one cut short by an interruption, are ignored).
fn already_done(out: &Path, key: &Value) -> anyhow::Result<(HashSet<PathBuf>, BTreeSet<String>)> {
    let (mut done, mut others) = (HashSet::new(), BTreeSet::new());
    let file = match std::fs::File::open(out) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((done, others)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
    };
    let lines = BufReader::new(file).lines().map_while(Result::ok);
    for line in lines.filter_map(|l| serde_json::from_str::<Value>(&l).ok()) {
        let Some(image) = line["image"].as_str() else {
            continue;
        };
        let line_key = json!({"prompt": line["prompt"], "options": line["options"]});
        if &line_key == key {
            // Written canonical; an older file's relative path is taken from here.
            done.insert(std::fs::canonicalize(image).unwrap_or_else(|_| image.into()));
        } else {
            others.insert(format!("{} {}", line["prompt"], line["options"]));
        }
    }
    Ok((done, others))
}

/// An image whose request is in the scheduler.
struct Pending {
    file: PathBuf,
    path: String,
    size: (u32, u32),
}

/// Where answers go, and the counts so far.
struct Output {
    decoder: Option<SegDecoder>,
    file: std::fs::File,
    path: PathBuf,
    /// The prompt and options, written with each answer.
    key: Value,
    bar: indicatif::ProgressBar,
    pending: HashMap<RequestId, Pending>,
    answered: usize,
    failed: usize,
    tokens: usize,
}

impl Output {
    fn skip(&mut self, what: &str, why: &dyn std::fmt::Display) {
        self.failed += 1;
        let why = why.to_string();
        // The library's errors name the file already.
        let line = match why.starts_with(what) {
            true => format!("skipped {why}"),
            false => format!("skipped {what}: {why}"),
        };
        self.bar.suspend(|| eprintln!("{line}"));
        self.bar.inc(1);
    }

    /// Counts a token, writes a finished answer's line, reports a failed one.
    fn record(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::Token { .. } => self.tokens += 1,
            Event::Done { id, generation } => {
                let p = self.pending.remove(&id).expect("a submitted image");
                let line = result_line(&p, &self.key, &generation, self.decoder.as_ref())?;
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
    if args.max_batch == 0 {
        bail!("--max-batch must be at least 1");
    }
    let opts = args.sampling.options()?;
    let images = images(args)?;
    let m = &args.model;
    let model = load_model(&m.model, m.precision, m.adapter.as_deref())?;
    let key = answer_key(&args.prompt, &opts, model.precision());
    let (todo, already) = to_do(images, &args.out, &key)?;
    let decoder = crate::seg_decoder(&model, args.seg_decoder.as_deref())?;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .with_context(|| format!("opening {}", args.out.display()))?;
    let bar = indicatif::ProgressBar::new(todo.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{wide_bar} {pos}/{len} images, ETA {eta}, {msg}")
            .expect("a valid template"),
    );
    let mut out = Output {
        decoder,
        file,
        path: args.out.clone(),
        key,
        bar,
        pending: HashMap::new(),
        answered: 0,
        failed: 0,
        tokens: 0,
    };
    let t0 = std::time::Instant::now();
    let (mut queue, mut model) = (VecDeque::from(todo), model);
    let mut lose_at_step = test_device_loss();
    let job = (args.prompt.as_str(), &opts);
    while let Some(lost) = run(
        &model,
        &mut queue,
        job,
        args.max_batch,
        &mut out,
        lose_at_step.take(),
    )? {
        // A driver reset or a GPU gone: a new device, the same model, the rest of the images.
        out.bar
            .suspend(|| eprintln!("{lost}: reloading the model on a new device, then going on"));
        model = load_model(&m.model, m.precision, m.adapter.as_deref())?;
        out.decoder = crate::seg_decoder(&model, args.seg_decoder.as_deref())?;
    }
    out.bar.finish_and_clear();
    eprintln!(
        "{} answered, {} skipped as unreadable, {} already in {} ({:.1} s)",
        out.answered,
        out.failed,
        already,
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    if out.answered == 0 && already == 0 && out.failed > 0 {
        bail!("none of the {} images could be read", out.failed);
    }
    Ok(())
}

/// `PALIGEMMA_TEST_LOSE_DEVICE_AT_STEP=N`: destroy the device before step N of the first model,
/// as a driver reset would lose it (a test hook: the command's tests check the resume).
fn test_device_loss() -> Option<usize> {
    std::env::var("PALIGEMMA_TEST_LOSE_DEVICE_AT_STEP")
        .ok()?
        .parse()
        .ok()
}

/// The image files named (folders expanded), at least one.
fn images(args: &BatchArgs) -> anyhow::Result<Vec<PathBuf>> {
    let images = image_files(&args.images)?;
    if images.is_empty() {
        let folders: Vec<_> = args
            .images
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        bail!(
            "no image files in {} (looked for {})",
            folders.join(", "),
            IMAGE_EXTENSIONS.join(", ")
        );
    }
    Ok(images)
}

/// The images to answer (those `out` answers under `key` left out), and how many were left
/// out.
fn to_do(images: Vec<PathBuf>, out: &Path, key: &Value) -> anyhow::Result<(Vec<PathBuf>, usize)> {
    let (done, others) = already_done(out, key)?;
    if !others.is_empty() {
        eprintln!(
            "note: {} also holds answers to other prompts or options ({}); they are kept, and \
             these answers are added",
            out.display(),
            others.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let images_count = images.len();
    let todo: Vec<PathBuf> = images.into_iter().filter(|p| !done.contains(p)).collect();
    // Images skipped as answered (not lines in the file, which may hold others).
    let already = images_count - todo.len();
    Ok((todo, already))
}

/// Every image starts as soon as there is room: `batch_size` decoding together.
/// Every image starts as soon as there is room: `max_batch` decoding together. Returns why
/// the device was lost, if it was: the images in flight are back at the front of `queue`.
fn run(
    model: &PaliGemma,
    queue: &mut VecDeque<PathBuf>,
    (prompt, opts): (&str, &GenerateOptions),
    max_batch: usize,
    out: &mut Output,
    lose_at_step: Option<usize>,
) -> anyhow::Result<Option<String>> {
    let mut scheduler = Scheduler::new(SchedulerOptions {
        max_batch,
        max_waiting: max_batch,
        starts_per_step: max_batch,
    });
    let mut rate = Rate::default();
    for step in 0.. {
        while scheduler.has_room() {
            let Some(path) = queue.pop_front() else { break };
            match submit(&mut scheduler, &path, prompt, opts) {
                Ok((id, p)) => {
                    out.pending.insert(id, p);
                }
                Err(e) => out.skip(&path.display().to_string(), &crate::one_line(&e)),
            }
        }
        if scheduler.is_idle() {
            break;
        }
        if lose_at_step == Some(step) {
            model.gpu().device().destroy();
        }
        let events = model.block_on(scheduler.step(model));
        if let Err(lost) = model.gpu().check_lost() {
            let in_flight = out.pending.len();
            queue.extend(out.pending.drain().map(|(_, p)| p.file));
            queue.rotate_right(in_flight);
            return Ok(Some(lost.to_string()));
        }
        for event in events? {
            out.record(event)?;
        }
        out.bar.set_message(rate.update(out.answered, out.tokens));
    }
    Ok(None)
}

/// Images and tokens per second over the last 10 seconds: right on short runs, and following
/// changes on long ones.
#[derive(Default)]
struct Rate(VecDeque<(std::time::Instant, usize, usize)>);

impl Rate {
    fn update(&mut self, answered: usize, tokens: usize) -> String {
        let now = std::time::Instant::now();
        self.0.push_back((now, answered, tokens));
        while self.0.len() > 2 && now - self.0[0].0 > std::time::Duration::from_secs(10) {
            self.0.pop_front();
        }
        let (then, a, t) = self.0[0];
        let secs = (now - then).as_secs_f64().max(1e-3);
        let (images, tokens) = ((answered - a) as f64 / secs, (tokens - t) as f64 / secs);
        format!("{images:.1} images/s, {tokens:.0} tokens/s")
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
        images: vec![image.into()],
        prompt: prompt.into(),
        opts: opts.clone(),
    })?;
    let (file, path) = (path.to_path_buf(), path.display().to_string());
    Ok((id, Pending { file, path, size }))
}

/// An answer's line: the image, the prompt and options it was asked with (`key`), the answer
/// and, for `detect` and `segment`, its objects.
fn result_line(
    p: &Pending,
    key: &Value,
    g: &Generation,
    decoder: Option<&SegDecoder>,
) -> anyhow::Result<Value> {
    let prompt = key["prompt"].as_str().unwrap_or_default();
    let mut line = json!({
        "image": p.path,
        "prompt": prompt,
        "options": key["options"],
        "text": g.text,
        "generated_ids": g.generated_ids,
        "finish_reason": g.finish_reason,
    });
    if answers_with_boxes(prompt) {
        let answer = parse_answer(&g.text, p.size.0, p.size.1);
        let masks = masks(&answer.detections, decoder)?;
        line["detections"] = objects_json(&answer.detections, &masks);
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `segment` answer's line has masks with `--seg-decoder`, and `null` ones without.
    #[test]
    fn segment_lines_carry_masks_only_with_a_decoder() {
        let gpu = paligemma::Gpu::new(&Default::default()).expect("a GPU adapter");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let decoder = SegDecoder::load(&gpu, &root.join("tests/fixtures/seg/vae.npz")).unwrap();
        let segs: String = (0..16).map(|i| format!("<seg{:03}>", i * 7)).collect();
        let generation = Generation {
            prompt_ids: vec![2],
            generated_ids: vec![7, 8],
            text: format!("<loc0192><loc0597><loc0704><loc0896>{segs} box"),
            step_logits: None,
            logprobs: None,
            finish_reason: paligemma::FinishReason::Stop,
            timings: Default::default(),
        };
        let image = Pending {
            file: "cat.png".into(),
            path: "cat.png".into(),
            size: (640, 480),
        };
        for decoder in [None, Some(&decoder)] {
            let key = answer_key("segment box", &Default::default(), Precision::F16);
            let line = result_line(&image, &key, &generation, decoder).unwrap();
            let mask = &line["detections"][0]["mask"];
            assert_eq!(mask.is_null(), decoder.is_none(), "{line}");
        }
        let key = answer_key("caption en", &Default::default(), Precision::F16);
        let caption = result_line(&image, &key, &generation, Some(&decoder)).unwrap();
        assert!(caption.get("detections").is_none(), "{caption}");
    }
}
