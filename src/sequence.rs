//! Generations in progress: a [`Sequence`] is one image and prompt being answered (its session
//! on the GPU, its sampler, the tokens so far), and [`PaliGemma::advance`] moves any number of
//! them forward by a token in one batched decode step. [`PaliGemma::generate`] is one sequence
//! driven to its end; a server or a batch job keeps many in flight, starting new ones as others
//! finish (continuous batching).

use web_time::Instant;

use crate::error::{Error, Result};
use crate::model::session::{DecodeBatch, Session};
use crate::ops::View;
use crate::ops::softmax::softmax;
use crate::paligemma::{GenerateOptions, ImageFeatures, PaliGemma, Timings};
use crate::preprocess::preprocess;
use crate::sampling::Sampler;

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model emitted `<eos>`.
    Stop,
    /// `max_new_tokens` were generated.
    Length,
    /// The caller stopped it ([`Sequence::cancel`], or `false` from `generate`'s callback).
    Cancelled,
    /// Choosing its next token failed ([`Sequence::error`] says why); the others of its batch
    /// went on.
    Failed,
}

/// One token a sequence chose, and the text it added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub id: u32,
    /// What the token adds to the decoded text (empty for `<eos>`; several tokens may build
    /// one character).
    pub piece: String,
}

/// One generation in progress.
pub struct Sequence {
    session: Session,
    opts: GenerateOptions,
    /// Sampling (not greedy): the sampler and a `[vocab]` buffer for the probabilities.
    sampler: Option<(Sampler, wgpu::Buffer)>,
    prompt_ids: Vec<u32>,
    generated: Vec<u32>,
    text: String,
    /// The logits each token was chosen from, when `keep_logits`.
    step_logits: Option<Vec<f32>>,
    /// The greedy choice from the session's latest logits.
    greedy: u32,
    finished: Option<FinishReason>,
    /// Why it failed, when it did.
    error: Option<String>,
    timings: Timings,
}

impl Sequence {
    /// The full prompt, image placeholders included.
    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt_ids
    }
    pub fn generated_ids(&self) -> &[u32] {
        &self.generated
    }
    /// The generated text so far, special tokens removed.
    pub fn text(&self) -> &str {
        &self.text
    }
    /// The logits each token was chosen from, `[generated, vocab]`, when `keep_logits` was set.
    pub fn step_logits(&self) -> Option<&[f32]> {
        self.step_logits.as_deref()
    }
    /// `None` while it goes on.
    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }
    /// Why the sequence failed ([`FinishReason::Failed`]).
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
    /// Preprocessing, vision and prefill times (decoding is the caller's to time).
    pub fn timings(&self) -> &Timings {
        &self.timings
    }
    /// Stops the sequence; [`PaliGemma::advance`] leaves it alone from now on.
    pub fn cancel(&mut self) {
        self.finished.get_or_insert(FinishReason::Cancelled);
    }
    /// The GPU memory the sequence holds (its KV cache, logits and, when sampling, a row of
    /// probabilities), in bytes.
    pub fn gpu_bytes(&self) -> u64 {
        let probs = self.sampler.as_ref().map_or(0, |(_, p)| p.size());
        self.session.gpu_bytes() + probs
    }
    pub(crate) fn into_parts(self) -> (Vec<u32>, Vec<u32>, String, Option<Vec<f32>>, Timings) {
        let Sequence {
            prompt_ids,
            generated,
            text,
            step_logits,
            timings,
            ..
        } = self;
        (prompt_ids, generated, text, step_logits, timings)
    }
}

impl PaliGemma {
    /// Starts answering `prompt` about `image`: preprocessing, the vision tower, the prefill,
    /// and the first token, which is returned with the sequence (and ends it if it is `<eos>`
    /// or `max_new_tokens` is 1).
    pub fn start(
        &self,
        image: &image::DynamicImage,
        prompt: &str,
        opts: &GenerateOptions,
    ) -> Result<(Sequence, Option<Token>)> {
        self.gpu()
            .block_on("start", self.start_async(image, prompt, opts))
    }

    /// [`start`](Self::start), awaitable.
    pub async fn start_async(
        &self,
        image: &image::DynamicImage,
        prompt: &str,
        opts: &GenerateOptions,
    ) -> Result<(Sequence, Option<Token>)> {
        let t0 = Instant::now();
        let ids = self.prompt_ids(prompt)?;
        let pixels = preprocess(image, self.image_size() as u32);
        let preprocess_ms = ms(t0);
        let t1 = Instant::now();
        let features = self.encode_pixels_async(&pixels, None).await?;
        self.start_from(&features, ids, opts, t0, preprocess_ms, t1)
            .await
    }

