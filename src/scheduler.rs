//! Continuous batching: the one loop that keeps many generations in flight. Requests wait in
//! a queue; each [`step`](Scheduler::step) starts a few of them (vision + prefill + first
//! token) and then moves every running one forward by a token in a single batched decode
//! step. A finished generation leaves at once and a waiting one takes its place. What
//! happened comes back as [`Event`]s, in order, each naming its request.
//!
//! The server's engine thread, the `batch` command and the Bevy example all drive this type;
//! each only decides where requests come from and where events go.

use std::collections::VecDeque;

use web_time::Instant;

use crate::error::{Error, Result};
use crate::generation::{GenerateOptions, Generation, ImageInput, Prompt, Token, elapsed_ms};
use crate::model::state::DecodeScratch;
use crate::paligemma::PaliGemma;
use crate::sequence::Sequence;

/// Names a request in its events.
pub type RequestId = u64;

/// One generation to run.
#[derive(Debug)]
pub struct Request {
    /// PaliGemma's one image; Gemma 3's any number (each a run of image tokens in the prompt's
    /// ids, in order, or the prompt text after them).
    pub images: Vec<ImageInput<'static>>,
    pub prompt: Prompt,
    pub opts: GenerateOptions,
}

/// What happened to a request.
#[derive(Debug)]
pub enum Event {
    /// It chose a token (its first comes at the step that starts it).
    Token { id: RequestId, token: Token },
    /// It finished (`<eos>` or its length), the whole generation with it.
    Done {
        id: RequestId,
        generation: Generation,
    },
    /// It failed (bad input found while starting it, or the GPU); the others go on.
    Failed { id: RequestId, error: String },
    /// It was cancelled ([`Scheduler::cancel`]) and its GPU memory freed.
    Cancelled { id: RequestId },
}

/// How many requests a scheduler runs and holds.
#[derive(Clone, Copy, Debug)]
pub struct SchedulerOptions {
    /// Generations decoding together at most.
    pub max_batch: usize,
    /// Requests waiting to start at most; [`submit`](Scheduler::submit) refuses more.
    pub max_waiting: usize,
    /// Requests started per step (each start delays the running ones by a prefill).
    pub starts_per_step: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            max_batch: 64,
            max_waiting: 256,
            starts_per_step: 2,
        }
    }
}

struct Running {
    id: RequestId,
    seq: Sequence,
    /// When its decoding began (after the first token).
    decoding_since: Instant,
}

/// The continuous-batching loop's state: what waits, what runs, and the decode scratch.
pub struct Scheduler {
    opts: SchedulerOptions,
    waiting: VecDeque<(RequestId, Request)>,
    running: Vec<Running>,
    /// Cancelled while waiting: reported at the next step.
    cancelled: Vec<RequestId>,
    scratch: Option<DecodeScratch>,
    next_id: RequestId,
}

impl Scheduler {
    pub fn new(opts: SchedulerOptions) -> Scheduler {
        Scheduler {
            opts,
            waiting: VecDeque::new(),
            running: Vec::new(),
            cancelled: Vec::new(),
            scratch: None,
            next_id: 0,
        }
    }

