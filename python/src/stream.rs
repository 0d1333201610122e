//! A generation streamed to Python piece by piece: its own one-request [`Scheduler`], stepped
//! on each `__next__` with the GIL released. Dropped early, it frees the generation's cache.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use image::DynamicImage;
use paligemma::segmentation::SegDecoder;
use paligemma::{Error, Event, PaliGemma, Request, Result, Scheduler, SchedulerOptions};
use pyo3::prelude::*;

use crate::model::Model;
use crate::{detached, output};

/// An iterator over the text pieces of one generation; `result()` is the whole generation
/// (JSON) once the iterator is exhausted.
#[pyclass(module = "paligemma_wgpu._native", frozen)]
pub struct Stream {
    state: Mutex<State>,
}

struct State {
    model: Arc<PaliGemma>,
    decoder: Option<Arc<SegDecoder>>,
    scheduler: Scheduler,
    prompt: String,
    image: Arc<DynamicImage>,
    pieces: VecDeque<String>,
    result: Option<String>,
    failed: bool,
}

impl Stream {
    pub fn new(model: &Model, request: Request, prompt: String, image: Arc<DynamicImage>) -> Self {
        let mut scheduler = Scheduler::new(SchedulerOptions {
            max_batch: 1,
            max_waiting: 1,
            starts_per_step: 1,
        });
        let submitted = scheduler.submit(request);
        debug_assert!(submitted.is_ok(), "an empty scheduler takes a request");
        let state = State {
            model: model.model.clone(),
            decoder: model.decoder.clone(),
            scheduler,
            prompt,
            image,
            pieces: VecDeque::new(),
            result: None,
            failed: false,
        };
        Stream {
            state: Mutex::new(state),
        }
    }
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next piece of text (`None` ends the iteration).
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        // The lock is taken with the GIL released: a thread waiting for it must not hold the
        // GIL that the thread holding it needs to return.
        detached(py, || self.lock()?.next_piece())
    }

    /// The whole generation as JSON, once every piece was taken; `None` before.
    fn result(&self) -> PyResult<Option<String>> {
        Ok(self.lock().map_err(crate::py_error)?.result.clone())
    }
}

impl Stream {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| Error::Invalid("this stream failed in another thread".into()))
    }
}

impl State {
    fn next_piece(&mut self) -> Result<Option<String>> {
        loop {
            if let Some(piece) = self.pieces.pop_front() {
                return Ok(Some(piece));
            }
            if self.scheduler.is_idle() || self.failed {
                return Ok(None);
            }
            let model = &*self.model;
            for event in model.block_on(self.scheduler.step(model))? {
                self.take(event)?;
            }
        }
    }

    fn take(&mut self, event: Event) -> Result<()> {
        match event {
            Event::Token { token, .. } if !token.piece.is_empty() => {
                self.pieces.push_back(token.piece)
            }
            Event::Done { generation, .. } => {
                let decoder = self.decoder.as_deref();
                let json = output::json(&generation, &self.prompt, &self.image, decoder)?;
                self.result = Some(json);
            }
            Event::Failed { error, .. } => {
                self.failed = true;
                let op = "generating (the prompt was checked when the stream was made)".into();
                return Err(Error::Gpu { op, message: error });
            }
            Event::Token { .. } | Event::Cancelled { .. } => {}
        }
        Ok(())
    }
}
