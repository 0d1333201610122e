//! What a generation takes and gives: the image input, the prompt, the options, the result.

use crate::logprobs::Logprobs;
use std::borrow::Cow;

use crate::sampling::SamplingOptions;

/// An image to answer about, in any of the forms a caller may hold it. Borrowed or owned
/// (`ImageInput<'static>`, as a queued request holds it).
#[derive(Clone, Debug)]
pub enum ImageInput<'a> {
    /// A decoded image, resized and normalised on the CPU as transformers' processor does.
    Image(Cow<'a, image::DynamicImage>),
    /// Pixels already preprocessed, `[3, S, S]` f32 as
    /// [`preprocess`](crate::preprocess::preprocess) makes them (a server preprocesses on its
    /// request threads and leaves only the GPU work to the thread that drives the batch).
    Pixels(Cow<'a, [f32]>),
    /// A texture on the model's device (a rendered frame), preprocessed on the GPU to the same
    /// bits as the CPU path: see [`PaliGemma::encode`](crate::PaliGemma::encode).
    Texture(wgpu::Texture),
}

impl ImageInput<'_> {
    /// The input with nothing borrowed, for a queue.
    pub fn into_owned(self) -> ImageInput<'static> {
        match self {
            ImageInput::Image(i) => ImageInput::Image(Cow::Owned(i.into_owned())),
            ImageInput::Pixels(p) => ImageInput::Pixels(Cow::Owned(p.into_owned())),
            ImageInput::Texture(t) => ImageInput::Texture(t),
        }
    }

    /// Preprocessed pixels from a slice.
    pub fn pixels(pixels: &[f32]) -> ImageInput<'_> {
        ImageInput::Pixels(Cow::Borrowed(pixels))
    }
}

impl<'a> From<&'a image::DynamicImage> for ImageInput<'a> {
    fn from(image: &'a image::DynamicImage) -> Self {
        ImageInput::Image(Cow::Borrowed(image))
    }
}

impl From<image::DynamicImage> for ImageInput<'static> {
    fn from(image: image::DynamicImage) -> Self {
        ImageInput::Image(Cow::Owned(image))
    }
}

impl From<&wgpu::Texture> for ImageInput<'static> {
    fn from(texture: &wgpu::Texture) -> Self {
        ImageInput::Texture(texture.clone())
    }
}

/// The prompt: text, or ids already tokenized (by
/// [`PaliGemma::prompt_ids`](crate::PaliGemma::prompt_ids): a server checks a request's
/// length with them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

impl From<&str> for Prompt {
    fn from(text: &str) -> Self {
        Prompt::Text(text.to_string())
    }
}

impl From<&String> for Prompt {
    fn from(text: &String) -> Self {
        Prompt::Text(text.clone())
    }
}

impl From<String> for Prompt {
    fn from(text: String) -> Self {
        Prompt::Text(text)
    }
}

impl From<Vec<u32>> for Prompt {
    fn from(ids: Vec<u32>) -> Self {
        Prompt::Ids(ids)
    }
}

/// How to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
    /// Stop when the model emits `<eos>` (on by default).
    pub stop_at_eos: bool,
    /// Keep the logits each token was chosen from (for `--dump-logits` and parity checks).
    pub keep_logits: bool,
    /// `Some(n)`: each token comes with its log-probability and the `n` likeliest tokens'
    /// ([`Logprobs`]; reads the logits back, a vocabulary's worth of bytes per token).
    pub logprobs: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            sampling: SamplingOptions::default(),
            stop_at_eos: true,
            keep_logits: false,
            logprobs: None,
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

/// A finished generation.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The full prompt, image placeholders included.
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    /// The generated text, special tokens (`<eos>`) removed.
    pub text: String,
    /// [generated_ids.len(), vocab] when `keep_logits` was set.
    pub step_logits: Option<Vec<f32>>,
    /// Each generated token's log-probabilities, when `logprobs` was set.
    pub logprobs: Option<Vec<Logprobs>>,
    pub finish_reason: FinishReason,
    pub timings: Timings,
}

/// Why a generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model emitted `<eos>`.
    Stop,
    /// `max_new_tokens` were generated.
    Length,
    /// The caller stopped it (`Sequence::cancel`, a scheduler's `cancel`, or `false` from
    /// `generate`'s callback).
    Cancelled,
    /// Choosing its next token failed (`Sequence::error` says why); the others of its batch
    /// went on.
    Failed,
}

/// One token a sequence chose, and the text it added.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub id: u32,
    /// What the token adds to the decoded text (empty for `<eos>`; several tokens may build
    /// one character).
    pub piece: String,
    /// Its log-probability and the likeliest alternatives', when asked for
    /// ([`GenerateOptions::logprobs`]).
    pub logprobs: Option<Logprobs>,
}

/// Milliseconds since `t`.
pub(crate) fn elapsed_ms(t: web_time::Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
