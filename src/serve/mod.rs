//! An OpenAI-compatible HTTP server (feature `serve`): `POST /v1/chat/completions` (with
//! images as `image_url` parts, streaming as server-sent events), `GET /v1/models`,
//! `GET /health`. Requests are batched continuously by the [`engine`]. `detect` and `segment`
//! answers carry their objects (boxes in pixels; masks with a [`SegDecoder`]) in the
//! response's `paligemma` extension, in the shape the command line prints.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use paligemma::serve::{ServerOptions, router};
//! let model = Arc::new(paligemma::PaliGemma::load("pg".as_ref(), &Default::default()).unwrap());
//! let app = router(model, ServerOptions::default())?; // an axum Router: mount it, or serve it
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

pub mod engine;
pub mod openai;
mod stop;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::detection::{answers_with_boxes, parse_answer};
use crate::logprobs::Logprobs;
use crate::paligemma::PaliGemma;
use crate::segmentation::SegDecoder;
use engine::{Engine, EngineOptions, Event, Job, Outcome};
use openai::{ApiError, ChatRequest, ImageSource, decode_image, generate_options};

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The id `GET /v1/models` lists (requests may name any model: there is one).
    pub model_name: String,
    /// Largest request body, in bytes (images come base64-encoded inside it).
    pub max_body_bytes: usize,
    /// Widest or tallest image accepted, in pixels.
    pub max_image_side: u32,
    /// `max_tokens` when a request gives none (capped by the context).
    pub default_max_tokens: usize,
    /// Accept `image_url`s naming local files (off: a network client could read the server's
    /// files).
    pub allow_local_images: bool,
    /// big_vision's mask decoder: `segment` answers come with masks (without it, `mask` is
    /// null).
    pub seg_decoder: Option<Arc<SegDecoder>>,
    pub engine: EngineOptions,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            model_name: "paligemma".into(),
            max_body_bytes: 32 << 20,
            max_image_side: 8192,
            default_max_tokens: 256,
            allow_local_images: false,
            seg_decoder: None,
            engine: EngineOptions::default(),
        }
    }
}

struct AppState {
    model: Arc<PaliGemma>,
    engine: Engine,
    opts: ServerOptions,
    next_id: AtomicU64,
}

/// The server's routes, with its engine thread started.
pub fn router(model: Arc<PaliGemma>, opts: ServerOptions) -> std::io::Result<Router> {
    let engine = Engine::start(model.clone(), opts.engine)?;
    let state = Arc::new(AppState {
        model,
        engine,
        opts,
        next_id: AtomicU64::new(0),
    });
    Ok(Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .fallback(|| async { error(ApiError::status(404, "no such route")) })
        .method_not_allowed_fallback(|| async {
            error(ApiError::status(
                405,
                "this route takes another method (POST for completions)",
            ))
        })
        .with_state(state))
}

fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(e.body())).into_response()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    if s.engine.is_alive() {
        axum::Json(json!({"status": "ok"})).into_response()
    } else {
        error(ApiError::status(503, "the engine has stopped"))
    }
}

async fn models(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": s.opts.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "paligemma-wgpu",
        }],
    }))
    .into_response()
}

/// Tokens a whole (not streamed) answer generated, for the request's log line.
#[derive(Clone, Copy)]
struct Tokens(usize);

/// One log line per request at `RUST_LOG=info`: method, route, status, tokens, time (a
/// stream's line comes when it ends).
async fn chat_completions(State(s): State<Arc<AppState>>, req: Request) -> Response {
    let t0 = std::time::Instant::now();
    let response = match accept(&s, req, t0).await {
        Ok(r) => r,
        Err(e) => error(e),
    };
    let streamed = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streamed {
        let tokens = response.extensions().get::<Tokens>().map_or(0, |t| t.0);
        log_request(response.status().as_u16(), tokens, t0);
    }
    response
}

fn log_request(status: u16, tokens: usize, t0: std::time::Instant) {
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    log::info!("POST /v1/chat/completions {status} {tokens} tokens {ms:.0} ms");
}

/// Reads, checks and queues a request; answers it whole or as a stream.
async fn accept(
    s: &Arc<AppState>,
    req: Request,
    t0: std::time::Instant,
) -> Result<Response, ApiError> {
    let body = axum::body::to_bytes(req.into_body(), s.opts.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::status(
                413,
                format!(
                    "the request body is over the server's limit of {} bytes",
                    s.opts.max_body_bytes
                ),
            )
        })?;
    let chat = ChatRequest::parse(&body)?;
    // Reading, decoding and preprocessing the image and tokenizing the prompt are CPU work:
    // off the async workers, and off the engine's thread.
    let (state, c) = (s.clone(), chat.clone());
    let (job, detect) = tokio::task::spawn_blocking(move || prepare(&state, &c))
        .await
        .map_err(|e| ApiError::status(500, format!("preparing the request: {e}")))??;
    let (tx, rx) = unbounded_channel();
    s.engine
        .submit(Job { events: tx, ..job })
        .map_err(|why| ApiError::status(503, why))?;
    let id = format!("chatcmpl-{}", s.next_id.fetch_add(1, Ordering::Relaxed));
    let meta = Arc::new(Meta {
        id,
        model: chat.model.unwrap_or_else(|| s.opts.model_name.clone()),
        created: now(),
        detect,
        decoder: s.opts.seg_decoder.clone(),
        logprobs: chat.logprobs.is_some(),
    });
    Ok(if chat.stream {
        stream(meta, rx, t0)
    } else {
        whole(meta, rx).await?
    })
}

