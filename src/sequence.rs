//! A generation in progress: a [`Sequence`] is one image and prompt being answered (its
//! decoder state on the GPU, which chooses its tokens, and the tokens so far).
//! [`PaliGemma::advance`](crate::PaliGemma::advance) moves any number of them forward by a
//! token in one decode step; the [`Scheduler`](crate::Scheduler)
//! keeps many in flight, starting new ones as others finish (continuous batching).

use crate::error::{Error, Result};
use crate::generation::{FinishReason, GenerateOptions, Generation, Timings, Token};
use crate::gpu::Gpu;
use crate::logprobs::{Logprobs, logprobs};
use crate::model::state::DecoderState;
use crate::tokenizer::PromptTokenizer;

/// What choosing a token needs of the model.
pub(crate) struct Chooser<'a> {
    pub gpu: &'a Gpu,
    pub tokenizer: &'a PromptTokenizer,
    /// The ids that end an answer (`<eos>`, and Gemma 3's `<end_of_turn>`).
    pub stops: &'a [u32],
}

/// One generation in progress.
pub struct Sequence {
    state: DecoderState,
    opts: GenerateOptions,
    prompt_ids: Vec<u32>,
    generated: Vec<u32>,
    text: String,
    /// The logits each token was chosen from, when `keep_logits`.
    step_logits: Option<Vec<f32>>,
    /// Each token's log-probabilities, when `logprobs`.
    logprobs: Option<Vec<Logprobs>>,
    /// The GPU's choice from the state's latest logits (argmax or draw).
    chosen: u32,
    finished: Option<FinishReason>,
    /// Why it failed, when it did.
    error: Option<String>,
    pub(crate) timings: Timings,
}

impl Sequence {
    /// A sequence whose prompt `prompt_ids` has been run into `state` (which chose `chosen`
    /// as `opts.sampling` says).
    pub(crate) fn new(
        state: DecoderState,
        prompt_ids: Vec<u32>,
        chosen: u32,
        opts: &GenerateOptions,
    ) -> Sequence {
        Sequence {
            state,
            opts: opts.clone(),
            prompt_ids,
            generated: Vec::new(),
            text: String::new(),
            step_logits: opts.keep_logits.then(Vec::new),
            logprobs: opts.logprobs.map(|_| Vec::new()),
            chosen,
            finished: None,
            error: None,
            timings: Timings::default(),
        }
    }

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
    /// Stops the sequence; [`PaliGemma::advance`](crate::PaliGemma::advance) leaves it alone
    /// from now on.
    pub fn cancel(&mut self) {
        self.finished.get_or_insert(FinishReason::Cancelled);
    }
    /// The GPU memory the sequence holds (its KV cache and logits), in bytes.
    pub fn gpu_bytes(&self) -> u64 {
        self.state.gpu_bytes()
    }

    /// The result, `decode_ms` having been spent decoding after the first token.
    pub fn into_generation(self, decode_ms: f64) -> Generation {
        let mut timings = self.timings;
        timings.decode_ms = decode_ms;
        if self.generated.len() > 1 {
            timings.decode_tokens_per_s = (self.generated.len() - 1) as f64 / (decode_ms / 1e3);
        }
        Generation {
            prompt_ids: self.prompt_ids,
            generated_ids: self.generated,
            text: self.text,
            step_logits: self.step_logits,
            logprobs: self.logprobs,
            finish_reason: self.finished.unwrap_or(FinishReason::Length),
            timings,
        }
    }

    /// The first token, chosen from the prefill's logits (none when `max_new_tokens` is 0).
    pub(crate) async fn first_token(&mut self, c: &Chooser<'_>) -> Result<Option<Token>> {
        if self.opts.max_new_tokens == 0 {
            self.finished = Some(FinishReason::Length);
            return Ok(None);
        }
        self.choose(c).await.map(Some)
    }

    /// [`choose`](Self::choose), or the sequence ends as failed, saying why.
    pub(crate) async fn choose_or_fail(&mut self, c: &Chooser<'_>) -> Option<Token> {
        match self.choose(c).await {
            Ok(t) => Some(t),
            Err(e) => {
                log::warn!("a sequence failed: {e}");
                self.error = Some(e.to_string());
                self.finished = Some(FinishReason::Failed);
                None
            }
        }
    }

    /// Takes the token the GPU chose from the state's logits (its argmax, or a draw),
    /// appends it, and ends the sequence at `<eos>` or its length.
    async fn choose(&mut self, c: &Chooser<'_>) -> Result<Token> {
        let vocab = (self.state.logits.size() / 4) as usize;
        let logits = match self.step_logits.is_some() || self.logprobs.is_some() {
            true => Some(c.gpu.read_f32_async(&self.state.logits, 0, vocab).await?),
            false => None,
        };
        let id = self.chosen;
        if id == u32::MAX {
            return Err(Error::invalid(
                "no token has a finite logit to sample from (are the logits NaN?)",
            ));
        }
        let logprobs = match (&logits, self.opts.logprobs) {
            (Some(logits), Some(top)) => Some(logprobs(logits, id, top, c.tokenizer)),
            _ => None,
        };
        if let (Some(all), Some(l)) = (self.logprobs.as_mut(), &logprobs) {
            all.push(l.clone());
        }
        if let (Some(all), Some(logits)) = (self.step_logits.as_mut(), logits) {
            all.extend(logits);
        }
        self.generated.push(id);
        let now = c.tokenizer.decode(&self.generated, true)?;
        let piece = now
            .strip_prefix(self.text.as_str())
            .unwrap_or("")
            .to_string();
        self.text = now;
        if self.opts.stop_at_eos && c.stops.contains(&id) {
            self.finished = Some(FinishReason::Stop);
        } else if self.generated.len() >= self.opts.max_new_tokens {
            self.finished = Some(FinishReason::Length);
        }
        Ok(Token {
            id,
            piece,
            logprobs,
        })
    }

    /// The token this sequence's next step starts from (its last); `None` once finished.
    pub(crate) fn next_input(&self) -> Option<u32> {
        match self.finished {
            Some(_) => None,
            None => self.generated.last().copied(),
        }
    }

    /// The decoder state.
    pub(crate) fn state_mut(&mut self) -> &mut DecoderState {
        &mut self.state
    }

    /// Whether the GPU may choose this sequence's tokens ahead of the host: no logits to read
    /// at each step (`keep_logits`, `logprobs`), so the step's choice (argmax or draw, both
    /// on the GPU) is all the host needs ([`PaliGemma::decode_ahead`](crate::PaliGemma)).
    pub(crate) fn may_run_ahead(&self) -> bool {
        self.step_logits.is_none() && self.logprobs.is_none()
    }

    /// Whether a step past the one submitted may be useful: unfinished, below its length, and
    /// the state has room for it.
    pub(crate) fn wants_two_more(&self) -> bool {
        self.finished.is_none()
            && self.generated.len() + 1 < self.opts.max_new_tokens
            && self.state.len < self.state.capacity
    }

    /// Takes the step's choice for the next token.
    pub(crate) fn set_chosen(&mut self, id: u32) {
        self.chosen = id;
    }
}
