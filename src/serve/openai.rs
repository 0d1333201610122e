//! OpenAI's chat-completions request, read from untrusted bytes into what the model needs: one
//! image, one prompt, the sampling settings. Every way a request can be wrong is an
//! [`ApiError`] with a 4xx status, never a panic (the parsers here are property-tested on
//! arbitrary bytes in `tests/fuzz.rs`).

use base64::Engine as _;
use serde::Deserialize;

use crate::chat::{Message, Part as ChatPart};

use crate::generation::GenerateOptions;
use crate::sampling::SamplingOptions;

/// An error as OpenAI writes them: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub param: Option<&'static str>,
}

impl ApiError {
    pub fn bad(param: Option<&'static str>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            param,
        }
    }
    pub fn status(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
        }
    }
    /// OpenAI's error type for the status.
    pub fn kind(&self) -> &'static str {
        match self.status {
            400 | 404 | 405 | 408 | 413 | 422 => "invalid_request_error",
            429 | 503 => "server_busy",
            _ => "server_error",
        }
    }
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": null,
        }})
    }
}

/// The parts of OpenAI's request this server reads. Other fields are accepted and ignored when
/// they cannot change the answer (`frequency_penalty: 0`, `user`, ...).
#[derive(Deserialize)]
struct RawRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<RawMessage>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    /// Not OpenAI's, but llama.cpp's and vLLM's.
    #[serde(default)]
    top_k: Option<u64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    n: Option<u64>,
    /// Up to 4 strings; the answer ends before the first that appears.
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

/// `{"url": "data:..."}` as OpenAI documents it, or the bare string some clients send.
#[derive(Deserialize)]
#[serde(untagged)]
enum ImageUrl {
    Object { url: String },
    Plain(String),
}

impl ImageUrl {
    fn url(&self) -> &str {
        match self {
            ImageUrl::Object { url } | ImageUrl::Plain(url) => url,
        }
    }
}

/// Where a request's image comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageSource {
    /// The bytes of a `data:` URI.
    Bytes(Vec<u8>),
    /// A local file (`file://` URL or path), read only when the server allows it.
    Path(std::path::PathBuf),
}

/// A chat-completions request, checked.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub model: Option<String>,
    /// Every message, each image a part (Gemma 3's chat template takes them all).
    pub conversation: Vec<Message>,
    /// The images of the conversation, in order.
    pub images: Vec<ImageSource>,
    /// `None`: up to the server's default or the context's end.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingOptions,
    pub stream: bool,
    /// OpenAI's `stop` strings (none: the model's `<eos>` only).
    pub stop: Vec<String>,
    /// `logprobs: true`: `Some(top_logprobs)`.
    pub logprobs: Option<usize>,
}

impl ChatRequest {
    /// Parses and checks a request body.
    pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
        let de = &mut serde_json::Deserializer::from_slice(body);
        let raw: RawRequest = serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            let inner = e.into_inner();
            let what = if inner.is_syntax() || inner.is_eof() {
                "malformed JSON"
            } else {
                "unexpected request shape"
            };
            ApiError::bad(None, format!("{what} at {at}: {inner}"))
        })?;
        raw.check()
    }
}