/// The engine's job for a checked request (its event channel still to be set), and the
/// image's size when the answer will hold boxes.
fn prepare(s: &AppState, chat: &ChatRequest) -> Result<(Job, Option<(u32, u32)>), ApiError> {
    let bytes = match &chat.image {
        ImageSource::Bytes(b) => b.clone(),
        ImageSource::Path(p) if s.opts.allow_local_images => {
            let too_big =
                std::fs::metadata(p).is_ok_and(|m| m.len() > s.opts.max_body_bytes as u64);
            if too_big {
                return Err(ApiError::status(
                    413,
                    format!(
                        "{} is over the server's limit of {} bytes",
                        p.display(),
                        s.opts.max_body_bytes
                    ),
                ));
            }
            std::fs::read(p)
                .map_err(|e| ApiError::bad(Some("messages"), format!("{}: {e}", p.display())))?
        }
        ImageSource::Path(_) => {
            return Err(ApiError::bad(
                Some("messages"),
                "local image paths are off (start the server with --allow-local-images)",
            ));
        }
    };
    let image = decode_image(&bytes, s.opts.max_image_side)?;
    let prompt_ids = s
        .model
        .prompt_ids(&chat.prompt)
        .map_err(|e| ApiError::bad(Some("messages"), e.to_string()))?;
    let prompt_len = prompt_ids.len();
    let context = s.model.config().text.max_position_embeddings;
    let opts = generate_options(chat, prompt_len, context, s.opts.default_max_tokens)?;
    let detect = answers_with_boxes(&chat.prompt).then_some((image.width(), image.height()));
    let pixels = crate::preprocess::preprocess(&image, s.model.image_size() as u32);
    let (events, _) = unbounded_channel();
    let job = Job {
        pixels,
        prompt_ids,
        opts,
        stop: chat.stop.clone(),
        events,
    };
    Ok((job, detect))
}

struct Meta {
    id: String,
    model: String,
    created: u64,
    /// The image's size when the answer holds boxes.
    detect: Option<(u32, u32)>,
    decoder: Option<Arc<SegDecoder>>,
    /// Whether choices carry `logprobs`.
    logprobs: bool,
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
async fn usage_and_extension(meta: &Meta, o: &Outcome) -> Result<(Value, Value), ApiError> {
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
async fn whole(meta: Arc<Meta>, mut rx: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
    let mut logprobs = Vec::new();
    loop {
        match rx.recv().await {
            Some(Event::Token(piece)) => logprobs.extend(piece.logprobs),
            Some(Event::Done(o)) => {
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
            Some(Event::Failed(why)) => return Err(ApiError::status(500, why)),
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

/// Server-sent events, token by token: OpenAI's `chat.completion.chunk`s, the last with the
/// finish reason, usage and the PaliGemma extension, then `[DONE]`. The stream ends early
/// with an `error` object if the GPU fails. Dropping it (the client went away) drops the
/// receiver, and the engine frees the sequence.
fn stream(meta: Arc<Meta>, rx: UnboundedReceiver<Event>, t0: std::time::Instant) -> Response {
    let chunk = |meta: &Meta, delta: Value, finish: Option<&str>, extra: Option<(Value, Value)>| {
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
    };
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // Whether the engine ended the answer (a finish or an error), rather than vanishing.
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ended_in = ended.clone();
    let events = UnboundedReceiverStream::new(rx).then(move |e| {
        let (meta, first, ended) = (meta.clone(), first.clone(), ended_in.clone());
        async move {
            let data = match e {
                Event::Token(t) => {
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
                    match usage_and_extension(&meta, &o).await {
                        Ok(extra) => {
                            log_request(200, o.generated_ids.len(), t0);
                            let finish = Some(finish_reason(o.reason));
                            chunk(&meta, json!({}), finish, Some(extra))
                        }
                        Err(e) => e.body(),
                    }
                }
                Event::Failed(why) => {
                    ended.store(true, Ordering::Relaxed);
                    ApiError::status(500, why).body()
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
            if !ended.load(Ordering::Relaxed) {
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

/// Serves `app` on `listener` until Ctrl-C.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
