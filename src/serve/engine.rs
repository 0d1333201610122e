//! The server's engine: one thread owns the GPU work, driving the library's [`Scheduler`]
//! (continuous batching). Requests (already decoded and preprocessed by the HTTP side) wait in
//! a bounded channel and enter the scheduler only as it has room to start them, so a full
//! queue is refused at the door (503). Each request's events go back over its own channel; a
//! client that went away (its receiver dropped) is noticed at the next step and its request
//! cancelled, freeing its KV cache.
//!
//! A lost device (a driver reset, an Xid, a GPU removed, `Device::destroy`) ends the requests
//! in flight with 503, turns [`Health`] to "recovering" (so `/health` and new requests answer
//! 503 with the reason), and the engine makes the model again with the server's [`Reload`] (a
//! new device, the same folder and precision), retrying until it succeeds; then it serves
//! again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::generation::{FinishReason, GenerateOptions, ImageInput};
use crate::paligemma::PaliGemma;
use crate::scheduler::{self, Request, RequestId, Scheduler, SchedulerOptions};
use crate::segmentation::SegDecoder;
use crate::serve::metrics::Metrics;
pub use crate::serve::stop::Piece;
use crate::serve::stop::{Step, StopAt};

/// What a request's handler hears from the engine.
#[derive(Debug)]
pub enum Event {
    /// Text to send (held back while it may begin a stop string), with its tokens'
    /// log-probabilities when asked for.
    Token(Piece),
    Done(Outcome),
    /// The request failed: the GPU on this request (500; the engine goes on with the
    /// others), or the device was lost (503: retry once `/health` is 200).
    Failed {
        status: u16,
        message: String,
    },
}

/// A finished generation.
#[derive(Debug)]
pub struct Outcome {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub generated_ids: Vec<u32>,
    pub text: String,
}

/// One request for the engine.
pub struct Job {
    /// The preprocessed images, `[3, S, S]` each ([`PaliGemma::preprocess`]): PaliGemma's
    /// one, Gemma 3's any number.
    pub pixels: Vec<Vec<f32>>,
    /// The prompt, tokenized ([`PaliGemma::prompt_ids`]).
    pub prompt_ids: Vec<u32>,
    pub opts: GenerateOptions,
    /// OpenAI's `stop` strings.
    pub stop: Vec<String>,
    pub events: UnboundedSender<Event>,
}

/// What the engine serves with: the model and, for masks, the decoder, both made again after
/// a device loss.
pub struct Loaded {
    pub model: PaliGemma,
    pub seg_decoder: Option<SegDecoder>,
}

/// How the server makes its model again after the device was lost.
#[derive(Clone)]
pub struct Reload(pub Arc<dyn Fn() -> crate::Result<Loaded> + Send + Sync>);

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reload(..)")
    }
}

/// Whether the engine serves; `Err` says why not.
#[derive(Clone, Debug, PartialEq)]
pub enum Health {
    Serving,
    /// The device was lost; the model is being made again.
    Recovering(String),
    /// The engine ended (a bug, or a lost device without a [`Reload`]).
    Stopped(String),
}

/// The model and decoder in use, swapped after a reload.
pub struct Current {
    pub model: Arc<PaliGemma>,
    pub seg_decoder: Option<Arc<SegDecoder>>,
}

/// The handle the HTTP side holds.
#[derive(Clone)]
pub struct Engine {
    jobs: SyncSender<Job>,
    shared: Arc<Shared>,
}

/// What the engine's thread and the HTTP side share.
struct Shared {
    health: Mutex<Health>,
    current: RwLock<Arc<Current>>,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn current(&self) -> Arc<Current> {
        let current = self.current.read();
        current
            .map(|c| c.clone())
            .expect("the engine never panics holding the lock")
    }

    fn set_health(&self, h: Health) {
        if let Ok(mut slot) = self.health.lock() {
            *slot = h;
        }
    }
}

/// How the engine runs.
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    /// Sequences decoding together at most.
    pub max_batch: usize,
    /// Requests waiting to start at most; more are refused with 503.
    pub max_queue: usize,
    /// Sequences started per turn (each start delays the running ones by a prefill).
    pub starts_per_step: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_batch: 64,
            max_queue: 256,
            starts_per_step: 2,
        }
    }
}

