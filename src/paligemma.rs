//! The whole model: load a checkpoint folder, encode an image, run the prompt, generate text.
//! Mirrors transformers' `PaliGemmaForConditionalGeneration` + `PaliGemmaProcessor`.
//!
//! Every operation that waits for the GPU is an `async fn` (the core: what a web page or a
//! game's frame loop awaits); [`PaliGemma::block_on`] is the one blocking facade over all of
//! them, for everyone else.

use std::path::Path;

use web_time::Instant;

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::generation::{GenerateOptions, Generation, ImageInput, Prompt, Token, elapsed_ms};
use crate::gpu::Gpu;
use crate::model::config::PaliGemmaConfig;
use crate::model::gemma::TextModel;
use crate::model::load::{LoadOptions, LoadProgress, ModelFiles, Opened};
use crate::model::projector::{Projector, place_images};
use crate::model::siglip::VisionTower;
use crate::model::state::{DecodeScratch, DecoderState};
use crate::model::{Loader, Precision, WeightSource};
use crate::ops::WeightFormat;
use crate::sequence::{Chooser, Sequence};
use crate::tokenizer::{PromptTokenizer, check_image_prefix};

mod ahead;
mod images;
pub use images::ImageFeatures;

/// A loaded PaliGemma. `Send + Sync`: load it on one thread, use it from others (each call
/// records and submits its own command buffers on the shared queue).
pub struct PaliGemma {
    gpu: Gpu,
    /// GPU bytes of the weights (everything allocated while loading).
    weight_bytes: u64,
    config: PaliGemmaConfig,
    precision: Precision,
    vision: VisionTower,
    projector: Projector,
    text: TextModel,
    tokenizer: Option<PromptTokenizer>,
    /// Gemma 3: the chat template that builds its prompts.
    chat: Option<ChatTemplate>,
}

