//! `paligemma`: caption, answer, detect: one image and one prompt through PaliGemma on the GPU.
//!
//! `--model` takes a folder or a hub id (`google/paligemma2-3b-pt-224`); flags mean the same in
//! every subcommand (`--out` is what a subcommand writes).
//!
//! paligemma --model DIR --image FILE --prompt TEXT [--max-new-tokens N] [--temperature T]
//!           [--top-p P] [--top-k K] [--seed S] [--precision f32|f16|q8|q4] [--json]
//!           [--dump-logits FILE]
//!           [--seg-decoder vae-oid.npz] [--draw OUT.png]
//! paligemma serve --model DIR [--host 127.0.0.1] [--port 8080] [--max-batch N]
//!           [--max-new-tokens N] [--seg-decoder vae-oid.npz]
//! paligemma batch --model DIR --prompt TEXT IMAGES... --out results.jsonl [--max-batch N]
//!           [sampling flags as above] [--seg-decoder vae-oid.npz]
//! paligemma quantize --model DIR --precision q8|q4 --out DIR2
//! paligemma draw --image FILE --answer TEXT [--seg-decoder vae-oid.npz] --out OUT.png
//! paligemma --list-adapters
//!
//! Logging goes through `RUST_LOG` (e.g. `RUST_LOG=info`).

mod batch;
mod draw;
mod selftest;
mod serve;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use paligemma::sampling::SamplingOptions;
use paligemma::segmentation::SegDecoder;
use paligemma::{
    GenerateOptions, GpuOptions, ImageInput, LoadOptions, PaliGemma, Precision, Prompt,
};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PrecisionArg {
    F32,
    F16,
    Q8,
    Q4,
}

/// What `quantize` writes.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum QuantizedArg {
    Q8,
    Q4,
}

impl QuantizedArg {
    fn precision(self) -> Precision {
        match self {
            QuantizedArg::Q8 => Precision::Q8,
            QuantizedArg::Q4 => Precision::Q4,
        }
    }
}

impl PrecisionArg {
    fn precision(self) -> Precision {
        match self {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::F16 => Precision::F16,
            PrecisionArg::Q8 => Precision::Q8,
            PrecisionArg::Q4 => Precision::Q4,
        }
    }
}

/// Run PaliGemma (SigLIP + Gemma) on an image and a prompt, on any GPU through wgpu.
#[derive(Parser, Debug)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    // `--temperature -1` must reach the range check, not read as an unknown flag.
    allow_negative_numbers = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Args,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// An OpenAI-compatible HTTP server (`POST /v1/chat/completions` with images, streaming;
    /// `GET /v1/models`, `GET /health`), decoding concurrent requests in one batch.
    #[command(allow_negative_numbers = true)]
    Serve(serve::ServeArgs),
    /// Run one prompt over many images, batched, one JSON line per image (resumable).
    #[command(allow_negative_numbers = true)]
    Batch(batch::BatchArgs),
    /// Write a copy of a checkpoint with the decoder quantized (q8 or q4): smaller to ship and
    /// to load, with the same outputs as quantizing while loading.
    Quantize {
        /// The checkpoint to read: a folder or a hub id.
        #[arg(long)]
        model: PathBuf,
        /// 8- or 4-bit blocks.
        #[arg(long, value_enum)]
        precision: QuantizedArg,
        /// The folder to write (model.safetensors, config and tokenizer).
        #[arg(long)]
        out: PathBuf,
        /// Replace what `--out` already holds.
        #[arg(long)]
        force: bool,
    },
    /// Check this library on an adapter: every kernel against its CPU reference, the shipped
    /// tiny model against transformers, the driver, limits and features, and the GEMV
    /// bandwidth and matmul FLOP/s measured there (`--json` for a bug report).
    Selftest(selftest::SelftestArgs),
    /// Draw an answer (boxes, labels, masks) on an image without running the model, e.g. a
    /// saved `detect` or `segment` answer.
    Draw {
        /// The image to draw on.
        #[arg(long)]
        image: PathBuf,
        /// The answer text, with its `<loc>` and `<seg>` tokens.
        #[arg(long)]
        answer: String,
        /// big_vision's mask decoder (`vae-oid.npz`), for `<seg>` codes.
        #[arg(long)]
        seg_decoder: Option<PathBuf>,
        /// The PNG to write (`--draw` also names it, as on a run).
        #[arg(long, visible_alias = "draw")]
        out: PathBuf,
        /// Also print the objects as one JSON line (boxes, masks as run lengths).
        #[arg(long)]
        json: bool,
    },
}