impl Engine {
    /// Starts the engine's thread; it ends when every `Engine` handle is dropped.
    pub fn start(
        current: Current,
        opts: EngineOptions,
        reload: Option<Reload>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Engine> {
        let (tx, rx) = mpsc::sync_channel(opts.max_queue);
        let shared = Arc::new(Shared {
            health: Mutex::new(Health::Serving),
            current: RwLock::new(Arc::new(current)),
            metrics,
        });
        let inner = shared.clone();
        std::thread::Builder::new()
            .name("paligemma-engine".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| run(&inner, rx, opts, reload));
                if std::panic::catch_unwind(run).is_err() {
                    log::error!("the engine panicked: no more requests will be answered");
                    inner.set_health(Health::Stopped("the engine panicked (a bug)".into()));
                }
            })?;
        Ok(Engine { jobs: tx, shared })
    }

    /// Whether the engine serves, and why not.
    pub fn health(&self) -> Health {
        self.shared
            .health
            .lock()
            .map_or(Health::Stopped("poisoned".into()), |h| h.clone())
    }

    /// The model and decoder in use (the HTTP side tokenizes with it and decodes masks).
    pub fn current(&self) -> Arc<Current> {
        self.shared.current()
    }

    /// Queues a job; `Err` with the status and reason when the queue is full, the engine is
    /// recovering from a device loss, or it has stopped.
    pub fn submit(&self, job: Job) -> Result<(), (u16, String)> {
        match self.health() {
            Health::Serving => {}
            Health::Recovering(why) | Health::Stopped(why) => return Err((503, why)),
        }
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.shared.metrics.waiting.inc();
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                Err((503, "the server is busy: too many requests waiting".into()))
            }
            Err(TrySendError::Disconnected(_)) => Err((503, "the engine has stopped".into())),
        }
    }
}

/// Where a request's events go, through its stop strings.
struct Client {
    events: UnboundedSender<Event>,
    stop: StopAt,
    prompt_tokens: usize,
}

type Clients = HashMap<RequestId, Client>;

fn run(shared: &Shared, jobs: Receiver<Job>, opts: EngineOptions, reload: Option<Reload>) {
    // Jobs enter the scheduler only when they can start at once: the rest wait in the bounded
    // channel, which refuses the overflow.
    let new_scheduler = || {
        Scheduler::new(SchedulerOptions {
            max_batch: opts.max_batch,
            max_waiting: opts.starts_per_step,
            starts_per_step: opts.starts_per_step,
        })
    };
    let mut scheduler = new_scheduler();
    let mut clients = Clients::new();
    let m = &shared.metrics;
    loop {
        let current = shared.current();
        let model = &current.model;
        if !admit(&mut scheduler, &mut clients, &jobs, opts.starts_per_step, m) {
            return; // every handle dropped: the server is shutting down
        }
        let gone: Vec<RequestId> = clients
            .iter()
            .filter(|(_, c)| c.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            scheduler.cancel(id);
            clients.remove(&id);
        }
        let stepped = model.block_on(scheduler.step(model));
        if let Err(lost) = model.gpu().check_lost() {
            // Health first: a client told of the loss then finds /health saying so.
            shared.set_health(match &reload {
                Some(_) => Health::Recovering(format!("{lost}; reloading the model")),
                None => Health::Stopped(format!("{lost} (no reload configured)")),
            });
            fail_all(
                &mut clients,
                503,
                &format!("{lost}; the server is reloading the model"),
            );
            // The sequences' buffers belong to the lost device.
            scheduler = new_scheduler();
            drop(current);
            recover(shared, reload.as_ref(), &lost.to_string());
            continue;
        }
        // The gauges first: a client told its answer is done then sees it gone from them.
        m.running.set(scheduler.running() as i64);
        m.gpu_memory
            .set((model.weight_memory() + scheduler.gpu_bytes()) as i64);
        match stepped {
            Ok(events) => {
                for event in events {
                    if let Some(stopped) = route(&mut clients, event) {
                        scheduler.cancel(stopped);
                    }
                }
            }
            Err(e) => {
                log::error!("the engine's device failed: {e}");
                fail_all(&mut clients, 500, &e.to_string());
            }
        }
    }
}

fn fail_all(clients: &mut Clients, status: u16, message: &str) {
    for (_, c) in clients.drain() {
        let message = message.to_string();
        let _ = c.events.send(Event::Failed { status, message });
    }
}

