//! The server's engine: one thread owns the GPU work, driving the library's [`Scheduler`]
//! (continuous batching). Requests (already decoded and preprocessed by the HTTP side) wait in
//! a bounded channel and enter the scheduler only as it has room to start them, so a full
//! queue is refused at the door (503). Each request's events go back over its own channel; a
//! client that went away (its receiver dropped) is noticed at the next step and its request
//! cancelled, freeing its KV cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use tokio::sync::mpsc::UnboundedSender;

use crate::generation::{FinishReason, GenerateOptions, ImageInput};
use crate::paligemma::PaliGemma;
use crate::scheduler::{self, Request, RequestId, Scheduler, SchedulerOptions};
pub use crate::serve::stop::Piece;
use crate::serve::stop::{Step, StopAt};

/// What a request's handler hears from the engine.
#[derive(Debug)]
pub enum Event {
    /// Text to send (held back while it may begin a stop string), with its tokens'
    /// log-probabilities when asked for.
    Token(Piece),
    Done(Outcome),
    /// The GPU failed on this request (a 5xx); the engine goes on with the others.
    Failed(String),
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
    /// The preprocessed image, `[3, S, S]` (see [`crate::preprocess::preprocess`]).
    pub pixels: Vec<f32>,
    /// The prompt, tokenized ([`PaliGemma::prompt_ids`]).
    pub prompt_ids: Vec<u32>,
    pub opts: GenerateOptions,
    /// OpenAI's `stop` strings.
    pub stop: Vec<String>,
    pub events: UnboundedSender<Event>,
}

/// The handle the HTTP side holds.
#[derive(Clone)]
pub struct Engine {
    jobs: SyncSender<Job>,
    /// Cleared if the engine's thread ends by a panic (a bug): `/health` then answers 503 so
    /// a supervisor restarts the server.
    alive: Arc<AtomicBool>,
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
    pub fn start(model: Arc<PaliGemma>, opts: EngineOptions) -> std::io::Result<Engine> {
        let (tx, rx) = mpsc::sync_channel(opts.max_queue);
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        std::thread::Builder::new()
            .name("paligemma-engine".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| run(&model, rx, opts));
                if std::panic::catch_unwind(run).is_err() {
                    log::error!("the engine panicked: no more requests will be answered");
                    flag.store(false, Ordering::SeqCst);
                }
            })?;
        Ok(Engine { jobs: tx, alive })
    }

    /// Whether the engine is still running.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Queues a job; `Err` with the job's reason when the queue is full or the engine is gone.
    pub fn submit(&self, job: Job) -> Result<(), &'static str> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err("the server is busy: too many requests waiting"),
            Err(TrySendError::Disconnected(_)) => Err("the engine has stopped"),
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

fn run(model: &PaliGemma, jobs: Receiver<Job>, opts: EngineOptions) {
    // Jobs enter the scheduler only when they can start at once: the rest wait in the bounded
    // channel, which refuses the overflow.
    let mut scheduler = Scheduler::new(SchedulerOptions {
        max_batch: opts.max_batch,
        max_waiting: opts.starts_per_step,
        starts_per_step: opts.starts_per_step,
    });
    let mut clients = Clients::new();
    loop {
        if !admit(&mut scheduler, &mut clients, &jobs, opts.starts_per_step) {
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
        match model.block_on(scheduler.step(model)) {
            Ok(events) => {
                for event in events {
                    if let Some(stopped) = route(&mut clients, event) {
                        scheduler.cancel(stopped);
                    }
                }
            }
            Err(e) => {
                log::error!("the engine's device failed: {e}");
                for (_, c) in clients.drain() {
                    let _ = c.events.send(Event::Failed(e.to_string()));
                }
            }
        }
    }
}

/// Moves up to `n` jobs from the channel into the scheduler, while it has room; waits for one
/// when the scheduler is idle. False when the channel is closed.
fn admit(s: &mut Scheduler, clients: &mut Clients, jobs: &Receiver<Job>, n: usize) -> bool {
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
        if job.events.is_closed() {
            continue;
        }
        let client = Client {
            events: job.events,
            stop: StopAt::new(job.stop),
            prompt_tokens: job.prompt_ids.len(),
        };
        let request = Request {
            image: ImageInput::Pixels(job.pixels.into()),
            prompt: job.prompt_ids.into(),
            opts: job.opts,
        };
        match s.submit(request) {
            Ok(id) => {
                clients.insert(id, client);
            }
            Err(e) => {
                let _ = client.events.send(Event::Failed(e.to_string()));
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
            send(&c, Event::Failed(error));
        }
        scheduler::Event::Cancelled { id } => {
            clients.remove(&id);
        }
    }
    None
}