impl PaliGemma {
    /// Loads `dir` (config.json, safetensors, tokenizer.json) on a device the library picks.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<PaliGemma> {
        Self::load_on(Gpu::new(&opts.gpu)?, dir, opts)
    }

    /// Loads `dir` on `gpu`, which may wrap the caller's own device (`opts.gpu` is not used).
    pub fn load_on(gpu: Gpu, dir: &Path, opts: &LoadOptions) -> Result<PaliGemma> {
        let opened = Opened::folder(dir, opts.precision)?;
        pollster::block_on(Self::upload(gpu, opened, dir, opts))
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
        pollster::block_on(Self::load_files_async(gpu, files, origin, opts))
    }

    /// [`load_files`](Self::load_files) for shards that are read as they are uploaded: a web
    /// page's remote files, whose tensors arrive while this awaits.
    pub async fn load_files_async(
        gpu: Gpu,
        files: ModelFiles,
        origin: &str,
        opts: &LoadOptions,
    ) -> Result<PaliGemma> {
        let origin = Path::new(origin);
        let opened = Opened::files(files, origin, opts.precision)?;
        Self::upload(gpu, opened, origin, opts).await
    }

    async fn upload(gpu: Gpu, o: Opened, dir: &Path, opts: &LoadOptions) -> Result<PaliGemma> {
        let source = WeightSource::Checkpoint(&o.checkpoint);
        let progress = opts.progress.as_ref();
        let mut model = Self::build(
            gpu,
            o.config,
            source,
            Some(o.tokenizer),
            o.precision,
            progress,
        )
        .await?;
        if model.config.image_tokens.is_some() {
            model.chat = Some(ChatTemplate::for_folder(dir)?);
        }
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
    /// the id-level API (`encode`, `new_state`, `prefill`, `step`) works.
    pub fn random(
        gpu: Gpu,
        config: PaliGemmaConfig,
        seed: u64,
        format: WeightFormat,
        precision: Option<Precision>,
    ) -> Result<PaliGemma> {
        let source = WeightSource::Random { seed, format };
        pollster::block_on(Self::build(gpu, config, source, None, precision, None))
    }

    /// Uploads every part from a weight source.
    async fn build(
        gpu: Gpu,
        config: PaliGemmaConfig,
        source: WeightSource<'_>,
        tokenizer: Option<PromptTokenizer>,
        precision: Option<Precision>,
        progress: Option<&LoadProgress>,
    ) -> Result<PaliGemma> {
        config.check("the model config")?;
        let precision = precision.unwrap_or(Precision::F16);
        let before = gpu.allocated_bytes();
        let l = Loader::new(&gpu, source, precision, progress);
        let vision = VisionTower::load(&l, &config.vision).await?;
        let projector = Projector::load(&l, &config).await?;
        let text = TextModel::load(&l, &config.text).await?;
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
            // Set by `upload` from the model's folder (a random model has no tokenizer).
            chat: None,
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
    /// in bytes; freed when the model is dropped. Each [`DecoderState`] / [`Sequence`] reports
    /// its own (KV cache, logits), as does a [`DecodeScratch`]; the vision tower's activations
    /// live only while an image is encoded. (Measured as what the `Gpu` allocated during the
    /// load: on a `Gpu` shared with another thread that allocates meanwhile, that counts too.)
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
    /// Image tokens per image: (image_size / patch_size)^2 for PaliGemma, the pooled
    /// `mm_tokens_per_image` for Gemma 3.
    pub fn num_image_tokens(&self) -> usize {
        self.projector.tokens(self.config.vision.num_patches())
    }

    /// Gemma 3's chat template (`chat.rs` builds prompts with it).
    pub(crate) fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }

    /// The ids of `prompt` about `images` images, checked before they are encoded: PaliGemma's
    /// must hold exactly the image's tokens first (`prompt_ids` checks the ids it makes);
    /// Gemma 3's runs of image tokens are checked when they are filled.
    fn ids_of(&self, prompt: Prompt, images: usize) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Text(text) => self.text_ids(&text, images),
            Prompt::Ids(ids) if self.config.image_tokens.is_some() => Ok(ids),
            Prompt::Ids(ids) => {
                let (n, image_id) = (self.num_image_tokens(), self.config.image_token_index);
                check_image_prefix(&ids, n, image_id)?;
                Ok(ids)
            }
        }
    }

    /// An empty decoder state for a prompt of `prompt_len` tokens and up to `max_new_tokens`
    /// more.
    pub fn new_state(&self, prompt_len: usize, max_new_tokens: usize) -> Result<DecoderState> {
        let capacity = prompt_len.checked_add(max_new_tokens).ok_or_else(|| {
            Error::invalid(format!("{prompt_len} + {max_new_tokens} tokens overflow"))
        })?;
        DecoderState::new(&self.gpu, &self.text.cfg, capacity)
    }

    /// Runs the prompt `ids` (the image rows replace its `<image>` tokens) into the empty
    /// state `s`; returns the next token (greedy, or as
    /// [`set_sampling`](DecoderState::set_sampling) says).
    pub async fn prefill(
        &self,
        s: &mut DecoderState,
        ids: &[u32],
        image: &ImageFeatures,
    ) -> Result<u32> {
        self.prefill_images(s, ids, &[image]).await
    }

    /// [`prefill`](Self::prefill) with any number of images (Gemma 3: each replaces a run of
    /// image tokens, in order; none for a text-only prompt; PaliGemma: one).
    pub async fn prefill_images(
        &self,
        s: &mut DecoderState,
        ids: &[u32],
        images: &[&ImageFeatures],
    ) -> Result<u32> {
        let images: Vec<_> = images.iter().map(|f| (&f.buffer, f.n)).collect();
        let rows = place_images(&self.config, ids, &images)?;
        self.text.prefill(&self.gpu, s, ids, &rows).await
    }

    /// Buffers for [`step`](Self::step) and [`advance`](Self::advance): one per caller that
    /// steps (a few MB at most: 16 rows of activations and logits).
    pub fn decode_scratch(&self) -> Result<DecodeScratch> {
        DecodeScratch::new(&self.gpu, &self.text.cfg)
    }

    /// One decode step for any number of states (one is a batch of one): `tokens[i]` is
    /// appended to `states[i]`; returns each one's next token (greedy, or as its
    /// [`set_sampling`](DecoderState::set_sampling) says) and leaves its logits in it. Each
    /// weight is read once per 16 states; a state's logits are the same alone or in a batch
    /// (to the bit on lavapipe).
    pub async fn step(
        &self,
        scratch: &mut DecodeScratch,
        states: &mut [&mut DecoderState],
        tokens: &[u32],
    ) -> Result<Vec<u32>> {
        self.text.step(&self.gpu, scratch, states, tokens).await
    }

    /// The logits the state's last token was chosen from, read back: `[vocab]`.
    pub async fn logits(&self, s: &DecoderState) -> Result<Vec<f32>> {
        let vocab = self.config.text.vocab_size;
        self.gpu.read_f32_async(&s.logits, 0, vocab).await
    }

    /// Logits at every position of `ids` in one pass, `[ids.len(), vocab]`, the image rows
    /// replacing the first ids and positions from `prefix_len` on causal: what KV-cache
    /// decoding must reproduce (`prefix_len` = the prompt's length), and transformers'
    /// prefill logits when `prefix_len == ids.len()`.
    pub async fn all_logits(
        &self,
        ids: &[u32],
        image: Option<&ImageFeatures>,
        prefix_len: usize,
    ) -> Result<Vec<f32>> {
        let images: Vec<_> = image.into_iter().collect();
        self.all_logits_images(ids, &images, prefix_len).await
    }

    /// [`all_logits`](Self::all_logits) with any number of images placed as
    /// [`prefill_images`](Self::prefill_images) places them, the first `prompt_len` ids the
    /// prompt.
    pub async fn all_logits_images(
        &self,
        ids: &[u32],
        images: &[&ImageFeatures],
        prompt_len: usize,
    ) -> Result<Vec<f32>> {
        let images: Vec<_> = images.iter().map(|f| (&f.buffer, f.n)).collect();
        let rows = place_images(&self.config, &ids[..prompt_len.min(ids.len())], &images)?;
        self.text
            .all_logits(&self.gpu, ids, &rows, prompt_len)
            .await
    }

    /// Starts answering `prompt` about `image`: the image encoded, the prompt run, and the
    /// first token chosen, which is returned with the sequence (and ends it if it is `<eos>`
    /// or `max_new_tokens` is 1).
    pub async fn start(
        &self,
        image: impl Into<ImageInput<'_>>,
        prompt: impl Into<Prompt>,
        opts: &GenerateOptions,
    ) -> Result<(Sequence, Option<Token>)> {
        self.start_with(vec![image.into()], prompt.into(), opts)
            .await
    }

    /// [`start`](Self::start) with any number of images: Gemma 3's prompt ids (from
    /// [`chat_ids`](Self::chat_ids)) hold a run of image tokens for each, in order, or none for
    /// a text-only prompt; PaliGemma takes one.
    pub async fn start_with(
        &self,
        images: Vec<ImageInput<'_>>,
        prompt: Prompt,
        opts: &GenerateOptions,
    ) -> Result<(Sequence, Option<Token>)> {
        let t0 = Instant::now();
        let ids = self.ids_of(prompt, images.len())?;
        let pixels = images.into_iter().map(|i| self.pixels(i));
        let pixels = pixels.collect::<Result<Vec<_>>>()?;
        let preprocess_ms = elapsed_ms(t0);
        let t1 = Instant::now();
        let mut features = Vec::with_capacity(pixels.len());
        for p in &pixels {
            features.push(self.encode_pixels(p).await?);
        }
        self.gpu.wait_async().await?;
        let vision_ms = elapsed_ms(t1);
        let t2 = Instant::now();
        let mut state = self.new_state(ids.len(), opts.max_new_tokens)?;
        state.set_sampling(&opts.sampling)?;
        let images: Vec<_> = features.iter().collect();
        let chosen = self.prefill_images(&mut state, &ids, &images).await?;
        let mut seq = Sequence::new(state, ids, chosen, opts);
        seq.timings.preprocess_ms = preprocess_ms;
        seq.timings.vision_ms = vision_ms;
        seq.timings.prefill_ms = elapsed_ms(t2);
        seq.timings.time_to_first_token_ms = elapsed_ms(t0);
        let first = seq.first_token(&self.chooser()?).await?;
        Ok((seq, first))
    }

    /// Moves every unfinished sequence of `seqs` forward by one token, all in one decode step;
    /// returns what each chose (`None` for those already finished). A sequence decodes to the
    /// same tokens alone or in any batch (checked on lavapipe).
    ///
    /// An error of the step itself (the GPU) is returned, and no sequence has advanced. A
    /// sequence whose next token cannot be chosen (its logits are all NaN, say) ends as
    /// [`FinishReason::Failed`](crate::FinishReason::Failed) and the others go on.
    pub async fn advance(
        &self,
        scratch: &mut DecodeScratch,
        seqs: &mut [&mut Sequence],
    ) -> Result<Vec<Option<Token>>> {
        let mut out = vec![None; seqs.len()];
        let mut live: Vec<(usize, &mut Sequence, u32)> = seqs
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.next_input().map(|t| (i, &mut **s, t)))
            .collect();
        if live.is_empty() {
            return Ok(out);
        }
        let tokens: Vec<u32> = live.iter().map(|l| l.2).collect();
        let mut states: Vec<_> = live.iter_mut().map(|l| l.1.state_mut()).collect();
        let chosen = self.step(scratch, &mut states, &tokens).await?;
        let chooser = self.chooser()?;
        for ((i, s, _), g) in live.into_iter().zip(chosen) {
            s.set_chosen(g);
            out[i] = s.choose_or_fail(&chooser).await;
        }
        Ok(out)
    }

    /// What a sequence needs of the model to choose its tokens.
    fn chooser(&self) -> Result<Chooser<'_>> {
        Ok(Chooser {
            gpu: &self.gpu,
            tokenizer: self.tokenizer()?,
            stops: &self.config.stop_token_ids,
        })
    }

    /// Generates text about `image` for `prompt`, calling `on_token(id, text_piece)` as each
    /// token is chosen; returning `false` from it stops generation.
    pub async fn generate(
        &self,
        image: impl Into<ImageInput<'_>>,
        prompt: impl Into<Prompt>,
        opts: &GenerateOptions,
        on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<Generation> {
        let images = vec![image.into()];
        self.generate_with(images, prompt.into(), opts, on_token)
            .await
    }

    /// [`generate`](Self::generate) with any number of images, as
    /// [`start_with`](Self::start_with) takes them.
    pub async fn generate_with(
        &self,
        images: Vec<ImageInput<'_>>,
        prompt: Prompt,
        opts: &GenerateOptions,
        mut on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<Generation> {
        let (mut seq, first) = self.start_with(images, prompt, opts).await?;
        let t = Instant::now();
        if seq.may_run_ahead() {
            self.decode_ahead(&mut seq, first, on_token).await?;
        } else {
            let mut scratch = self.decode_scratch()?;
            let mut token = first;
            while let Some(Token { id, piece, .. }) = token.take() {
                if !on_token(id, &piece) {
                    seq.cancel();
                }
                token = self.advance(&mut scratch, &mut [&mut seq]).await?.remove(0);
            }
        }
        if let Some(e) = seq.error() {
            return Err(Error::invalid(e.to_string()));
        }
        Ok(seq.into_generation(elapsed_ms(t)))
    }

    /// Runs any of the awaitable operations to its end on the calling thread: the blocking
    /// form of all of them (`model.block_on(model.generate(...))`). Natively the device is
    /// polled while the operation waits. A web page cannot block (the browser's event loop
    /// must run for the GPU's answer to arrive): there, an operation that must wait is an
    /// error saying to await it instead.
    pub fn block_on<T>(&self, op: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        self.gpu.block_on("this operation", op)
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
    send::<DecodeScratch>();
};
