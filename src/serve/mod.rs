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

mod answer;
pub mod engine;
mod listen;
pub mod metrics;
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
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::mpsc::unbounded_channel;

use crate::detection::answers_with_boxes;
use crate::paligemma::PaliGemma;
use crate::segmentation::SegDecoder;
use answer::{Meta, stream, whole};
use engine::{Current, Engine, EngineOptions, Health, Job, Reload};
pub use listen::{Limits, serve_until};
use metrics::Metrics;
use openai::{ApiError, ChatRequest, ImageSource, decode_image, generate_options};

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The id `GET /v1/models` lists (requests may name any model: there is one).
    pub model_name: String,
    /// Largest request body, in bytes (images come base64-encoded inside it).
    pub max_body_bytes: usize,
    /// How long a request's body may take to arrive (408 after).
    pub body_timeout: std::time::Duration,
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
    /// How to make the model (and decoder) again after the device is lost; without it a lost
    /// device stops the server (`/health` says why).
    pub reload: Option<Reload>,
    pub engine: EngineOptions,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            model_name: "paligemma".into(),
            max_body_bytes: 32 << 20,
            body_timeout: std::time::Duration::from_secs(30),
            max_image_side: 8192,
            default_max_tokens: 256,
            allow_local_images: false,
            seg_decoder: None,
            reload: None,
            engine: EngineOptions::default(),
        }
    }
}

struct AppState {
    engine: Engine,
    opts: ServerOptions,
    metrics: Arc<Metrics>,
    next_id: AtomicU64,
}

/// The server's routes, with its engine thread started.
pub fn router(model: Arc<PaliGemma>, opts: ServerOptions) -> std::io::Result<Router> {
    let metrics = Arc::new(Metrics::default());
    let current = Current {
        model,
        seg_decoder: opts.seg_decoder.clone(),
    };
    let engine = Engine::start(current, opts.engine, opts.reload.clone(), metrics.clone())?;
    let state = Arc::new(AppState {
        engine,
        opts,
        metrics,
        next_id: AtomicU64::new(0),
    });
    Ok(Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { error(ApiError::status(404, "no such route")) })
        .method_not_allowed_fallback(|| async {
            error(ApiError::status(
                405,
                "this route takes another method (POST for completions)",
            ))
        })
        .with_state(state))
}

/// Seconds a client is told to wait before retrying a 503 (a full queue drains in moments; a
/// reload takes longer, but a client that asks early is simply told again).
const RETRY_AFTER_S: &str = "2";

fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let response = (status, axum::Json(e.body())).into_response();
    match e.status {
        503 => retry_later(response),
        _ => response,
    }
}

fn retry_later(mut response: Response) -> Response {
    let retry = axum::http::HeaderValue::from_static(RETRY_AFTER_S);
    response
        .headers_mut()
        .insert(axum::http::header::RETRY_AFTER, retry);
    response
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 200 while serving; 503 with the reason (and `status`: `recovering` or `stopped`) while the
/// model is made again after a device loss, or after the engine stopped.
async fn health(State(s): State<Arc<AppState>>) -> Response {
    let (status, why) = match s.engine.health() {
        Health::Serving => return axum::Json(json!({"status": "ok"})).into_response(),
        Health::Recovering(why) => ("recovering", why),
        Health::Stopped(why) => ("stopped", why),
    };
    let mut body = ApiError::status(503, why).body();
    body["status"] = json!(status);
    retry_later((StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response())
}

async fn metrics_text(State(s): State<Arc<AppState>>) -> Response {
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    let headers = [(axum::http::header::CONTENT_TYPE, content_type)];
    (headers, s.metrics.render()).into_response()
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
        log_request(&s.metrics, response.status().as_u16(), tokens, t0);
    }
    response
}

/// A finished request's log line and count (a stream's when it ends).
fn log_request(metrics: &Metrics, status: u16, tokens: usize, t0: std::time::Instant) {
    metrics.answered(status);
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    log::info!("POST /v1/chat/completions {status} {tokens} tokens {ms:.0} ms");
}

/// Reads, checks and queues a request; answers it whole or as a stream.
async fn accept(
    s: &Arc<AppState>,
    req: Request,
    t0: std::time::Instant,
) -> Result<Response, ApiError> {
    let read = axum::body::to_bytes(req.into_body(), s.opts.max_body_bytes);
    let timeout = s.opts.body_timeout;
    let body = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ApiError::status(408, format!("the request body took over {timeout:?}")))?
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
        .map_err(|(status, why)| ApiError::status(status, why))?;
    let id = format!("chatcmpl-{}", s.next_id.fetch_add(1, Ordering::Relaxed));
    let meta = Arc::new(Meta {
        id,
        model: chat.model.unwrap_or_else(|| s.opts.model_name.clone()),
        created: now(),
        detect,
        decoder: s.engine.current().seg_decoder.clone(),
        logprobs: chat.logprobs.is_some(),
        metrics: s.metrics.clone(),
        arrived: t0,
        last_token: Default::default(),
    });
    Ok(if chat.stream {
        stream(meta, rx)
    } else {
        whole(meta, rx).await?
    })
}

/// The engine's job for a checked request (its event channel still to be set), and the
/// image's size when the answer will hold boxes. PaliGemma answers the last user message
/// about its image; Gemma 3 the whole conversation by its chat template.
fn prepare(s: &AppState, chat: &ChatRequest) -> Result<(Job, Option<(u32, u32)>), ApiError> {
    let current = s.engine.current();
    let model = &current.model;
    let bad = |e: crate::Error| ApiError::bad(Some("messages"), e.to_string());
    let (prompt_ids, images, detect) = if model.config().image_tokens.is_some() {
        let ids = model.chat_ids(&chat.conversation).map_err(bad)?;
        let images = chat.images.iter().map(|src| read_image(s, src));
        (ids, images.collect::<Result<Vec<_>, _>>()?, None)
    } else {
        let (prompt, src) = chat.paligemma_input()?;
        let image = read_image(s, src)?;
        let size = (image.width(), image.height());
        let detect = answers_with_boxes(&prompt).then_some(size);
        (model.prompt_ids(&prompt).map_err(bad)?, vec![image], detect)
    };
    let context = model.config().text.max_position_embeddings;
    let opts = generate_options(chat, prompt_ids.len(), context, s.opts.default_max_tokens)?;
    let (events, _) = unbounded_channel();
    let job = Job {
        pixels: images.iter().map(|i| model.preprocess(i)).collect(),
        prompt_ids,
        opts,
        stop: chat.stop.clone(),
        events,
    };
    Ok((job, detect))
}

/// A request's image, decoded: a data: URI's bytes, or a local file where the server allows.
fn read_image(s: &AppState, src: &ImageSource) -> Result<image::DynamicImage, ApiError> {
    let bytes = match src {
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
    decode_image(&bytes, s.opts.max_image_side)
}

/// Serves `app` on `listener` within `limits` until Ctrl-C.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
) -> std::io::Result<()> {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve_until(listener, app, limits, ctrl_c).await
}