/// Which model, how to load it, on which adapter.
#[derive(clap::Args, Debug)]
struct ModelArgs {
    /// A PaliGemma folder as published on the hub (config.json, safetensors, tokenizer.json),
    /// or its hub id (`google/paligemma2-3b-pt-224[@revision]`), from the Hugging Face cache or
    /// downloaded into it.
    #[arg(long)]
    model: PathBuf,
    /// Weights in f32 (for verification), 16 bits (the default), or the decoder in 8- or
    /// 4-bit blocks.
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
    /// Substring of the adapter name to use (also WGPU_ADAPTER_NAME); WGPU_BACKEND picks the API.
    #[arg(long)]
    adapter: Option<String>,
}

/// The folder `--model` names: a folder, or a hub id found in the Hugging Face cache or
/// downloaded into it.
fn model_folder(model: &Path) -> anyhow::Result<PathBuf> {
    use std::io::IsTerminal;
    paligemma::hub::resolve(model, std::io::stderr().is_terminal()).context("--model")
}

/// `--seg-decoder`'s decoder on the model's device, if one was named.
fn seg_decoder(model: &PaliGemma, path: Option<&Path>) -> anyhow::Result<Option<SegDecoder>> {
    Ok(path.map(|p| SegDecoder::load(model.gpu(), p)).transpose()?)
}

/// How `--precision` and `--adapter` load a model (no progress bar).
fn load_options(precision: Option<PrecisionArg>, adapter: Option<&str>) -> LoadOptions {
    LoadOptions {
        precision: precision.map(PrecisionArg::precision),
        gpu: GpuOptions {
            adapter_name: adapter.map(str::to_string),
            ..Default::default()
        },
        progress: None,
    }
}

/// Loads a model with a progress bar on stderr (hidden when stderr is not a terminal).
fn load_model(
    model: &Path,
    precision: Option<PrecisionArg>,
    adapter: Option<&str>,
) -> anyhow::Result<PaliGemma> {
    let dir = &model_folder(model)?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "loading {msg} {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec})",
        )
        .expect("a valid template"),
    );
    bar.set_message(dir.display().to_string());
    let b = bar.clone();
    let opts = LoadOptions {
        progress: Some(paligemma::LoadProgress(std::sync::Arc::new(
            move |done, total| {
                b.set_length(total);
                b.set_position(done);
            },
        ))),
        ..load_options(precision, adapter)
    };
    let model = PaliGemma::load(dir, &opts).with_context(|| format!("loading {}", dir.display()));
    bar.finish_and_clear();
    model
}

/// How tokens are chosen, for `paligemma` and `paligemma batch` alike.
#[derive(clap::Args, Debug)]
struct SamplingArgs {
    /// Tokens generated at most (fewer when the model emits `<eos>`).
    #[arg(long, default_value_t = 32)]
    max_new_tokens: i64,
    /// 0 = greedy (default); above 0 samples from softmax(logits / T).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling: keep the most probable tokens up to this mass (and any tied with the
    /// last of them).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep this many most probable tokens, and any tied with the last (0 = no limit).
    #[arg(long, default_value_t = 0)]
    top_k: i64,
    /// Seed of the sampling, for reproducible runs: a token is the seed's draw for its
    /// position (each image of a batch samples with it).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    /// The generation options, checked by the library's one check; errors name the flag.
    fn options(&self) -> anyhow::Result<GenerateOptions> {
        let sampling = SamplingOptions {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: at_least("--top-k", self.top_k, 0)?,
            seed: self.seed,
        };
        if let Err(e) = sampling.check() {
            bail!("--{} {}", e.option.replace('_', "-"), e.message);
        }
        Ok(GenerateOptions {
            max_new_tokens: at_least("--max-new-tokens", self.max_new_tokens, 1)?,
            sampling,
            ..GenerateOptions::default()
        })
    }
}

