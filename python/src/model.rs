//! The model and its options as Python sees them: load, generate, a batch over the library's
//! continuous-batching [`Scheduler`], a stream.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use image::DynamicImage;
use paligemma::sampling::SamplingOptions;
use paligemma::segmentation::SegDecoder;
use paligemma::{
    Error, Event, GenerateOptions, GpuOptions, ImageInput, LoadOptions, PaliGemma, Request, Result,
    Scheduler, SchedulerOptions,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::image::Image;
use crate::stream::Stream;
use crate::{detached, output};

/// How to generate: checked once, when made, by the library's own checks.
#[pyclass(module = "paligemma_wgpu._native", frozen)]
pub struct Options {
    pub(crate) opts: GenerateOptions,
}

#[pymethods]
impl Options {
    #[new]
    fn new(
        max_new_tokens: i64,
        temperature: f32,
        top_p: f32,
        top_k: i64,
        seed: u64,
    ) -> PyResult<Self> {
        let at_least = |name: &str, value: i64, min: i64| {
            (value >= min).then_some(value as usize).ok_or_else(|| {
                PyValueError::new_err(format!("{name}: must be >= {min}, got {value}"))
            })
        };
        let sampling = SamplingOptions {
            temperature,
            top_p,
            top_k: at_least("top_k", top_k, 0)?,
            seed,
        };
        sampling
            .check()
            .map_err(|e| PyValueError::new_err(format!("{}: {}", e.option, e.message)))?;
        let opts = GenerateOptions {
            max_new_tokens: at_least("max_new_tokens", max_new_tokens, 1)?,
            sampling,
            ..GenerateOptions::default()
        };
        Ok(Options { opts })
    }
}

/// Which adapter: its position in `list_adapters()`, or a substring of its name.
#[derive(FromPyObject)]
pub enum Adapter {
    Index(usize),
    Name(String),
}

/// A loaded model (and, optionally, the segmentation-mask decoder); freed with its last
/// reference.
#[pyclass(module = "paligemma_wgpu._native", frozen)]
pub struct Model {
    pub(crate) model: Arc<PaliGemma>,
    pub(crate) decoder: Option<Arc<SegDecoder>>,
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path, precision=None, adapter=None, seg_decoder=None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        precision: Option<String>,
        adapter: Option<Adapter>,
        seg_decoder: Option<PathBuf>,
    ) -> PyResult<Self> {
        detached(py, || {
            let mut gpu = GpuOptions::default();
            match adapter {
                Some(Adapter::Index(i)) => gpu.adapter_index = Some(i),
                Some(Adapter::Name(name)) => gpu.adapter_name = Some(name),
                None => {}
            }
            let opts = LoadOptions {
                precision: precision.as_deref().map(str::parse).transpose()?,
                gpu,
                ..LoadOptions::default()
            };
            use std::io::IsTerminal;
            let dir = paligemma::hub::resolve(&path, std::io::stderr().is_terminal())?;
            let model = PaliGemma::load(&dir, &opts)?;
            let decoder = match seg_decoder {
                Some(p) => Some(Arc::new(SegDecoder::load(model.gpu(), &p)?)),
                None => None,
            };
            Ok(Model {
                model: Arc::new(model),
                decoder,
            })
        })
    }

    /// One generation, as JSON.
    fn generate(
        &self,
        py: Python<'_>,
        image: &Image,
        prompt: String,
        options: &Options,
    ) -> PyResult<String> {
        let image = image.image.clone();
        detached(py, || {
            let model = &self.model;
            let run = model.generate(&*image, prompt.as_str(), &options.opts, |_, _| true);
            let generation = model.block_on(run)?;
            output::json(&generation, &prompt, &image, self.decoder.as_deref())
        })
    }

    /// The pieces of one generation as they come (an iterator).
    fn stream(&self, image: &Image, prompt: String, options: &Options) -> PyResult<Stream> {
        // Bad input now, as `generate` reports it, rather than at the first piece.
        self.model.prompt_ids(&prompt).map_err(crate::py_error)?;
        let request = Request {
            images: vec![ImageInput::Image(Cow::Owned((*image.image).clone()))],
            prompt: prompt.as_str().into(),
            opts: options.opts.clone(),
        };
        Ok(Stream::new(self, request, prompt, image.image.clone()))
    }

    /// Each image with its prompt, `batch_size` decoding together; JSON answers in order.
    fn generate_batch(
        &self,
        py: Python<'_>,
        images: Vec<Py<Image>>,
        prompts: Vec<String>,
        batch_size: usize,
        options: &Options,
    ) -> PyResult<Vec<String>> {
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size: must be >= 1, got 0"));
        }
        let images: Vec<_> = images.iter().map(|i| i.get().image.clone()).collect();
        detached(py, || {
            let items = images.into_iter().zip(prompts).collect();
            self.run_batch(items, batch_size, &options.opts)
        })
    }

    /// The objects of an answer's text (a saved `detect` or `segment` answer) in `image`'s
    /// pixels, as JSON: what `generate` attaches to its answers.
    fn detections(&self, py: Python<'_>, image: &Image, answer: String) -> PyResult<String> {
        let image = image.image.clone();
        let decoder = self.decoder.as_deref();
        detached(py, || {
            Ok(output::objects(&answer, &image, decoder)?.to_string())
        })
    }

    /// Bytes of GPU memory the weights hold.
    #[getter]
    fn weight_bytes(&self) -> u64 {
        self.model.weight_memory()
    }

    /// The adapter the model runs on.
    #[getter]
    fn adapter(&self) -> String {
        self.model.gpu().adapter_name()
    }
}

impl Model {
    /// Runs `items` through one scheduler: a new one starts as soon as another finishes.
    fn run_batch(
        &self,
        items: Vec<(Arc<DynamicImage>, String)>,
        batch_size: usize,
        opts: &GenerateOptions,
    ) -> Result<Vec<String>> {
        let model = &*self.model;
        for (i, (_, prompt)) in items.iter().enumerate() {
            model
                .prompt_ids(prompt)
                .map_err(|e| Error::Invalid(format!("prompts[{i}]: {e}")))?;
        }
        let mut scheduler = Scheduler::new(SchedulerOptions {
            max_batch: batch_size,
            max_waiting: batch_size,
            starts_per_step: batch_size,
        });
        let mut answers = vec![String::new(); items.len()];
        let mut index_of = HashMap::new();
        let mut queue = items.iter().enumerate();
        loop {
            while scheduler.has_room() {
                let Some((i, (image, prompt))) = queue.next() else {
                    break;
                };
                let id = scheduler.submit(Request {
                    images: vec![ImageInput::Image(Cow::Owned((**image).clone()))],
                    prompt: prompt.as_str().into(),
                    opts: opts.clone(),
                })?;
                index_of.insert(id, i);
            }
            if scheduler.is_idle() {
                return Ok(answers);
            }
            for event in model.block_on(scheduler.step(model))? {
                match event {
                    Event::Done { id, generation } => {
                        let i = index_of[&id];
                        let (image, prompt) = &items[i];
                        let decoder = self.decoder.as_deref();
                        answers[i] = output::json(&generation, prompt, image, decoder)?;
                    }
                    Event::Failed { id, error } => {
                        return Err(Error::Gpu {
                            op: format!("generating item {}", index_of[&id]),
                            message: error,
                        });
                    }
                    Event::Token { .. } | Event::Cancelled { .. } => {}
                }
            }
        }
    }
}
