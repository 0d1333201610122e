//! A request's answer, once queued: whole (one JSON body when the engine is done) or streamed
//! (server-sent events, token by token), with OpenAI's usage and logprobs and the PaliGemma
//! extension (ids, objects, masks).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::engine::{Event, Outcome};
use super::metrics::Metrics;
use super::openai::ApiError;
use super::{Tokens, log_request};
use crate::detection::parse_answer;
use crate::logprobs::Logprobs;
use crate::segmentation::SegDecoder;

pub(super) struct Meta {
    pub id: String,
    pub model: String,
    pub created: u64,
    /// The image's size when the answer holds boxes.
    pub detect: Option<(u32, u32)>,
    pub decoder: Option<Arc<SegDecoder>>,
    /// Whether choices carry `logprobs`.
    pub logprobs: bool,
    pub metrics: Arc<Metrics>,
    /// When the request arrived, and when its latest token did.
    pub arrived: Instant,
    pub last_token: Mutex<Option<Instant>>,
}

impl Meta {
    /// Times a token: the first from the request's arrival, the others from the one before.
    fn token_arrived(&self) {
        let now = Instant::now();
        let Ok(mut last) = self.last_token.lock() else {
            return;
        };
        match last.replace(now) {
            None => (self.metrics.time_to_first_token).observe((now - self.arrived).as_secs_f64()),
            Some(t) => self.metrics.time_per_token.observe((now - t).as_secs_f64()),
        }
    }

    /// Counts a finished answer's tokens.
    fn done(&self, o: &Outcome) {
        self.metrics.prompt_tokens.inc_by(o.prompt_tokens as u64);
        self.metrics
            .generated_tokens
            .inc_by(o.generated_ids.len() as u64);
    }
}

/// A choice's `logprobs`: OpenAI's `{"content": [...]}` when asked for, else null.
fn logprobs_json(meta: &Meta, logprobs: &[Logprobs]) -> Value {
    match meta.logprobs {
        true => json!({"content": logprobs}),
        false => Value::Null,
    }
}

/// The usage counts and the PaliGemma extension of a finished answer: its ids and, when it
/// holds boxes, its objects (masks decoded on a blocking thread: they are GPU work).
pub(super) async fn usage_and_extension(
    meta: &Meta,
    o: &Outcome,
) -> Result<(Value, Value), ApiError> {
    let usage = json!({
        "prompt_tokens": o.prompt_tokens,
        "completion_tokens": o.generated_ids.len(),
        "total_tokens": o.prompt_tokens + o.generated_ids.len(),
    });
    let mut ext = json!({"generated_ids": o.generated_ids});
    if let Some((w, h)) = meta.detect {
        let answer = parse_answer(&o.text, w, h);
        let (detections, decoder) = (answer.detections.clone(), meta.decoder.clone());
        let masks = tokio::task::spawn_blocking(move || {
            crate::segmentation::masks(&detections, decoder.as_deref())
        })
        .await
        .map_err(|e| ApiError::status(500, format!("decoding masks: {e}")))?
        .map_err(|e| ApiError::status(500, format!("decoding masks: {e}")))?;
        ext["detections"] = crate::segmentation::objects_json(&answer.detections, &masks);
        ext["skipped_groups"] = json!(answer.skipped);
    }
    Ok((usage, ext))
}

/// Waits for the whole answer.
pub(super) async fn whole(
    meta: Arc<Meta>,
    mut rx: UnboundedReceiver<Event>,
) -> Result<Response, ApiError> {
    let mut logprobs = Vec::new();
    loop {
        match rx.recv().await {
            Some(Event::Token(piece)) => {
                meta.token_arrived();
                logprobs.extend(piece.logprobs);
            }
            Some(Event::Done(o)) => {
                meta.done(&o);
                let (usage, ext) = usage_and_extension(&meta, &o).await?;
                let tokens = Tokens(o.generated_ids.len());
                let mut response = axum::Json(json!({
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": meta.model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": o.text},
                        "logprobs": logprobs_json(&meta, &logprobs),
                        "finish_reason": finish_reason(o.reason),
                    }],
                    "usage": usage,
                    "paligemma": ext,
                }))
                .into_response();
                response.extensions_mut().insert(tokens);
                return Ok(response);
            }
            Some(Event::Failed { status, message }) => {
                return Err(ApiError::status(status, message));
            }
            None => return Err(ApiError::status(500, "the engine stopped")),
        }
    }
}

