//! Continuous batching: one thread owns the GPU work. Requests (already decoded and
//! preprocessed by the HTTP side) wait in a bounded queue; each turn of the loop starts a few
//! of them (vision + prefill) and then moves every running sequence forward by one token in a
//! single batched step. A finished sequence leaves at once
//! and a waiting one takes its place; a client that went away (its receiver dropped) is
//! noticed at the next turn and its sequence dropped, freeing its KV cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use tokio::sync::mpsc::UnboundedSender;

use crate::model::session::DecodeBatch;
use crate::paligemma::{GenerateOptions, PaliGemma};
use crate::sequence::{FinishReason, Sequence, Token};

/// What a request's handler hears from the engine.
#[derive(Debug)]
pub enum Event {
    Token(Token),
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

struct Running {
    seq: Sequence,
    events: UnboundedSender<Event>,
}

impl Running {
    /// Sends a token, and the outcome once the sequence is finished; false when the client
    /// is gone.
    fn send(&self, token: Option<Token>) -> bool {
        let mut alive = token.is_none_or(|t| self.events.send(Event::Token(t)).is_ok());
        if let Some(why) = self.seq.error() {
            alive &= self.events.send(Event::Failed(why.to_string())).is_ok();
        } else if let Some(reason) = self.seq.finished() {
            let outcome = Outcome {
                reason,
                prompt_tokens: self.seq.prompt_ids().len(),
                generated_ids: self.seq.generated_ids().to_vec(),
                text: self.seq.text().to_string(),
            };
            alive &= self.events.send(Event::Done(outcome)).is_ok();
        }
        alive
    }
}

fn run(model: &PaliGemma, jobs: Receiver<Job>, opts: EngineOptions) {
    let mut running: Vec<Running> = Vec::new();
    let mut batch = None;
    loop {
        // Start a few waiting requests. Jobs stay in the bounded channel until they start,
        // so a full queue is refused at the door (503).
        let mut started = 0;
        while started < opts.starts_per_step && running.len() < opts.max_batch {
            let job = if running.is_empty() && started == 0 {
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return, // every handle dropped: the server is shutting down
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
            started += 1;
            let start = model.start_pixels_ids(&job.pixels, job.prompt_ids, &job.opts);
            match model.gpu().block_on("start_pixels", start) {
                Ok((seq, first)) => {
                    let r = Running {
                        seq,
                        events: job.events,
                    };
                    if r.send(first) && r.seq.finished().is_none() {
                        running.push(r);
                    }
                }
                Err(e) => {
                    log::warn!("starting a request failed: {e}");
                    let _ = job.events.send(Event::Failed(e.to_string()));
                }
            }
        }
        running.retain(|r| !r.events.is_closed());
        if running.is_empty() {
            // Idle: nothing may keep a finished request's buffers alive.
            if let Some(b) = batch.as_mut() {
                DecodeBatch::release(b);
            }
            continue;
        }
        let batch = match &mut batch {
            Some(b) => b,
            None => match model.decode_batch() {
                Ok(b) => batch.insert(b),
                Err(e) => {
                    fail_all(&mut running, &e.to_string());
                    continue;
                }
            },
        };
        let mut seqs: Vec<&mut Sequence> = running.iter_mut().map(|r| &mut r.seq).collect();
        match model.advance(batch, &mut seqs) {
            Ok(tokens) => {
                let mut keep = Vec::with_capacity(running.len());
                for (r, t) in running.drain(..).zip(tokens) {
                    if r.send(t) && r.seq.finished().is_none() {
                        keep.push(r);
                    }
                }
                running = keep;
            }
            Err(e) => {
                log::error!("a batched decode step failed: {e}");
                fail_all(&mut running, &e.to_string());
            }
        }
    }
}

/// Ends every running request with a server error; the engine then takes new ones (a
/// transient failure, such as running out of memory, does not take the server down).
fn fail_all(running: &mut Vec<Running>, why: &str) {
    for r in running.drain(..) {
        let _ = r.events.send(Event::Failed(why.to_string()));
    }
}