#[derive(clap::Args, Debug)]
struct Args {
    /// List the GPU adapters wgpu finds (name, backend, type) and exit.
    #[arg(long, exclusive = true)]
    list_adapters: bool,
    /// A PaliGemma folder as published on the hub (config.json, safetensors, tokenizer.json),
    /// or its hub id (`google/paligemma2-3b-pt-224[@revision]`), from the Hugging Face cache or
    /// downloaded into it.
    #[arg(long, required = true)]
    model: Option<PathBuf>,
    /// The image (any format the `image` crate reads). Gemma 3 takes it repeated (the images go
    /// before the prompt, in order) or not at all (a text-only prompt); PaliGemma takes one.
    #[arg(long)]
    image: Vec<PathBuf>,
    /// The task prompt, e.g. "caption en", "detect cat", "answer en what is this?".
    #[arg(long, required = true)]
    prompt: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Weights in f32 (for verification), 16 bits (the default: bf16 checkpoints as they are,
    /// others as f16), or the decoder in 8- or 4-bit blocks; activations and reductions are f32
    /// either way.
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
    /// Print one JSON object (ids, text, timings) as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Write the logits each token was chosen from to a safetensors file (`step_logits`).
    #[arg(long)]
    dump_logits: Option<PathBuf>,
    /// Substring of the adapter name to use (also WGPU_ADAPTER_NAME); WGPU_BACKEND picks the API.
    #[arg(long)]
    adapter: Option<String>,
    /// big_vision's segmentation-mask decoder (`vae-oid.npz`): `segment` answers get masks.
    #[arg(long)]
    seg_decoder: Option<PathBuf>,
    /// Write the image with the answer's boxes, labels and masks drawn on it (PNG).
    #[arg(long)]
    draw: Option<PathBuf>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,wgpu_hal::gles=off"),
    )
    .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Quantize {
            model,
            precision,
            out,
            force,
        }) => quantize(model, precision.precision(), out, *force),
        Some(Command::Draw {
            image,
            answer,
            seg_decoder,
            out,
            json,
        }) => draw::draw_answer(image, answer, seg_decoder.as_deref(), out, *json),
        Some(Command::Serve(args)) => serve::serve(args),
        Some(Command::Batch(args)) => batch::batch(args),
        Some(Command::Selftest(args)) => selftest::selftest(args),
        None if cli.run.list_adapters => list_adapters(),
        None => run(&cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn list_adapters() -> anyhow::Result<()> {
    let adapters = paligemma::Gpu::adapters();
    if adapters.is_empty() {
        bail!(
            "no GPU adapter found (on Linux without a GPU, `apt-get install mesa-vulkan-drivers` \
             gives lavapipe)"
        );
    }
    for a in adapters {
        println!(
            "{} ({:?}, {:?}, driver {})",
            a.name, a.backend, a.device_type, a.driver_info
        );
    }
    Ok(())
}

fn quantize(model: &Path, precision: Precision, out: &Path, force: bool) -> anyhow::Result<()> {
    let model = &model_folder(model)?;
    let occupied = out.is_file() || out.read_dir().is_ok_and(|mut d| d.next().is_some());
    if occupied && !force {
        bail!(
            "--out {}: already exists; pass --force to replace it",
            out.display()
        );
    }
    let r = paligemma::quantize_checkpoint(model, out, precision)?;
    println!(
        "{}: {} matrices quantized ({precision:?}), {} tensors copied; {:.1} MB -> {:.1} MB",
        out.display(),
        r.quantized,
        r.copied,
        r.bytes_in as f64 / 1e6,
        r.bytes_out as f64 / 1e6
    );
    Ok(())
}

/// A count option's value, checked: clap takes any integer, so that a negative one gets this
/// message rather than clap's "unexpected argument".
fn at_least(flag: &str, value: i64, min: i64) -> anyhow::Result<usize> {
    match usize::try_from(value) {
        Ok(n) if value >= min => Ok(n),
        _ => bail!("{flag} must be at least {min}, got {value}"),
    }
}

/// An error as one line, each cause once: the library's errors print their cause
/// (`photo.jpg: No such file or directory`) and also expose it as their source, so `{:#}`
/// alone would print it twice.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

/// PaliGemma answers about one image; Gemma 3 about any number (none: a text-only prompt).
/// `--draw` draws on one. Read from the folder's config.json, before the weights load.
fn check_image_count(model_dir: &Path, images: usize, draw: bool) -> anyhow::Result<()> {
    let config = paligemma::config::PaliGemmaConfig::from_file(&model_dir.join("config.json"))?;
    if config.image_tokens.is_none() && images != 1 {
        bail!("--image: PaliGemma answers about one image, got {images}");
    }
    if draw && images != 1 {
        bail!("--draw draws on one image, got {images}");
    }
    Ok(())
}

fn run(args: &Args) -> anyhow::Result<()> {
    let (Some(model_dir), Some(prompt)) = (&args.model, &args.prompt) else {
        bail!("--model and --prompt are required");
    };
    let gen_opts = GenerateOptions {
        keep_logits: args.dump_logits.is_some(),
        ..args.sampling.options()?
    };
    for (flag, path) in [("--draw", &args.draw), ("--dump-logits", &args.dump_logits)] {
        if let Some(path) = path {
            draw::check_writable(flag, path)?;
        }
    }
    let model_dir = &model_folder(model_dir)?;
    let images = args
        .image
        .iter()
        .map(|p| paligemma::preprocess::load_image(p));
    let images = images.collect::<Result<Vec<_>, _>>()?;
    check_image_count(model_dir, images.len(), args.draw.is_some())?;
    let model = load_model(model_dir, args.precision, args.adapter.as_deref())?;
    // Loaded before generating, so a bad file fails fast.
    let decoder = seg_decoder(&model, args.seg_decoder.as_deref())?;
    let mut stdout = std::io::stdout();
    let inputs = images.iter().map(ImageInput::from).collect();
    let out = model.block_on(model.generate_with(
        inputs,
        Prompt::Text(prompt.clone()),
        &gen_opts,
        |_, piece| {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
            true
        },
    ))?;
    println!();
    let (answer, masks) = match &images[..] {
        [image] => draw::objects(&out.text, image, decoder.as_ref())?,
        _ => Default::default(),
    };
    if let (Some(path), [image]) = (&args.draw, &images[..]) {
        draw::save_drawing(image, &answer, &masks, path)?;
    }
    if let Some(path) = &args.dump_logits {
        let logits = out.step_logits.as_deref().unwrap_or_default();
        let vocab = model.config().text.vocab_size;
        let bytes: &[u8] = bytemuck::cast_slice(logits);
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            vec![out.generated_ids.len(), vocab],
            bytes,
        )
        .context("building step_logits")?;
        // Through memory, not `serialize_to_file`, whose temporary file leaves mode 0600.
        let file = safetensors::serialize([("step_logits", view)], None)
            .context("serializing step_logits")?;
        std::fs::write(path, file).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        let json = serde_json::json!({
            "prompt": prompt,
            "prompt_ids": out.prompt_ids,
            "generated_ids": out.generated_ids,
            "text": out.text,
            "detections": paligemma::segmentation::objects_json(&answer.detections, &masks),
            "skipped_groups": answer.skipped,
            "timings": out.timings,
            "adapter": model.gpu().adapter_name(),
            "precision": format!("{:?}", model.precision()).to_lowercase(),
        });
        println!("{json}");
    }
    Ok(())
}
