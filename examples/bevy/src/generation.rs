//! Every call into paligemma's loading and generation API is here: the model loaded on Bevy's
//! device; each capture submitted, with a copy of the frame it was made in, to the library's
//! [`Scheduler`] (continuous batching: several answers decode together), whose step is polled
//! once a frame in the render world; and the blocking CPU-path answer that the headless check
//! compares with.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bevy::diagnostic::FrameCount;
use bevy::prelude::*;
use bevy::render::render_asset::RenderAssets;
use bevy::render::renderer::{RenderAdapterInfo, RenderDevice, RenderQueue};
use bevy::render::texture::GpuImage;
use paligemma::{
    Event, GenerateOptions, Generation, Gpu, ImageInput, LoadOptions, PaliGemma, RequestId,
    Scheduler, SchedulerOptions,
};

use crate::capture::{Pending, Reply, Request};
use crate::scene::AnswerText;
use crate::settings::Settings;

#[derive(Resource)]
pub enum Model {
    Loading(Mutex<Receiver<paligemma::Result<PaliGemma>>>),
    Ready { model: Arc<PaliGemma>, since: u32 },
}

/// The options of every answer, on the GPU or the CPU.
pub fn options(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        ..default()
    }
}

pub fn start_loading(
    mut commands: Commands,
    settings: Res<Settings>,
    device: Res<RenderDevice>,
    queue: Res<RenderQueue>,
    adapter: Res<RenderAdapterInfo>,
) {
    // Bevy's device and queue, shared: the model's buffers live beside the scene's.
    let gpu = Gpu::from_device(
        device.wgpu_device().clone(),
        (**queue).clone(),
        Some((**adapter).clone()),
    );
    let dir = settings.model_dir.clone();
    let (tx, rx) = channel();
    // On a thread: a 3B checkpoint takes seconds.
    std::thread::spawn(move || {
        let _ = tx.send(PaliGemma::load_on(gpu, &dir, &LoadOptions::default()));
    });
    commands.insert_resource(Model::Loading(Mutex::new(rx)));
}

pub fn finish_loading(
    mut model: ResMut<Model>,
    settings: Res<Settings>,
    mut text: Single<&mut Text, With<AnswerText>>,
    frames: Res<FrameCount>,
    mut exit: MessageWriter<AppExit>,
) {
    let Model::Loading(rx) = &*model else { return };
    let loaded = match rx.lock().unwrap().try_recv() {
        Ok(loaded) => loaded,
        Err(_) => return,
    };
    match loaded {
        Ok(m) => {
            // Bevy polls nothing for us between frames; `drive_generations` polls the device
            // once a frame, and the model's waits return to the frame loop instead of blocking.
            m.gpu().set_polled_by_caller(true);
            let what = format!(
                "{} on {} ({:.0} MB of weights), sharing Bevy's device",
                settings.model_dir.display(),
                m.gpu().adapter_name(),
                m.weight_memory() as f64 / 1e6
            );
            println!("loaded {what}");
            **text = Text::new(if settings.headless {
                what
            } else {
                format!("{what}\nSpace: {:?}", settings.prompt(0))
            });
            *model = Model::Ready {
                model: Arc::new(m),
                since: frames.0,
            };
        }
        Err(e) => {
            eprintln!("error: loading {}: {e}", settings.model_dir.display());
            exit.write(AppExit::error());
        }
    }
}

/// A scheduler step under way: it owns the scheduler until it is done.
type Stepping = Pin<Box<dyn Future<Output = (Scheduler, paligemma::Result<Vec<Event>>)> + Send>>;

/// Render world: the library's continuous-batching [`Scheduler`], driven a poll a frame.
#[derive(Resource, Default)]
pub struct Jobs(Mutex<Driver>);

#[derive(Default)]
pub struct Driver {
    /// Between steps (`None` while a step has it).
    scheduler: Option<Scheduler>,
    stepping: Option<Stepping>,
    /// Requests captured while a step had the scheduler, submitted when it returns.
    captured: Vec<(paligemma::Request, usize, Sender<Reply>)>,
    model: Option<Arc<PaliGemma>>,
    /// Each request's capture id and reply channel.
    replies: HashMap<RequestId, (usize, Sender<Reply>)>,
}

