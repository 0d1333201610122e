//! The whole model: load a checkpoint folder, encode an image, run the prompt, generate text.
//! Mirrors transformers' `PaliGemmaForConditionalGeneration` + `PaliGemmaProcessor`.

use std::path::Path;

use web_time::Instant;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuOptions};
use crate::model::checkpoint::{Checkpoint, ShardBytes};
use crate::model::config::PaliGemmaConfig;
use crate::model::gemma::TextModel;
use crate::model::session::{DecodeBatch, Session};
use crate::model::siglip::VisionTower;
use crate::model::{Loader, Precision, WeightSource};
use crate::ops::linear::Linear;
use crate::ops::{View, WeightFormat};
use crate::sampling::SamplingOptions;
use crate::sequence::{Sequence, Token};
use crate::tokenizer::PromptTokenizer;

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `None`: 16-bit weights (half the memory and bandwidth of f32; the shaders widen them from
    /// u32 words, so no device feature is needed), or the precision a checkpoint written by
    /// `paligemma quantize` was quantized in.
    pub precision: Option<Precision>,
    /// Which adapter to use when the library creates the device.
    pub gpu: GpuOptions,
    /// Told how far loading has come, after each tensor.
    pub progress: Option<LoadProgress>,
}

/// A loading-progress callback: (bytes of the checkpoint read, bytes in all).
#[derive(Clone)]
pub struct LoadProgress(pub std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>);

impl std::fmt::Debug for LoadProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoadProgress")
    }
}

/// A model's files as bytes, for [`PaliGemma::load_files`].
pub struct ModelFiles {
    /// `config.json`'s text.
    pub config: String,
    /// `tokenizer.json`'s bytes.
    pub tokenizer: Vec<u8>,
    /// The safetensors files, each with a name for errors (its file name or URL).
    pub shards: Vec<(std::path::PathBuf, ShardBytes)>,
}

/// Options of [`PaliGemma::generate`].
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
    /// Stop when the model emits `<eos>` (on by default).
    pub stop_at_eos: bool,
    /// Keep the logits each token was chosen from (for `--dump-logits` and parity checks).
    pub keep_logits: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            sampling: SamplingOptions::default(),
            stop_at_eos: true,
            keep_logits: false,
        }
    }
}

/// Wall-clock phases of one generation, in milliseconds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub prefill_ms: f64,
    /// From the call to the first token: preprocessing, vision and prefill.
    pub time_to_first_token_ms: f64,
    pub decode_ms: f64,
    /// Tokens after the first, per second of decoding.
    pub decode_tokens_per_s: f64,
}

/// What [`PaliGemma::generate`] returns.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The full prompt, image placeholders included.
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    /// The generated text, special tokens (`<eos>`) removed.
    pub text: String,
    /// [generated_ids.len(), vocab] when `keep_logits` was set.
    pub step_logits: Option<Vec<f32>>,
    pub timings: Timings,
}

/// An image encoded and projected: the rows that replace the `<image>` tokens, on the GPU.
pub struct ImageFeatures {
    /// [n, text hidden] f32.
    pub buffer: wgpu::Buffer,
    pub n: usize,
}

/// A loaded PaliGemma. `Send + Sync`: load it on one thread, use it from others (each call
/// records and submits its own command buffers on the shared queue).
pub struct PaliGemma {
    gpu: Gpu,
    /// GPU bytes of the weights (everything allocated while loading).
    weight_bytes: u64,
    config: PaliGemmaConfig,
    precision: Precision,
    vision: VisionTower,
    /// `multi_modal_projector.linear`: [text hidden, vision hidden] + [text hidden].
    projector: Linear,
    text: TextModel,
    tokenizer: Option<PromptTokenizer>,
}