impl RawRequest {
    fn check(self) -> Result<ChatRequest, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad(Some("n"), "only n = 1 is supported"));
        }
        let logprobs = self.logprobs()?;
        let stop = self.stop_strings()?;
        let sampling = self.sampling()?;
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if max_tokens == Some(0) {
            return Err(ApiError::bad(
                Some("max_tokens"),
                "max_tokens must be at least 1",
            ));
        }
        let (conversation, images) = self.conversation()?;
        Ok(ChatRequest {
            conversation,
            images,
            max_tokens: max_tokens.map(|n| n.min(usize::MAX as u64) as usize),
            sampling,
            stream: self.stream.unwrap_or(false),
            stop,
            logprobs,
            model: self.model,
        })
    }

    /// `Some(top_logprobs)` when `logprobs` is true; OpenAI's rules: at most 20 alternatives,
    /// and `top_logprobs` only with `logprobs`.
    fn logprobs(&self) -> Result<Option<usize>, ApiError> {
        match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (_, Some(n)) if n > 20 => Err(ApiError::bad(
                Some("top_logprobs"),
                format!("top_logprobs must be between 0 and 20, got {n}"),
            )),
            (false, Some(_)) => Err(ApiError::bad(
                Some("top_logprobs"),
                "top_logprobs needs logprobs: true",
            )),
            (true, n) => Ok(Some(n.unwrap_or(0) as usize)),
            (false, None) => Ok(None),
        }
    }

    /// `stop` as OpenAI takes it: one string or up to 4, none empty.
    fn stop_strings(&self) -> Result<Vec<String>, ApiError> {
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 4 || stop.iter().any(String::is_empty) {
            return Err(ApiError::bad(
                Some("stop"),
                "stop takes a string or a list of up to 4 non-empty strings",
            ));
        }
        Ok(stop)
    }

    /// The sampling options, checked by the library's one check, and OpenAI's temperature
    /// range (at most 2).
    fn sampling(&self) -> Result<SamplingOptions, ApiError> {
        let temperature = self.temperature.unwrap_or(0.0);
        if temperature > 2.0 {
            return Err(ApiError::bad(
                Some("temperature"),
                format!("temperature must be between 0 and 2, got {temperature}"),
            ));
        }
        let seed = match self.seed {
            Some(s) if s < 0 => {
                return Err(ApiError::bad(Some("seed"), "seed must be >= 0"));
            }
            s => s.unwrap_or(0) as u64,
        };
        let sampling = SamplingOptions {
            temperature: temperature as f32,
            top_p: self.top_p.unwrap_or(1.0) as f32,
            top_k: self.top_k.unwrap_or(0).min(usize::MAX as u64) as usize,
            seed,
        };
        match sampling.check() {
            Ok(()) => Ok(sampling),
            Err(e) => Err(ApiError::bad(
                Some(e.option),
                format!("{} {}", e.option, e.message),
            )),
        }
    }

    /// The messages as the chat template takes them, and their images in order.
    fn conversation(&self) -> Result<(Vec<Message>, Vec<ImageSource>), ApiError> {
        let mut images = Vec::new();
        let mut messages = Vec::with_capacity(self.messages.len());
        for m in &self.messages {
            let content = match &m.content {
                None => Vec::new(),
                Some(Content::Text(text)) => vec![ChatPart::Text { text: text.clone() }],
                Some(Content::Parts(parts)) => (parts.iter())
                    .map(|part| match part {
                        Part::Text { text } => Ok(ChatPart::Text { text: text.clone() }),
                        Part::ImageUrl { image_url } => {
                            images.push(image_source(image_url.url())?);
                            Ok(ChatPart::Image)
                        }
                    })
                    .collect::<Result<_, ApiError>>()?,
            };
            let role = m.role.clone();
            messages.push(Message { role, content });
        }
        Ok((messages, images))
    }
}

impl ChatRequest {
    /// PaliGemma's input: the last user message's text (trimmed, not empty) and its one image.
    pub fn paligemma_input(&self) -> Result<(String, &ImageSource), ApiError> {
        let bad = |m: String| Err(ApiError::bad(Some("messages"), m));
        let Some(last) = self.conversation.iter().rposition(|m| m.role == "user") else {
            return bad("no user message".into());
        };
        let is_image = |p: &&ChatPart| matches!(p, ChatPart::Image);
        let parts = |m: &Message| m.content.iter().filter(is_image).count();
        let before: usize = self.conversation[..last].iter().map(parts).sum();
        let user = &self.conversation[last];
        let text: String = (user.content.iter())
            .filter_map(|p| match p {
                ChatPart::Text { text } => Some(text.as_str()),
                ChatPart::Image => None,
            })
            .collect();
        match parts(user) {
            1 => {}
            0 => {
                return bad(
                    "the user message has no image: PaliGemma answers about one image \
                     (an image_url part with a data: URI)"
                        .into(),
                );
            }
            n => return bad(format!("{n} images in one message; PaliGemma takes one")),
        }
        let prompt = text.trim().to_string();
        if prompt.is_empty() {
            return bad("the prompt text is empty".into());
        }
        Ok((prompt, &self.images[before]))
    }
}

/// Reads an `image_url`: a `data:[mime];base64,...` URI, or a local path (`file://...` or
/// absolute). Remote URLs are refused: the server fetches nothing.
pub fn image_source(url: &str) -> Result<ImageSource, ApiError> {
    let param = Some("messages");
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| ApiError::bad(param, "a data: URI needs a comma before its data"))?;
        if !meta.ends_with(";base64") {
            return Err(ApiError::bad(param, "the image data: URI must be base64"));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| ApiError::bad(param, format!("the image's base64 is invalid: {e}")))?;
        return Ok(ImageSource::Bytes(bytes));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(ApiError::bad(
            param,
            "remote image URLs are not fetched; send the image as a data: URI",
        ));
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    if !path.starts_with('/') {
        return Err(ApiError::bad(
            param,
            "an image_url must be a data: URI (or, when the server allows, an absolute path)",
        ));
    }
    Ok(ImageSource::Path(path.into()))
}