    /// [`start`](Self::start) on pixels already preprocessed (`[3, S, S]`, as
    /// [`preprocess`](crate::preprocess::preprocess) makes them): a server preprocesses on its
    /// request threads and leaves only the GPU work to the thread that drives the batch.
    pub fn start_pixels(
        &self,
        pixels: &[f32],
        prompt: &str,
        opts: &GenerateOptions,
    ) -> Result<(Sequence, Option<Token>)> {
        let ids = self.prompt_ids(prompt)?;
        self.gpu()
            .block_on("start_pixels", self.start_pixels_ids(pixels, ids, opts))
    }

    /// [`start_pixels`](Self::start_pixels) with the prompt already tokenized
    /// ([`prompt_ids`](Self::prompt_ids)): the server checks a request's length with them.
    pub(crate) async fn start_pixels_ids(
        &self,
        pixels: &[f32],
        ids: Vec<u32>,
        opts: &GenerateOptions,
    ) -> Result<(Sequence, Option<Token>)> {
        let t0 = Instant::now();
        let features = self.encode_pixels_async(pixels, None).await?;
        self.start_from(&features, ids, opts, t0, 0.0, t0).await
    }

    /// [`start`](Self::start) on a texture (a rendered frame), preprocessed on the GPU: see
    /// [`encode_texture`](Self::encode_texture). The preprocessing counts as vision time.
    pub fn start_texture(
        &self,
        texture: &wgpu::Texture,
        prompt: &str,
        opts: &GenerateOptions,
    ) -> Result<(Sequence, Option<Token>)> {
        self.gpu().block_on(
            "start_texture",
            self.start_texture_async(texture, prompt, opts),
        )
    }

    /// [`start_texture`](Self::start_texture), awaitable.
    pub async fn start_texture_async(
        &self,
        texture: &wgpu::Texture,
        prompt: &str,
        opts: &GenerateOptions,
    ) -> Result<(Sequence, Option<Token>)> {
        let t0 = Instant::now();
        let ids = self.prompt_ids(prompt)?;
        let features = self.encode_texture_async(texture).await?;
        self.start_from(&features, ids, opts, t0, 0.0, t0).await
    }

    /// The prefill of the prompt `ids` and the first token after the image is encoded (`t0`:
    /// the start; `t1`: when the vision work began).
    async fn start_from(
        &self,
        features: &ImageFeatures,
        ids: Vec<u32>,
        opts: &GenerateOptions,
        t0: Instant,
        preprocess_ms: f64,
        t1: Instant,
    ) -> Result<(Sequence, Option<Token>)> {
        let mut timings = Timings {
            preprocess_ms,
            ..Timings::default()
        };
        self.gpu().wait_async().await?;
        timings.vision_ms = ms(t1);

        let t2 = Instant::now();
        let mut session = self.session(ids.len(), opts.max_new_tokens)?;
        let greedy = self.prefill_async(&mut session, &ids, features).await?;
        timings.prefill_ms = ms(t2);
        timings.time_to_first_token_ms = ms(t0);
        let mut seq = Sequence {
            session,
            opts: opts.clone(),
            sampler: if opts.sampling.is_greedy() {
                None
            } else {
                let bytes = (self.config().text.vocab_size * 4) as u64;
                let probs = self.gpu().storage("probabilities", bytes)?;
                Some((Sampler::new(&opts.sampling), probs))
            },
            prompt_ids: ids,
            generated: Vec::new(),
            text: String::new(),
            step_logits: opts.keep_logits.then(Vec::new),
            greedy,
            finished: None,
            error: None,
            timings,
        };
        if opts.max_new_tokens == 0 {
            seq.finished = Some(FinishReason::Length);
            return Ok((seq, None));
        }
        let token = self.choose(&mut seq).await?;
        Ok((seq, Some(token)))
    }