impl PaliGemma {
    /// Loads `dir` (config.json, safetensors, tokenizer.json) on a device the library picks.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<PaliGemma> {
        let gpu = Gpu::new(&opts.gpu)?;
        Self::load_on_with(gpu, dir, opts)
    }

    /// Loads `dir` on `gpu` (which may wrap the caller's own device).
    pub fn load_on(gpu: Gpu, dir: &Path, precision: Option<Precision>) -> Result<PaliGemma> {
        let opts = LoadOptions {
            precision,
            ..Default::default()
        };
        Self::load_on_with(gpu, dir, &opts)
    }

    /// [`load_on`](Self::load_on) with every option (`opts.gpu` is not used: the device is
    /// given).
    pub fn load_on_with(gpu: Gpu, dir: &Path, opts: &LoadOptions) -> Result<PaliGemma> {
        let config = PaliGemmaConfig::from_file(&dir.join("config.json"))?;
        let tokenizer = PromptTokenizer::from_file(&dir.join("tokenizer.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        Self::load_checkpoint(gpu, config, tokenizer, ckpt, dir, opts)
    }

    /// Loads a model from its files' bytes rather than a folder: what a web page fetched
    /// (where the shards stay JS arrays and only the tensor being uploaded enters wasm memory).
    /// `origin` names the files in errors (a URL, say).
    pub fn load_files(
        gpu: Gpu,
        files: ModelFiles,
        origin: &str,
        opts: &LoadOptions,
    ) -> Result<PaliGemma> {
        let origin = Path::new(origin);
        let config = PaliGemmaConfig::from_json(
            &files.config,
            &origin.join("config.json").display().to_string(),
        )?;
        let tokenizer =
            PromptTokenizer::from_bytes(&files.tokenizer, &origin.join("tokenizer.json"))?;
        let ckpt = Checkpoint::from_shards(origin, files.shards)?;
        Self::load_checkpoint(gpu, config, tokenizer, ckpt, origin, opts)
    }

    /// The loading shared by folders and files: the tokenizer and the checkpoint checked
    /// against the config, then the weights uploaded.
    fn load_checkpoint(
        gpu: Gpu,
        config: PaliGemmaConfig,
        tokenizer: PromptTokenizer,
        ckpt: Checkpoint,
        dir: &Path,
        opts: &LoadOptions,
    ) -> Result<PaliGemma> {
        let precision = opts.precision;
        if tokenizer.image_token_id() != config.image_token_index {
            return Err(Error::invalid(format!(
                "{}: the tokenizer's <image> is id {}, config.json's image_token_index is {}",
                dir.display(),
                tokenizer.image_token_id(),
                config.image_token_index
            )));
        }
        // A checkpoint written by `paligemma quantize` says its own precision; a request for
        // another cannot be met without the original weights.
        let precision = match (
            ckpt.quantized_format().map(Precision::of_quantized),
            precision,
        ) {
            (Some(q), Some(p)) if p != q => {
                return Err(Error::invalid(format!(
                    "{}: the checkpoint is quantized as {q:?}; it cannot be loaded as {p:?} \
                     (load the original checkpoint instead)",
                    dir.display()
                )));
            }
            (Some(q), _) => Some(q),
            (None, p) => p,
        };
        let source = WeightSource::Checkpoint(&ckpt);
        let model = Self::from_source(
            gpu,
            config,
            source,
            Some(tokenizer),
            precision,
            opts.progress.as_ref(),
        )?;
        log::info!(
            "loaded {} on {} with {:?} weights",
            dir.display(),
            model.gpu.adapter_name(),
            model.precision
        );
        Ok(model)
    }

    /// A model at `config`'s shapes with uniform random weights stored as `format` (seeded per
    /// tensor): the published sizes with no download, for benchmarks. Without a tokenizer only
    /// the id-level API (`encode_pixels`, `session`, `prefill`, `step`) works.
    pub fn random(
        gpu: Gpu,
        config: PaliGemmaConfig,
        seed: u64,
        format: WeightFormat,
        precision: Option<Precision>,
    ) -> Result<PaliGemma> {
        let source = WeightSource::Random { seed, format };
        Self::from_source(gpu, config, source, None, precision, None)
    }

    /// Builds a model from any weight source.
    pub(crate) fn from_source(
        gpu: Gpu,
        config: PaliGemmaConfig,
        source: WeightSource,
        tokenizer: Option<PromptTokenizer>,
        precision: Option<Precision>,
        progress: Option<&LoadProgress>,
    ) -> Result<PaliGemma> {
        config.check("the model config")?;
        let precision = precision.unwrap_or(Precision::F16);
        let before = gpu.allocated_bytes();
        let l = Loader {
            gpu: &gpu,
            source,
            precision,
            progress,
        };
        let vision = VisionTower::load(&l, &config.vision)?;
        let (dv, dt) = (config.vision.hidden_size, config.text.hidden_size);
        let projector = l.linear("projector.linear", dt, dv, true)?;
        let text = TextModel::load(&l, &config.text)?;
        gpu.flush()?;
        Ok(PaliGemma {
            weight_bytes: gpu.allocated_bytes() - before,
            gpu,
            config,
            precision,
            vision,
            projector,
            text,
            tokenizer,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
    pub fn config(&self) -> &PaliGemmaConfig {
        &self.config
    }
    pub fn precision(&self) -> Precision {
        self.precision
    }
    /// The tokenizer (absent only for models built from random weights).
    pub fn tokenizer(&self) -> Result<&PromptTokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| Error::invalid("this model was built without a tokenizer"))
    }
    /// GPU memory the model holds for its weights (vision tower, projector, decoder, tables),
    /// in bytes; freed when the model is dropped. Each [`Session`] / [`Sequence`] reports its
    /// own (KV cache, logits), as does a [`DecodeBatch`]; the vision tower's activations
    /// (`image tokens x intermediate x 4` bytes and a few more rows) live only while an image
    /// is encoded. (Measured as what the `Gpu` allocated during the load: on a `Gpu` shared
    /// with another thread that allocates meanwhile, that counts too.)
    pub fn weight_memory(&self) -> u64 {
        self.weight_bytes
    }

    /// Bytes a decode step reads from weights: every decoder matrix (block scales included)
    /// and the logits table; with the bandwidth, the floor of the time per token.
    pub fn decode_weight_bytes(&self) -> u64 {
        self.text.weight_bytes()
    }

    /// The side of the square image the vision tower takes.
    pub fn image_size(&self) -> usize {
        self.config.vision.image_size
    }
    /// Image tokens per image: (image_size / patch_size)^2.
    pub fn num_image_tokens(&self) -> usize {
        self.config.vision.num_patches()
    }

    /// `<image>` * N + `<bos>` + prompt + "\n", tokenized.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let ids = self
            .tokenizer()?
            .prompt_ids(prompt, self.num_image_tokens())?;
        let n = self.num_image_tokens();
        if ids
            .iter()
            .filter(|&&t| t == self.config.image_token_index)
            .count()
            != n
        {
            return Err(Error::invalid(format!(
                "the prompt must hold exactly {n} image tokens (id {}), at its start",
                self.config.image_token_index
            )));
        }
        Ok(ids)
    }

    /// Runs SigLIP and the projector on preprocessed pixels [3, S, S]. Returns the features on
    /// the GPU and leaves "vision_out" in `vision_out` when given.
    pub fn encode_pixels(
        &self,
        pixels: &[f32],
        vision_out: Option<&wgpu::Buffer>,
    ) -> Result<ImageFeatures> {
        let encode = self.encode_pixels_async(pixels, vision_out);
        self.gpu.block_on("encode_pixels", encode)
    }

    /// [`encode_pixels`](Self::encode_pixels), awaitable (it waits for nothing, but returns to
    /// a frame loop between layers: see [`Gpu::set_polled_by_caller`]).
    pub async fn encode_pixels_async(
        &self,
        pixels: &[f32],
        vision_out: Option<&wgpu::Buffer>,
    ) -> Result<ImageFeatures> {
        let (s, c) = (self.image_size(), self.config.vision.num_channels);
        if pixels.len() != c * s * s {
            return Err(Error::invalid(format!(
                "pixel buffer holds {} values, the vision tower wants {c} x {s} x {s}",
                pixels.len()
            )));
        }
        let buffer = self.gpu.upload_f32("pixels", pixels)?;
        self.encode_pixel_buffer(&buffer, vision_out).await
    }

    /// Preprocesses a texture on the GPU (a rendered frame never visits the CPU) and encodes
    /// it. The texture (rgba8 or bgra8, unorm or srgb, `COPY_SRC` usage, any size whose bytes
    /// fit one storage binding: 8K frames fit the 128 MiB default) is read as its stored bytes,
    /// resized as Pillow's bicubic in the same integer arithmetic and normalised through the
    /// same table as [`preprocess`](crate::preprocess::preprocess) on the same bytes: the
    /// pixels are identical (integer math and a lookup, so on any driver), and so is the
    /// answer. Alpha is dropped, as Pillow's `convert("RGB")` drops it.
    ///
    /// On a shared device the work goes to the queue after whatever the caller has submitted
    /// so far (so a frame rendered and submitted before this call is what is read), in
    /// submissions of one layer each. The texture must belong to the model's device: wgpu
    /// panics on another device's texture, and offers no way to check beforehand.
    pub fn encode_texture(&self, texture: &wgpu::Texture) -> Result<ImageFeatures> {
        let encode = self.encode_texture_async(texture);
        self.gpu.block_on("encode_texture", encode)
    }

    /// [`encode_texture`](Self::encode_texture), awaitable (see
    /// [`encode_pixels_async`](Self::encode_pixels_async)).
    pub async fn encode_texture_async(&self, texture: &wgpu::Texture) -> Result<ImageFeatures> {
        let s = self.image_size();
        let pixels = self.gpu.storage("pixels", (3 * s * s * 4) as u64)?;
        let mut rec = self.gpu.recorder();
        crate::ops::resize::preprocess_texture(&mut rec, texture, s, View::new(&pixels, 3, s * s))?;
        rec.submit("preprocessing a texture")?;
        self.encode_pixel_buffer(&pixels, None).await
    }

    async fn encode_pixel_buffer(
        &self,
        pixels: &wgpu::Buffer,
        vision_out: Option<&wgpu::Buffer>,
    ) -> Result<ImageFeatures> {
        let (n, dv, dt) = (
            self.num_image_tokens(),
            self.config.vision.hidden_size,
            self.config.text.hidden_size,
        );
        let owned;
        let vout = match vision_out {
            Some(b) => b,
            None => {
                owned = self.gpu.storage("vision out", (n * dv * 4) as u64)?;
                &owned
            }
        };
        self.vision.encode_buffer(&self.gpu, pixels, vout).await?;
        let buffer = self.gpu.storage("image features", (n * dt * 4) as u64)?;
        let mut rec = self.gpu.recorder();
        let (x, y) = (View::new(vout, n, dv), View::new(&buffer, n, dt));
        self.projector.forward(&mut rec, x, y)?;
        rec.submit("the projector")?;
        Ok(ImageFeatures { buffer, n })
    }

    /// A session for a prompt of `prompt_len` tokens and up to `max_new_tokens` more.
    pub fn session(&self, prompt_len: usize, max_new_tokens: usize) -> Result<Session> {
        let capacity = prompt_len.checked_add(max_new_tokens).ok_or_else(|| {
            Error::invalid(format!("{prompt_len} + {max_new_tokens} tokens overflow"))
        })?;
        self.text.session(&self.gpu, capacity, prompt_len)
    }

    /// Runs the prompt (the image rows replace its `<image>` tokens); returns the greedy next
    /// token. Lower-level than [`generate`](Self::generate), for callers who drive decoding.
    pub fn prefill(&self, s: &mut Session, ids: &[u32], image: &ImageFeatures) -> Result<u32> {
        self.gpu()
            .block_on("prefill", self.prefill_async(s, ids, image))
    }

    /// [`prefill`](Self::prefill), awaitable.
    pub async fn prefill_async(
        &self,
        s: &mut Session,
        ids: &[u32],
        image: &ImageFeatures,
    ) -> Result<u32> {
        let image_id = self.config.image_token_index;
        if ids.len() < image.n || ids[..image.n].iter().any(|&t| t != image_id) {
            return Err(Error::invalid(format!(
                "the prompt must start with the {} image tokens (id {image_id}) its image replaces",
                image.n
            )));
        }
        self.text
            .prefill(&self.gpu, s, ids, Some((&image.buffer, image.n)))
            .await
    }

    /// Appends `token`; returns the greedy next token.
    pub fn step(&self, s: &mut Session, token: u32) -> Result<u32> {
        self.gpu().block_on("step", self.step_async(s, token))
    }

    /// [`step`](Self::step), awaitable.
    pub async fn step_async(&self, s: &mut Session, token: u32) -> Result<u32> {
        self.text.step(&self.gpu, s, token).await
    }

    /// The logits the session's last token was chosen from, read back: `[vocab]`.
    pub fn logits(&self, s: &Session) -> Result<Vec<f32>> {
        self.gpu().block_on("logits", self.logits_async(s))
    }

    /// [`logits`](Self::logits), awaitable.
    pub async fn logits_async(&self, s: &Session) -> Result<Vec<f32>> {
        let vocab = self.config.text.vocab_size;
        self.gpu.read_f32_async(&s.logits, 0, vocab).await
    }

    /// Logits at every position of `ids` in one pass, `[ids.len(), vocab]`, the image rows
    /// replacing the first ids and positions from `prefix_len` on causal: what KV-cache
    /// decoding must reproduce (`prefix_len` = the prompt's length), and transformers'
    /// prefill logits when `prefix_len == ids.len()`.
    pub fn all_logits(
        &self,
        ids: &[u32],
        image: Option<&ImageFeatures>,
        prefix_len: usize,
    ) -> Result<Vec<f32>> {
        let image = image.map(|f| (&f.buffer, f.n));
        self.text.all_logits(&self.gpu, ids, image, prefix_len)
    }

    /// Generates text about `image` for `prompt`, calling `on_token(id, text_piece)` as each
    /// token is chosen; returning `false` from it stops generation.
    pub fn generate(
        &self,
        image: &image::DynamicImage,
        prompt: &str,
        opts: &GenerateOptions,
        on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<Generation> {
        self.gpu().block_on(
            "generate",
            self.generate_async(image, prompt, opts, on_token),
        )
    }

    /// [`generate`](Self::generate), awaitable: the form a web page uses.
    pub async fn generate_async(
        &self,
        image: &image::DynamicImage,
        prompt: &str,
        opts: &GenerateOptions,
        on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<Generation> {
        let started = self.start_async(image, prompt, opts).await?;
        self.finish(started, on_token).await
    }

    /// [`generate`](Self::generate) about a texture, preprocessed on the GPU (see
    /// [`encode_texture`](Self::encode_texture)).
    pub fn generate_texture(
        &self,
        texture: &wgpu::Texture,
        prompt: &str,
        opts: &GenerateOptions,
        on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<Generation> {
        let generation = self.generate_texture_async(texture, prompt, opts, on_token);
        self.gpu().block_on("generate_texture", generation)
    }

    /// [`generate_texture`](Self::generate_texture), awaitable: what a frame loop polls (see
    /// [`Gpu::set_polled_by_caller`]).
    pub async fn generate_texture_async(
        &self,
        texture: &wgpu::Texture,
        prompt: &str,
        opts: &GenerateOptions,
        on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<Generation> {
        let started = self.start_texture_async(texture, prompt, opts).await?;
        self.finish(started, on_token).await
    }

    /// Drives a started sequence to its end.
    async fn finish(
        &self,
        (mut seq, first): (Sequence, Option<Token>),
        mut on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<Generation> {
        let t = Instant::now();
        let mut token = first;
        while let Some(Token { id, piece }) = token.take() {
            if !on_token(id, &piece) {
                seq.cancel();
            }
            token = self.advance_one(&mut seq).await?;
        }
        if let Some(e) = seq.error() {
            return Err(Error::invalid(e.to_string()));
        }
        let (prompt_ids, generated_ids, text, step_logits, mut timings) = seq.into_parts();
        timings.decode_ms = ms(t);
        if generated_ids.len() > 1 {
            timings.decode_tokens_per_s =
                (generated_ids.len() - 1) as f64 / (timings.decode_ms / 1e3);
        }
        Ok(Generation {
            prompt_ids,
            generated_ids,
            text,
            step_logits,
            timings,
        })
    }

    /// Scratch for [`step_batch`](Self::step_batch) and [`advance`](Self::advance): one per
    /// caller that steps batches (a few MB: GEMV_BATCH rows of activations and logits).
    pub fn decode_batch(&self) -> Result<DecodeBatch> {
        self.text.decode_batch(&self.gpu)
    }

    /// One decode step for several sessions: `tokens[i]` is appended to `sessions[i]`;
    /// returns each one's greedy next token and leaves its logits in it, as
    /// [`step`](Self::step) would (to the bit on lavapipe; see `TextModel::step_batch`).
    /// Each weight is read once per 16 sessions.
    pub fn step_batch(
        &self,
        batch: &mut DecodeBatch,
        sessions: &mut [&mut Session],
        tokens: &[u32],
    ) -> Result<Vec<u32>> {
        self.gpu()
            .block_on("step_batch", self.step_batch_async(batch, sessions, tokens))
    }

    /// [`step_batch`](Self::step_batch), awaitable.
    pub async fn step_batch_async(
        &self,
        batch: &mut DecodeBatch,
        sessions: &mut [&mut Session],
        tokens: &[u32],
    ) -> Result<Vec<u32>> {
        let gpu = &self.gpu;
        self.text.step_batch(gpu, batch, sessions, tokens).await
    }
}

// The model is shared across threads (a server's handlers and its engine, a game's render and
// main threads). Not on the web, where wgpu's handles are JS objects bound to one thread.
#[cfg(not(target_arch = "wasm32"))]
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<PaliGemma>();
    send_sync::<Gpu>();
    send::<Sequence>();
    send::<DecodeBatch>();
};

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