/// Render world, after Bevy has submitted the frame: new requests go to the scheduler (each
/// with a copy of this frame), and the scheduler's step moves on once (a layer of the vision
/// tower or the prefill, or a decode step of every running answer).
pub fn drive_generations(
    mut pending: ResMut<Pending>,
    jobs: Res<Jobs>,
    images: Res<RenderAssets<GpuImage>>,
    device: Res<RenderDevice>,
    queue: Res<RenderQueue>,
) {
    let mut d = jobs.0.lock().unwrap();
    for r in pending.0.drain(..) {
        let frame = copy_frame(&r, &images, &device, &queue);
        let request = paligemma::Request {
            images: vec![ImageInput::Texture(frame)],
            prompt: r.prompt.into(),
            opts: r.opts,
        };
        d.model.get_or_insert(r.model);
        d.captured.push((request, r.id, r.answers));
    }
    if d.stepping.is_none()
        && let Some(model) = d.model.clone()
    {
        d.start_step(model);
    }
    let Some(stepping) = d.stepping.as_mut() else {
        return;
    };
    // Completes the read-backs the step waits on; never blocks.
    let _ = device.poll(wgpu::PollType::Poll);
    let mut cx = Context::from_waker(Waker::noop());
    if let Poll::Ready((scheduler, events)) = stepping.as_mut().poll(&mut cx) {
        d.stepping = None;
        d.scheduler = Some(scheduler);
        d.reply(events);
    }
}

impl Driver {
    /// Submits the captured requests and starts a step, if there is anything to do.
    fn start_step(&mut self, model: Arc<PaliGemma>) {
        let mut scheduler = self
            .scheduler
            .take()
            .unwrap_or_else(|| Scheduler::new(SchedulerOptions::default()));
        for (request, id, answers) in self.captured.drain(..) {
            match scheduler.submit(request) {
                Ok(rid) => {
                    self.replies.insert(rid, (id, answers));
                }
                Err(e) => {
                    let result = Err(e.to_string());
                    let _ = answers.send(Reply::Done { id, result });
                }
            }
        }
        if scheduler.is_idle() {
            self.scheduler = Some(scheduler);
            return;
        }
        self.stepping = Some(Box::pin(async move {
            let events = scheduler.step(&model).await;
            (scheduler, events)
        }));
    }

    /// Sends each event to its capture; starts the next step when answers are still running.
    fn reply(&mut self, events: paligemma::Result<Vec<Event>>) {
        let events = match events {
            Ok(events) => events,
            Err(e) => {
                for (_, (id, answers)) in self.replies.drain() {
                    let result = Err(e.to_string());
                    let _ = answers.send(Reply::Done { id, result });
                }
                return;
            }
        };
        for event in events {
            match event {
                Event::Token { id, token } => {
                    let piece = token.piece;
                    self.send(id, false, |id| Reply::Token { id, piece });
                }
                Event::Done { id, generation } => {
                    let result = Ok(generation);
                    self.send(id, true, |id| Reply::Done { id, result });
                }
                Event::Failed { id, error } => {
                    self.send(id, true, |id| Reply::Done {
                        id,
                        result: Err(error),
                    });
                }
                Event::Cancelled { id } => {
                    let result = Err("cancelled".to_string());
                    self.send(id, true, |id| Reply::Done { id, result });
                }
            }
        }
    }

    /// Sends request `rid`'s capture its reply (`last`: the request is over).
    fn send(&mut self, rid: RequestId, last: bool, reply: impl FnOnce(usize) -> Reply) {
        if let Some((capture, answers)) = self.replies.get(&rid) {
            let _ = answers.send(reply(*capture));
        }
        if last {
            self.replies.remove(&rid);
        }
    }
}

/// A copy of the camera's target as it is now: the frame Bevy has just submitted (queue
/// order puts the copy after it), kept for the request whatever later frames draw.
fn copy_frame(
    r: &Request,
    images: &RenderAssets<GpuImage>,
    device: &RenderDevice,
    queue: &RenderQueue,
) -> wgpu::Texture {
    // The target is on the GPU from the first frame that drew into it, which is before the
    // model has loaded and any capture can be asked for.
    let image = images
        .get(&r.frame)
        .expect("the camera's target is on the GPU");
    let target: &wgpu::Texture = &image.texture;
    let copy = device
        .wgpu_device()
        .create_texture(&wgpu::TextureDescriptor {
            label: Some("captured frame"),
            size: target.size(),
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: target.format(),
            usage: wgpu::TextureUsages::COPY_DST | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
    let mut encoder = device
        .wgpu_device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    encoder.copy_texture_to_texture(target.as_image_copy(), copy.as_image_copy(), target.size());
    queue.submit([encoder.finish()]);
    copy
}

/// Answers `image` through the CPU preprocessor, blocking (the headless check's other path).
pub fn answer_on_cpu(
    model: &PaliGemma,
    image: &image::DynamicImage,
    prompt: &str,
    max_new_tokens: usize,
) -> paligemma::Result<Generation> {
    let opts = options(max_new_tokens);
    model.block_on(model.generate(image, prompt, &opts, |_, _| true))
}
