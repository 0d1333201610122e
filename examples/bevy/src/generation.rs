//! Every call into paligemma's loading and generation API is here: the model loaded on Bevy's
//! device, each request turned into a generation future over the camera's target texture and
//! polled once a frame in the render world, and the blocking CPU-path answer that the headless
//! check compares with.

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
use paligemma::{GenerateOptions, Generation, Gpu, PaliGemma};

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
        let _ = tx.send(PaliGemma::load_on(gpu, &dir, None));
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

type Answering = Pin<Box<dyn Future<Output = paligemma::Result<Generation>> + Send>>;

/// Render world: generations under way, each polled once a frame.
#[derive(Resource, Default)]
pub struct Jobs(Mutex<Vec<(usize, Answering, Sender<Reply>)>>);

/// Render world, after Bevy has submitted the frame: new requests become generations, and every
/// generation moves one step (a layer of the vision tower or the prefill, or a decode step).
pub fn drive_generations(
    mut pending: ResMut<Pending>,
    jobs: Res<Jobs>,
    images: Res<RenderAssets<GpuImage>>,
    device: Res<RenderDevice>,
) {
    let mut jobs = jobs.0.lock().unwrap();
    for r in pending.0.drain(..) {
        jobs.push(start(r, &images));
    }
    if jobs.is_empty() {
        return;
    }
    // Completes the read-backs the generations wait on; never blocks.
    let _ = device.poll(wgpu::PollType::Poll);
    let mut cx = Context::from_waker(Waker::noop());
    jobs.retain_mut(
        |(id, answering, answers)| match answering.as_mut().poll(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(result) => {
                let _ = answers.send(Reply::Done { id: *id, result });
                false
            }
        },
    );
}

/// The request as a generation over the camera's target texture. Its first poll, in this
/// frame's slot after the frame's submission, queues the preprocessing behind the frame (queue
/// order), so exactly that frame is read.
fn start(r: Request, images: &RenderAssets<GpuImage>) -> (usize, Answering, Sender<Reply>) {
    // The target is on the GPU from the first frame that drew into it, which is before the
    // model has loaded and any capture can be asked for.
    let image = images
        .get(&r.frame)
        .expect("the camera's target is on the GPU");
    // The camera's target, as wgpu's texture: the frame Bevy has just submitted.
    let texture: wgpu::Texture = (*image.texture).clone();
    let (id, tokens) = (r.id, r.answers.clone());
    let answering: Answering = Box::pin(async move {
        let on_token = |_, piece: &str| {
            let piece = piece.to_string();
            tokens.send(Reply::Token { id, piece }).is_ok()
        };
        r.model
            .generate_texture_async(&texture, &r.prompt, &r.opts, on_token)
            .await
    });
    (r.id, answering, r.answers)
}

/// Answers `image` through the CPU preprocessor, blocking (the headless check's other path).
pub fn answer_on_cpu(
    model: &PaliGemma,
    image: &image::DynamicImage,
    prompt: &str,
    max_new_tokens: usize,
) -> paligemma::Result<Generation> {
    model.generate(image, prompt, &options(max_new_tokens), |_, _| true)
}