/// After a device loss (`Health` already says so): 503 with the reason while the model is made again (retried every few
/// seconds: the driver may need time), then serving again with the new model. Without a
/// [`Reload`] the engine stays stopped, saying why.
fn recover(shared: &Shared, reload: Option<&Reload>, lost: &str) {
    log::error!("{lost}: reloading the model");
    shared.metrics.device_resets.inc();
    shared.metrics.running.set(0);
    let Some(reload) = reload else {
        return;
    };
    let mut wait = Duration::from_secs(1);
    loop {
        match (reload.0)() {
            Ok(loaded) => {
                let current = Current {
                    model: Arc::new(loaded.model),
                    seg_decoder: loaded.seg_decoder.map(Arc::new),
                };
                if let Ok(mut slot) = shared.current.write() {
                    *slot = Arc::new(current);
                }
                log::warn!("the model was reloaded on a new device; serving again");
                shared.set_health(Health::Serving);
                return;
            }
            Err(e) => {
                log::error!("reloading after {lost} failed: {e}; retrying in {wait:?}");
                let why = format!("{lost}; reloading failed ({e}), retrying");
                shared.set_health(Health::Recovering(why));
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Moves up to `n` jobs from the channel into the scheduler, while it has room; waits for one
/// when the scheduler is idle. False when the channel is closed.
fn admit(
    s: &mut Scheduler,
    clients: &mut Clients,
    jobs: &Receiver<Job>,
    n: usize,
    metrics: &Metrics,
) -> bool {
    for _ in 0..n {
        if !s.has_room() {
            break;
        }
        let job = if s.is_idle() {
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return false,
            }
        } else {
            match jobs.try_recv() {
                Ok(job) => job,
                Err(_) => break,
            }
        };
        metrics.waiting.dec();
        if job.events.is_closed() {
            continue;
        }
        let client = Client {
            events: job.events,
            stop: StopAt::new(job.stop),
            prompt_tokens: job.prompt_ids.len(),
        };
        let request = Request {
            images: job
                .pixels
                .into_iter()
                .map(|p| ImageInput::Pixels(p.into()))
                .collect(),
            prompt: job.prompt_ids.into(),
            opts: job.opts,
        };
        match s.submit(request) {
            Ok(id) => {
                clients.insert(id, client);
            }
            Err(e) => {
                let message = e.to_string();
                let _ = client.events.send(Event::Failed {
                    status: 500,
                    message,
                });
            }
        }
    }
    true
}

/// Sends a scheduler event to its client, through the client's stop strings; a finished
/// request's channel is closed. Returns a request that met a stop string: the caller cancels
/// its generation.
fn route(clients: &mut Clients, event: scheduler::Event) -> Option<RequestId> {
    // A client gone stays listed until the next turn cancels its request.
    let send = |c: &Client, e: Event| {
        let _ = c.events.send(e);
    };
    match event {
        scheduler::Event::Token { id, token } => {
            let c = clients.get_mut(&id)?;
            match c.stop.token(token) {
                Step::Send(piece) => piece.into_iter().for_each(|t| send(c, Event::Token(t))),
                Step::Stop { last, text, ids } => {
                    last.into_iter().for_each(|t| send(c, Event::Token(t)));
                    let outcome = Outcome {
                        reason: FinishReason::Stop,
                        prompt_tokens: c.prompt_tokens,
                        generated_ids: ids,
                        text,
                    };
                    send(c, Event::Done(outcome));
                    clients.remove(&id);
                    return Some(id);
                }
            }
        }
        scheduler::Event::Done { id, generation: g } => {
            let mut c = clients.remove(&id)?;
            c.stop
                .finish()
                .into_iter()
                .for_each(|t| send(&c, Event::Token(t)));
            let outcome = Outcome {
                reason: g.finish_reason,
                prompt_tokens: g.prompt_ids.len(),
                generated_ids: g.generated_ids,
                text: g.text,
            };
            send(&c, Event::Done(outcome));
        }
        scheduler::Event::Failed { id, error } => {
            let c = clients.remove(&id)?;
            send(
                &c,
                Event::Failed {
                    status: 500,
                    message: error,
                },
            );
        }
        scheduler::Event::Cancelled { id } => {
            clients.remove(&id);
        }
    }
    None
}