/// Decodes image bytes, refusing what is not an image, or is wider or taller than
/// `max_side` pixels (decoders allocate the whole image first).
pub fn decode_image(bytes: &[u8], max_side: u32) -> Result<image::DynamicImage, ApiError> {
    let bad = |e: &dyn std::fmt::Display| {
        ApiError::bad(Some("messages"), format!("the image cannot be read: {e}"))
    };
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(&e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    reader.limits(limits);
    reader.decode().map_err(|e| bad(&e))
}

/// The generation options of a checked request, given the prompt's length and the model's
/// context: `max_tokens` must leave the prompt room.
pub fn generate_options(
    req: &ChatRequest,
    prompt_len: usize,
    context: usize,
    default_max: usize,
) -> Result<GenerateOptions, ApiError> {
    let room = context.saturating_sub(prompt_len);
    if room == 0 {
        return Err(ApiError::bad(
            Some("messages"),
            format!("the prompt is {prompt_len} tokens, the model's context {context}"),
        ));
    }
    let max_new_tokens = match req.max_tokens {
        Some(n) if n > room => {
            return Err(ApiError::bad(
                Some("max_tokens"),
                format!(
                    "max_tokens {n} + the prompt's {prompt_len} tokens exceed the model's \
                     context of {context}"
                ),
            ));
        }
        Some(n) => n,
        None => default_max.min(room),
    };
    Ok(GenerateOptions {
        max_new_tokens,
        sampling: req.sampling.clone(),
        stop_at_eos: true,
        keep_logits: false,
        logprobs: req.logprobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request parsed and checked as PaliGemma's.
    fn req(json: &str) -> Result<ChatRequest, ApiError> {
        let r = ChatRequest::parse(json.as_bytes())?;
        r.paligemma_input()?;
        Ok(r)
    }

    const PNG_1X1: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==";

    #[test]
    fn a_good_request() {
        let r = req(&format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":[{{"type":"text","text":"caption en"}},{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{PNG_1X1}"}}}}]}}],"max_tokens":5,"temperature":0.5,"seed":3,"stream":true,"frequency_penalty":0}}"#
        ))
        .unwrap();
        let (prompt, image) = r.paligemma_input().unwrap();
        assert_eq!(prompt, "caption en");
        assert_eq!(r.max_tokens, Some(5));
        assert!(r.stream);
        assert_eq!(r.sampling.seed, 3);
        let ImageSource::Bytes(b) = image else {
            panic!()
        };
        let img = decode_image(b, 16384).unwrap();
        assert_eq!((img.width(), img.height()), (1, 1));
    }

    #[test]
    fn bad_requests_name_their_fault() {
        let img = format!(
            r#"{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{PNG_1X1}"}}}}"#
        );
        let msg = |extra: &str| {
            format!(
                r#"{{"messages":[{{"role":"user","content":[{{"type":"text","text":"caption en"}},{img}]}}]{extra}}}"#
            )
        };
        for (body, want) in [
            ("{".to_string(), "malformed JSON"),
            ("[]".to_string(), "unexpected request shape"),
            (r#"{"messages":[]}"#.to_string(), "no user message"),
            (
                r#"{"messages":[{"role":"user","content":"hi"}]}"#.to_string(),
                "no image",
            ),
            (msg(r#","temperature":3"#), "temperature"),
            (msg(r#","temperature":"hot""#), "unexpected request shape"),
            (msg(r#","top_p":0"#), "top_p"),
            (msg(r#","max_tokens":0"#), "max_tokens"),
            (msg(r#","max_tokens":-1"#), "unexpected request shape"),
            (msg(r#","seed":-4"#), "seed"),
            (msg(r#","n":2"#), "n = 1"),
            (
                msg(r#","logprobs":true,"top_logprobs":21"#),
                "between 0 and 20",
            ),
            (msg(r#","top_logprobs":2"#), "needs logprobs"),
        ] {
            let e = req(&body).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(want), "{body}: {}", e.message);
        }
        for (url, want) in [
            ("data:image/png;base64,@@@", "base64"),
            ("data:image/png,abc", "must be base64"),
            ("data:nocomma", "comma"),
            ("https://example.com/cat.jpg", "not fetched"),
            ("cat.jpg", "data: URI"),
        ] {
            assert!(
                image_source(url).unwrap_err().message.contains(want),
                "{url}"
            );
        }
        let e = decode_image(b"GIF89a not really", 16384).unwrap_err();
        assert!(e.message.contains("cannot be read"), "{}", e.message);
    }
}