    /// Moves every unfinished sequence of `seqs` forward by one token, all in one batched
    /// decode step (see [`step_batch`](Self::step_batch)); returns what each chose (`None` for
    /// those already finished). A sequence decodes to the same tokens alone or in any batch
    /// (checked on lavapipe; see `step_batch` for the caveat on other drivers).
    ///
    /// An error of the step itself (the GPU) is returned, and no sequence has advanced. A
    /// sequence whose next token cannot be chosen (its logits are all NaN, say) ends as
    /// [`FinishReason::Failed`] and the others go on.
    pub fn advance(
        &self,
        batch: &mut DecodeBatch,
        seqs: &mut [&mut Sequence],
    ) -> Result<Vec<Option<Token>>> {
        self.gpu()
            .block_on("advance", self.advance_async(batch, seqs))
    }

    /// [`advance`](Self::advance), awaitable.
    pub async fn advance_async(
        &self,
        batch: &mut DecodeBatch,
        seqs: &mut [&mut Sequence],
    ) -> Result<Vec<Option<Token>>> {
        let live: Vec<usize> = (0..seqs.len())
            .filter(|&i| seqs[i].finished.is_none())
            .collect();
        if live.len() <= 1 {
            // No batched step: drop the batch's bind groups (and the sessions they hold).
            batch.release();
        }
        let tokens: Vec<u32> = live
            .iter()
            .map(|&i| {
                *seqs[i]
                    .generated
                    .last()
                    .expect("a started sequence has a token")
            })
            .collect();
        let greedy = match live[..] {
            [] => Vec::new(),
            [i] => {
                let mut out = vec![None; seqs.len()];
                out[i] = self.advance_one(seqs[i]).await?;
                return Ok(out);
            }
            _ => {
                let mut sessions: Vec<&mut Session> = seqs
                    .iter_mut()
                    .filter(|s| s.finished.is_none())
                    .map(|s| &mut s.session)
                    .collect();
                self.step_batch_async(batch, &mut sessions, &tokens).await?
            }
        };
        let mut out = vec![None; seqs.len()];
        for (&i, g) in live.iter().zip(greedy) {
            seqs[i].greedy = g;
            out[i] = self.choose_or_fail(seqs[i]).await;
        }
        Ok(out)
    }

    /// Moves one sequence forward by a token with its own cached single-row step (no batch
    /// scratch needed); `None` when it had already finished.
    pub(crate) async fn advance_one(&self, s: &mut Sequence) -> Result<Option<Token>> {
        if s.finished.is_some() {
            return Ok(None);
        }
        let last = *s.generated.last().expect("a started sequence has a token");
        s.greedy = self.step_async(&mut s.session, last).await?;
        Ok(self.choose_or_fail(s).await)
    }

    /// [`choose`](Self::choose), or the sequence ends as failed, saying why.
    async fn choose_or_fail(&self, s: &mut Sequence) -> Option<Token> {
        match self.choose(s).await {
            Ok(t) => Some(t),
            Err(e) => {
                log::warn!("a sequence failed: {e}");
                s.error = Some(e.to_string());
                s.finished = Some(FinishReason::Failed);
                None
            }
        }
    }

    /// Picks the next token of `s` from its session's logits, appends it, and ends the sequence
    /// at `<eos>` or its length limit.
    async fn choose(&self, s: &mut Sequence) -> Result<Token> {
        let vocab = self.config().text.vocab_size;
        if s.step_logits.is_some() {
            let logits = self.logits_async(&s.session).await?;
            s.step_logits.get_or_insert_default().extend(logits);
        }
        let id = match s.sampler.as_mut() {
            None => s.greedy,
            Some((sampler, probs)) => {
                let gpu = self.gpu();
                let mut rec = gpu.recorder();
                let (x, y) = (
                    View::new(&s.session.logits, 1, vocab),
                    View::new(probs, 1, vocab),
                );
                softmax(&mut rec, x, y, s.opts.sampling.temperature)?;
                rec.submit("the sampling softmax")?;
                let probs = gpu.read_f32_async(probs, 0, vocab).await?;
                sampler.sample(&probs).ok_or_else(|| {
                    Error::invalid("no token has a finite probability (are the logits NaN?)")
                })?
            }
        };
        s.generated.push(id);
        let now = self.tokenizer()?.decode(&s.generated, true)?;
        let piece = now.strip_prefix(s.text.as_str()).unwrap_or("").to_string();
        s.text = now;
        if s.opts.stop_at_eos && id == self.config().eos_token_id {
            s.finished = Some(FinishReason::Stop);
        } else if s.generated.len() >= s.opts.max_new_tokens {
            s.finished = Some(FinishReason::Length);
        }
        Ok(Token { id, piece })
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