    /// Queues a request; refused when `max_waiting` requests already wait.
    pub fn submit(&mut self, request: Request) -> Result<RequestId> {
        if self.waiting.len() >= self.opts.max_waiting {
            return Err(Error::invalid(format!(
                "too many requests waiting ({})",
                self.waiting.len()
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back((id, request));
        Ok(id)
    }

    /// Cancels a request, waiting or running: the next step reports it
    /// ([`Event::Cancelled`]) and frees its KV cache. False when no such request is there.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        if let Some(i) = self.waiting.iter().position(|(w, _)| *w == id) {
            self.waiting.remove(i);
            self.cancelled.push(id);
            return true;
        }
        match self.running.iter_mut().find(|r| r.id == id) {
            Some(r) => {
                r.seq.cancel();
                true
            }
            None => false,
        }
    }

    /// Requests waiting to start.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
    /// Generations running.
    pub fn running(&self) -> usize {
        self.running.len()
    }
    /// Nothing waits or runs: a step would do nothing.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty() && self.cancelled.is_empty()
    }
    /// Whether a request submitted now would start at the next steps rather than wait for a
    /// running one to finish.
    pub fn has_room(&self) -> bool {
        self.running.len() + self.waiting.len() < self.opts.max_batch
    }
    /// GPU memory the running generations and the scratch hold, in bytes.
    pub fn gpu_bytes(&self) -> u64 {
        let seqs: u64 = self.running.iter().map(|r| r.seq.gpu_bytes()).sum();
        seqs + self.scratch.as_ref().map_or(0, DecodeScratch::gpu_bytes)
    }

    /// Starts up to `starts_per_step` waiting requests, then moves every running generation
    /// forward by a token in one decode step. Returns what happened, in order. A request's
    /// own failure is its [`Event::Failed`]; a failed decode step fails the requests it
    /// carried and the scheduler goes on (a transient failure, such as running out of memory,
    /// does not stop it). `Err` only when the device is lost: nothing more can run on it.
    pub async fn step(&mut self, model: &PaliGemma) -> Result<Vec<Event>> {
        let mut events: Vec<Event> = self
            .cancelled
            .drain(..)
            .map(|id| Event::Cancelled { id })
            .collect();
        self.start_waiting(model, &mut events).await;
        self.advance(model, &mut events).await;
        if self.running.is_empty()
            && let Some(s) = self.scratch.as_mut()
        {
            // Idle: no cached bind group may keep a finished request's buffers alive.
            s.release();
        }
        model.gpu().check_lost()?;
        Ok(events)
    }

    async fn start_waiting(&mut self, model: &PaliGemma, events: &mut Vec<Event>) {
        for _ in 0..self.opts.starts_per_step {
            if self.running.len() >= self.opts.max_batch {
                return;
            }
            let Some((id, r)) = self.waiting.pop_front() else {
                return;
            };
            match model.start_with(r.images, r.prompt, &r.opts).await {
                Ok((seq, first)) => {
                    let decoding_since = Instant::now();
                    self.report(
                        Running {
                            id,
                            seq,
                            decoding_since,
                        },
                        first,
                        events,
                    );
                }
                Err(e) => {
                    log::warn!("starting request {id} failed: {e}");
                    let error = e.to_string();
                    events.push(Event::Failed { id, error });
                }
            }
        }
    }

    async fn advance(&mut self, model: &PaliGemma, events: &mut Vec<Event>) {
        if self.running.is_empty() {
            return;
        }
        let scratch = match &mut self.scratch {
            Some(s) => s,
            None => match model.decode_scratch() {
                Ok(s) => self.scratch.insert(s),
                Err(e) => return self.fail_all(&e.to_string(), events),
            },
        };
        let mut seqs: Vec<&mut Sequence> = self.running.iter_mut().map(|r| &mut r.seq).collect();
        match model.advance(scratch, &mut seqs).await {
            Ok(tokens) => {
                for (r, token) in std::mem::take(&mut self.running).into_iter().zip(tokens) {
                    self.report(r, token, events);
                }
            }
            Err(e) => {
                log::error!("a decode step failed: {e}");
                self.fail_all(&e.to_string(), events);
            }
        }
    }

    /// Reports a generation's new token and, if it has finished, its end; keeps it running
    /// otherwise.
    fn report(&mut self, r: Running, token: Option<Token>, events: &mut Vec<Event>) {
        let id = r.id;
        if let Some(token) = token {
            events.push(Event::Token { id, token });
        }
        if let Some(error) = r.seq.error() {
            let error = error.to_string();
            events.push(Event::Failed { id, error });
        } else if r.seq.finished() == Some(crate::FinishReason::Cancelled) {
            events.push(Event::Cancelled { id });
        } else if r.seq.finished().is_some() {
            let generation = r.seq.into_generation(elapsed_ms(r.decoding_since));
            events.push(Event::Done { id, generation });
        } else {
            self.running.push(r);
        }
    }

    /// Ends every running generation with `why`.
    fn fail_all(&mut self, why: &str, events: &mut Vec<Event>) {
        for r in self.running.drain(..) {
            let error = why.to_string();
            events.push(Event::Failed { id: r.id, error });
        }
    }
}