fn finish_reason(r: crate::generation::FinishReason) -> &'static str {
    match r {
        crate::generation::FinishReason::Stop => "stop",
        crate::generation::FinishReason::Length => "length",
        crate::generation::FinishReason::Cancelled => "cancelled",
        crate::generation::FinishReason::Failed => "error",
    }
}

/// One `chat.completion.chunk`, the last with usage and the PaliGemma extension (`extra`).
fn chunk(meta: &Meta, delta: Value, finish: Option<&str>, extra: Option<(Value, Value)>) -> Value {
    let mut c = json!({
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    if let Some((usage, ext)) = extra {
        c["usage"] = usage;
        c["paligemma"] = ext;
    }
    c
}

/// Server-sent events, token by token: OpenAI's `chat.completion.chunk`s, the last with the
/// finish reason, usage and the PaliGemma extension, then `[DONE]`. The stream ends early
/// with an `error` object (with the status a whole answer would have had) if the GPU fails or
/// is lost. Dropping it (the client went away) drops the receiver, and the engine frees the
/// sequence; such a request is counted with status 499, as nginx logs it.
pub(super) fn stream(meta: Arc<Meta>, rx: UnboundedReceiver<Event>) -> Response {
    let first = Arc::new(AtomicBool::new(true));
    // Whether the engine ended the answer (a finish or an error), rather than vanishing.
    let ended = Arc::new(AtomicBool::new(false));
    let ended_in = ended.clone();
    let vanished = Vanished(meta.clone(), ended.clone());
    let (metrics, arrived) = (meta.metrics.clone(), meta.arrived);
    let events = UnboundedReceiverStream::new(rx).then(move |e| {
        let (meta, first, ended) = (meta.clone(), first.clone(), ended_in.clone());
        let _counted_when_dropped = &vanished;
        async move {
            let data = match e {
                Event::Token(t) => {
                    meta.token_arrived();
                    let mut delta = json!({"content": t.text});
                    if first.swap(false, Ordering::Relaxed) {
                        delta["role"] = json!("assistant");
                    }
                    let mut c = chunk(&meta, delta, None, None);
                    c["choices"][0]["logprobs"] = logprobs_json(&meta, &t.logprobs);
                    c
                }
                Event::Done(o) => {
                    ended.store(true, Ordering::Relaxed);
                    meta.done(&o);
                    match usage_and_extension(&meta, &o).await {
                        Ok(extra) => {
                            log_request(&meta.metrics, 200, o.generated_ids.len(), meta.arrived);
                            let finish = Some(finish_reason(o.reason));
                            chunk(&meta, json!({}), finish, Some(extra))
                        }
                        Err(e) => {
                            log_request(&meta.metrics, e.status, 0, meta.arrived);
                            e.body()
                        }
                    }
                }
                Event::Failed { status, message } => {
                    ended.store(true, Ordering::Relaxed);
                    log_request(&meta.metrics, status, 0, meta.arrived);
                    ApiError::status(status, message).body()
                }
            };
            SseEvent::default().data(data.to_string())
        }
    });
    // The engine drops its sender after the last event; if it went without one (it
    // stopped), the client is told rather than handed a truncated answer as complete.
    let mut tail: Option<std::vec::IntoIter<SseEvent>> = None;
    let end = std::iter::from_fn(move || {
        tail.get_or_insert_with(|| {
            let mut last = Vec::new();
            if !ended.swap(true, Ordering::Relaxed) {
                log_request(&metrics, 500, 0, arrived);
                let e = ApiError::status(500, "the engine stopped before the answer was complete");
                last.push(SseEvent::default().data(e.body().to_string()));
            }
            last.push(SseEvent::default().data("[DONE]"));
            last.into_iter()
        })
        .next()
    });
    let events = events
        .chain(tokio_stream::iter(end))
        .map(Ok::<_, std::convert::Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Counts a stream the client dropped before its end (the engine cancels its generation).
struct Vanished(Arc<Meta>, Arc<AtomicBool>);

impl Drop for Vanished {
    fn drop(&mut self) {
        if !self.1.load(Ordering::Relaxed) {
            log_request(&self.0.metrics, 499, 0, self.0.arrived);
        }
    }
}
