//! PaliGemma inside a Bevy app, on Bevy's own device: a small 3D scene is rendered into an
//! image, and at a key press (headless: every few frames) PaliGemma captions it or detects in
//! it straight from that GPU texture. The answer streams onto the screen and detection boxes are drawn over
//! the scene.
//!
//! ```text
//! cargo run --release --manifest-path examples/bevy/Cargo.toml --ignore-rust-version -- \
//!     [MODEL_DIR] [options]
//!   --prompt P        a prompt to cycle through (repeatable; default "caption en", "detect cube")
//!   --max N           new tokens per answer (default 16)
//!   --headless        no window: render offscreen, capture every --every frames, print the
//!                     answers, and exit after --captures of them
//!   --every N         frames between two headless captures (default 10)
//!   --captures N      headless captures before exiting (default 2)
//!   --screenshot F    headless: write the final view (scene, answer, boxes) to the PNG F
//!   --check           headless: also answer each captured frame through the CPU
//!                     preprocessor, and fail unless both paths chose the same tokens
//! ```
//!
//! In a window, Space captures the scene with the next prompt.
//!
//! How the pieces fit:
//! - The model is loaded on a thread (a 3B checkpoint takes seconds) on a [`Gpu`] made from
//!   Bevy's `RenderDevice` and `RenderQueue`: one device, no copies between two.
//! - A capture is a request that the main world hands to the render world in the extract step,
//!   so it travels with the frame that the main world has just simulated.
//! - In the render world, after Bevy has submitted that frame, the request becomes a
//!   generation future over the camera's target texture. Its first poll queues the
//!   preprocessing behind the frame (queue order), so exactly that frame is read, on the GPU.
//! - Each frame polls every running generation once (a layer of the vision tower or the
//!   prefill, or a decode step) and the device once, and returns: the frame is never held for a
//!   whole answer. Tokens reach the main world through a channel as they come.

// Bevy systems take what they use as parameters; long lists are the norm there.
#![allow(clippy::too_many_arguments)]

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bevy::app::ScheduleRunnerPlugin;
use bevy::camera::RenderTarget;
use bevy::core_pipeline::tonemapping::Tonemapping;
use bevy::prelude::*;
use bevy::render::render_asset::RenderAssets;
use bevy::render::render_resource::{TextureFormat, TextureUsages};
use bevy::render::renderer::{RenderAdapterInfo, RenderDevice, RenderQueue};
use bevy::render::texture::GpuImage;
use bevy::render::view::screenshot::{Screenshot, ScreenshotCaptured};
use bevy::render::{ExtractSchedule, MainWorld, Render, RenderApp, RenderPlugin, RenderSystems};
use bevy::window::ExitCondition;
use paligemma::detection::parse_answer;
use paligemma::{GenerateOptions, Generation, Gpu, PaliGemma};

/// The scene's render target, which the model reads.
const FRAME: (u32, u32) = (480, 360);
/// The headless view (scene and answer below it), which `--screenshot` writes.
const VIEW: (u32, u32) = (FRAME.0 + 40, FRAME.1 + 140);

#[derive(Resource, Clone, Debug)]
struct Settings {
    model_dir: PathBuf,
    prompts: Vec<String>,
    max_new_tokens: usize,
    headless: bool,
    every: u32,
    captures: usize,
    screenshot: Option<PathBuf>,
    check: bool,
}

impl Settings {
    fn from_args() -> Result<Settings, String> {
        let mut s = Settings {
            model_dir: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/bf16/model"
            )),
            prompts: Vec::new(),
            max_new_tokens: 16,
            headless: false,
            every: 10,
            captures: 2,
            screenshot: None,
            check: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            let number = |name: &str, v: String| {
                v.parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("{name} wants a positive number, not {v:?}"))
            };
            match a.as_str() {
                "--prompt" => s.prompts.push(value("--prompt")?),
                "--max" => s.max_new_tokens = number("--max", value("--max")?)?,
                "--headless" => s.headless = true,
                "--every" => s.every = number("--every", value("--every")?)? as u32,
                "--captures" => s.captures = number("--captures", value("--captures")?)?,
                "--screenshot" => s.screenshot = Some(value("--screenshot")?.into()),
                "--check" => s.check = true,
                _ if a.starts_with("--") => return Err(format!("unknown option {a}")),
                _ => s.model_dir = a.into(),
            }
        }
        if s.prompts.is_empty() {
            s.prompts = vec!["caption en".into(), "detect cube".into()];
        }
        if !s.headless && (s.check || s.screenshot.is_some()) {
            return Err("--check and --screenshot belong to --headless".into());
        }
        if !cfg!(feature = "window") && !s.headless {
            return Err("built without the `window` feature: only --headless runs".into());
        }
        Ok(s)
    }
}

fn main() -> AppExit {
    let settings = match Settings::from_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return AppExit::error();
        }
    };
    let mut app = App::new();
    let render = RenderPlugin {
        // Headless runs compile every pipeline before drawing with it, so frame N is the same
        // picture on every run (and the printed answers with it).
        synchronous_pipeline_compilation: settings.headless,
        ..default()
    };
    if settings.headless {
        let plugins = DefaultPlugins
            .set(WindowPlugin {
                primary_window: None,
                exit_condition: ExitCondition::DontExit,
                ..default()
            })
            .set(render);
        #[cfg(feature = "window")]
        let plugins = plugins.disable::<bevy::winit::WinitPlugin>();
        app.add_plugins((plugins, ScheduleRunnerPlugin::run_loop(Duration::ZERO)));
    } else {
        app.add_plugins(DefaultPlugins.set(render).set(WindowPlugin {
            primary_window: Some(Window {
                title: "PaliGemma in Bevy: Space captures the scene".into(),
                resolution: (VIEW.0, VIEW.1).into(),
                ..default()
            }),
            ..default()
        }));
    }
    let (answers_tx, answers_rx) = channel();
    app.insert_resource(settings)
        .insert_resource(Answers {
            tx: answers_tx,
            rx: Mutex::new(answers_rx),
        })
        .init_resource::<Outbox>()
        .init_resource::<Captures>()
        .add_systems(Startup, (setup_scene, start_loading))
        .add_systems(
            Update,
            (
                spin,
                finish_loading,
                capture,
                receive_answers,
                finish_headless,
            )
                .chain(),
        );
    app.sub_app_mut(RenderApp)
        .init_resource::<Pending>()
        .init_resource::<Jobs>()
        .add_systems(ExtractSchedule, take_requests)
        .add_systems(
            Render,
            drive_generations
                .after(RenderSystems::Render)
                .before(RenderSystems::Cleanup),
        );
    app.run()
}

// ---------------------------------------------------------------------------------------------
// The scene and the view

#[derive(Resource)]
struct Frame(Handle<Image>);

#[derive(Component)]
struct Spinning;

#[derive(Component)]
struct AnswerText;

/// The scene's image on screen; detection boxes are its children.
#[derive(Component)]
struct SceneView;

#[derive(Component)]
struct DetectionBox;

fn setup_scene(
    mut commands: Commands,
    settings: Res<Settings>,
    mut images: ResMut<Assets<Image>>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    // The scene camera renders into an image that the model can read (COPY_SRC).
    let mut frame =
        Image::new_target_texture(FRAME.0, FRAME.1, TextureFormat::Rgba8UnormSrgb, None);
    frame.texture_descriptor.usage |= TextureUsages::COPY_SRC;
    let frame = images.add(frame);
    commands.insert_resource(Frame(frame.clone()));

    commands.spawn((
        Mesh3d(meshes.add(Plane3d::default().mesh().size(12.0, 12.0))),
        MeshMaterial3d(materials.add(Color::srgb(0.3, 0.55, 0.25))),
    ));
    commands.spawn((
        Mesh3d(meshes.add(Cuboid::new(1.2, 1.2, 1.2))),
        MeshMaterial3d(materials.add(Color::srgb(0.85, 0.2, 0.15))),
        Transform::from_xyz(-1.1, 0.6, 0.0),
        Spinning,
    ));
    commands.spawn((
        Mesh3d(meshes.add(Sphere::new(0.7).mesh().uv(32, 18))),
        MeshMaterial3d(materials.add(Color::srgb(0.2, 0.3, 0.85))),
        Transform::from_xyz(1.3, 0.7, 0.4),
    ));
    commands.spawn((
        DirectionalLight {
            illuminance: 8_000.0,
            shadow_maps_enabled: true,
            ..default()
        },
        Transform::from_xyz(3.0, 6.0, 4.0).looking_at(Vec3::ZERO, Vec3::Y),
    ));
    commands.spawn((
        Camera3d::default(),
        Camera {
            clear_color: ClearColorConfig::Custom(Color::srgb(0.55, 0.7, 0.95)),
            ..default()
        },
        RenderTarget::Image(frame.clone().into()),
        // The default (TonyMcMapface) needs lookup tables this build leaves out.
        Tonemapping::Reinhard,
        Transform::from_xyz(0.0, 2.6, 5.5).looking_at(Vec3::new(0.0, 0.5, 0.0), Vec3::Y),
    ));

    // The view: the scene's image, the answer below it. In a window, on the window; headless,
    // on an image of its own that --screenshot writes.
    let view = commands
        .spawn((
            Camera2d,
            Camera {
                order: 1,
                clear_color: ClearColorConfig::Custom(Color::srgb(0.08, 0.08, 0.1)),
                ..default()
            },
        ))
        .id();
    if settings.headless {
        let mut image =
            Image::new_target_texture(VIEW.0, VIEW.1, TextureFormat::Rgba8UnormSrgb, None);
        image.texture_descriptor.usage |= TextureUsages::COPY_SRC;
        let image = images.add(image);
        commands
            .entity(view)
            .insert(RenderTarget::Image(image.clone().into()));
        commands.insert_resource(ViewImage(image));
    }
    commands
        .spawn((
            Node {
                width: percent(100),
                height: percent(100),
                flex_direction: FlexDirection::Column,
                align_items: AlignItems::Center,
                padding: UiRect::all(px(12)),
                row_gap: px(10),
                ..default()
            },
            UiTargetCamera(view),
        ))
        .with_children(|root| {
            root.spawn((
                ImageNode::new(frame),
                Node {
                    width: px(FRAME.0),
                    height: px(FRAME.1),
                    ..default()
                },
                SceneView,
            ));
            root.spawn((
                Text::new("loading the model..."),
                TextFont::from_font_size(16.0),
                // Answers such as `<loc0469><loc0392>...` have no spaces to break at.
                TextLayout::linebreak(LineBreak::AnyCharacter),
                TextColor(Color::WHITE),
                Node {
                    max_width: px(FRAME.0),
                    ..default()
                },
                AnswerText,
            ));
        });
}

#[derive(Resource)]
struct ViewImage(Handle<Image>);

fn spin(mut cubes: Query<&mut Transform, With<Spinning>>) {
    // A fixed step per frame rather than per second: a headless run shows the same frames on
    // every machine.
    for mut t in &mut cubes {
        t.rotate_y(0.05);
    }
}

// ---------------------------------------------------------------------------------------------
// The model, on Bevy's device

#[derive(Resource)]
enum Model {
    Loading(Mutex<Receiver<paligemma::Result<PaliGemma>>>),
    Ready { model: Arc<PaliGemma>, since: u32 },
}

fn start_loading(
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
    std::thread::spawn(move || {
        let _ = tx.send(PaliGemma::load_on(gpu, &dir, None));
    });
    commands.insert_resource(Model::Loading(Mutex::new(rx)));
}

fn finish_loading(
    mut model: ResMut<Model>,
    settings: Res<Settings>,
    mut text: Single<&mut Text, With<AnswerText>>,
    frames: Res<bevy::diagnostic::FrameCount>,
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
                format!("{what}\nSpace: {:?}", settings.prompts[0])
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

// ---------------------------------------------------------------------------------------------
// Captures: main world -> render world -> answers back

/// A capture on its way to the render world.
struct Request {
    id: usize,
    prompt: String,
    frame: Handle<Image>,
    model: Arc<PaliGemma>,
    opts: GenerateOptions,
    answers: Sender<Message>,
}

/// Requests made this frame, taken by the render world in the extract step.
#[derive(Resource, Default)]
struct Outbox(Vec<Request>);

enum Message {
    Token {
        id: usize,
        piece: String,
    },
    Done {
        id: usize,
        result: paligemma::Result<Generation>,
    },
}

#[derive(Resource)]
struct Answers {
    tx: Sender<Message>,
    rx: Mutex<Receiver<Message>>,
}

/// What each capture asked and got.
#[derive(Default)]
struct Capture {
    prompt: String,
    frame_number: u32,
    text: String,
    generation: Option<Generation>,
    /// The captured frame as the CPU sees it (headless `--check` only).
    pixels: Option<Image>,
}

#[derive(Resource, Default)]
struct Captures {
    all: Vec<Capture>,
    next_prompt: usize,
    /// The view's screenshot was written.
    saved: bool,
    requested_screenshot: bool,
}

fn capture(
    mut commands: Commands,
    settings: Res<Settings>,
    model: Res<Model>,
    frame: Res<Frame>,
    answers: Res<Answers>,
    frames: Res<bevy::diagnostic::FrameCount>,
    keys: Option<Res<ButtonInput<KeyCode>>>,
    mut outbox: ResMut<Outbox>,
    mut captures: ResMut<Captures>,
    mut text: Single<&mut Text, With<AnswerText>>,
) {
    let Model::Ready { model, since } = &*model else {
        return;
    };
    let go = if settings.headless {
        let age = frames.0 - since;
        captures.all.len() < settings.captures && age > 0 && age.is_multiple_of(settings.every)
    } else {
        keys.is_some_and(|k| k.just_pressed(KeyCode::Space))
    };
    if !go {
        return;
    }
    let id = captures.all.len();
    let prompt = settings.prompts[captures.next_prompt % settings.prompts.len()].clone();
    captures.next_prompt += 1;
    outbox.0.push(Request {
        id,
        prompt: prompt.clone(),
        frame: frame.0.clone(),
        model: model.clone(),
        opts: GenerateOptions {
            max_new_tokens: settings.max_new_tokens,
            ..default()
        },
        answers: answers.tx.clone(),
    });
    if settings.check {
        // The same frame read back to the CPU: the screenshot is taken in the render world's
        // frame that also starts the generation.
        commands.spawn(Screenshot::image(frame.0.clone())).observe(
            move |shot: On<ScreenshotCaptured>, mut captures: ResMut<Captures>| {
                captures.all[id].pixels = Some(shot.image.clone());
            },
        );
    }
    **text = Text::new(format!("{prompt}: "));
    captures.all.push(Capture {
        prompt,
        frame_number: frames.0,
        ..default()
    });
}

/// Render world: the requests of the frame being extracted.
#[derive(Resource, Default)]
struct Pending(Vec<Request>);

fn take_requests(mut main: ResMut<MainWorld>, mut pending: ResMut<Pending>) {
    pending.0.append(&mut main.resource_mut::<Outbox>().0);
}

type Answering = Pin<Box<dyn Future<Output = paligemma::Result<Generation>> + Send>>;

/// Render world: generations under way, each polled once a frame.
#[derive(Resource, Default)]
struct Jobs(Mutex<Vec<(usize, Answering, Sender<Message>)>>);

fn drive_generations(
    mut pending: ResMut<Pending>,
    jobs: Res<Jobs>,
    images: Res<RenderAssets<GpuImage>>,
    device: Res<RenderDevice>,
) {
    let mut jobs = jobs.0.lock().unwrap();
    for r in pending.0.drain(..) {
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
                tokens.send(Message::Token { id, piece }).is_ok()
            };
            r.model
                .generate_texture_async(&texture, &r.prompt, &r.opts, on_token)
                .await
        });
        jobs.push((r.id, answering, r.answers));
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
                let _ = answers.send(Message::Done { id: *id, result });
                false
            }
        },
    );
}

fn receive_answers(
    mut commands: Commands,
    settings: Res<Settings>,
    answers: Res<Answers>,
    mut captures: ResMut<Captures>,
    mut text: Single<&mut Text, With<AnswerText>>,
    view: Single<Entity, With<SceneView>>,
    boxes: Query<Entity, With<DetectionBox>>,
    mut exit: MessageWriter<AppExit>,
) {
    let rx = answers.rx.lock().unwrap();
    while let Ok(message) = rx.try_recv() {
        match message {
            Message::Token { id, piece } => {
                let c = &mut captures.all[id];
                c.text.push_str(&piece);
                **text = Text::new(format!("{}: {}", c.prompt, c.text));
            }
            Message::Done { id, result } => {
                let c = &mut captures.all[id];
                let g = match result {
                    Ok(g) => g,
                    Err(e) => {
                        eprintln!("error: capture {id} ({:?}): {e}", c.prompt);
                        exit.write(AppExit::error());
                        return;
                    }
                };
                let found = parse_answer(&g.text, FRAME.0, FRAME.1).detections;
                println!(
                    "capture {id} (frame {}) {:?}: {:?} ids {:?} ({:.0} ms to the first token, \
                     {:.1} tokens/s)",
                    c.frame_number,
                    c.prompt,
                    g.text,
                    g.generated_ids,
                    g.timings.time_to_first_token_ms,
                    g.timings.decode_tokens_per_s
                );
                for b in boxes.iter() {
                    commands.entity(b).despawn();
                }
                for d in &found {
                    println!(
                        "  {:?}: ({:.0}, {:.0}) - ({:.0}, {:.0})",
                        d.label, d.x_min, d.y_min, d.x_max, d.y_max
                    );
                    // A model may name the corners in either order.
                    let (x0, x1) = (d.x_min.min(d.x_max), d.x_min.max(d.x_max));
                    let (y0, y1) = (d.y_min.min(d.y_max), d.y_min.max(d.y_max));
                    commands.entity(*view).with_child((
                        Node {
                            position_type: PositionType::Absolute,
                            left: px(x0),
                            top: px(y0),
                            width: px(x1 - x0),
                            height: px(y1 - y0),
                            border: UiRect::all(px(2)),
                            ..default()
                        },
                        BorderColor::all(Color::srgb(1.0, 0.9, 0.1)),
                        DetectionBox,
                        children![(
                            Text::new(d.label.clone()),
                            TextFont::from_font_size(13.0),
                            TextColor(Color::srgb(1.0, 0.9, 0.1)),
                        )],
                    ));
                }
                let mut shown = format!("{}: {}", c.prompt, g.text);
                if !settings.headless {
                    let next = &settings.prompts[captures.next_prompt % settings.prompts.len()];
                    shown.push_str(&format!("\n\nSpace: {next:?}"));
                }
                **text = Text::new(shown);
                captures.all[id].generation = Some(g);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Headless: the screenshot, the check, the exit

fn finish_headless(
    mut commands: Commands,
    settings: Res<Settings>,
    model: Res<Model>,
    view: Option<Res<ViewImage>>,
    mut captures: ResMut<Captures>,
    mut exit: MessageWriter<AppExit>,
) {
    let (Some(view), Model::Ready { model, .. }) = (view, &*model) else {
        return;
    };
    let all_answered = captures.all.len() == settings.captures
        && captures
            .all
            .iter()
            .all(|c| c.generation.is_some() && (!settings.check || c.pixels.is_some()));
    if !all_answered {
        return;
    }
    if let Some(path) = &settings.screenshot {
        if !captures.requested_screenshot {
            // Taken a frame after the last answer arrived: the view shows it by then.
            captures.requested_screenshot = true;
            let path = path.clone();
            commands.spawn(Screenshot::image(view.0.clone())).observe(
                move |shot: On<ScreenshotCaptured>, mut captures: ResMut<Captures>| {
                    match shot.image.clone().try_into_dynamic() {
                        Ok(image) => match image.to_rgb8().save(&path) {
                            Ok(()) => println!("wrote {}", path.display()),
                            Err(e) => eprintln!("error: writing {}: {e}", path.display()),
                        },
                        Err(e) => eprintln!("error: the view's screenshot: {e}"),
                    }
                    captures.saved = true;
                },
            );
        }
        if !captures.saved {
            return;
        }
    }
    let mut ok = true;
    if settings.check {
        for (id, c) in captures.all.iter().enumerate() {
            match check(model, c, settings.max_new_tokens) {
                Ok(()) => {}
                Err(e) => {
                    eprintln!("check: capture {id} ({:?}): {e}", c.prompt);
                    ok = false;
                }
            }
        }
        if ok {
            println!(
                "check: on all {} captured frames, the CPU preprocessor's answer is the texture \
                 path's, token for token",
                captures.all.len()
            );
        }
    }
    exit.write(if ok {
        AppExit::Success
    } else {
        AppExit::error()
    });
}

/// Answers the capture's frame, read back to the CPU, through the CPU preprocessor (blocking:
/// this is a test, and the app is about to exit) and compares with the texture path's answer.
fn check(model: &PaliGemma, c: &Capture, max_new_tokens: usize) -> Result<(), String> {
    let (Some(pixels), Some(on_gpu)) = (&c.pixels, &c.generation) else {
        return Err("no frame or no answer".into());
    };
    let rgba = image::RgbaImage::from_raw(
        pixels.width(),
        pixels.height(),
        pixels.data.clone().unwrap_or_default(),
    )
    .ok_or("the screenshot's bytes are not an rgba8 image")?;
    // A blank frame would make the comparison vacuous.
    let colours: std::collections::HashSet<_> = rgba.pixels().map(|p| p.0).collect();
    if colours.len() < 64 {
        return Err(format!(
            "the frame holds {} colours: the scene did not render",
            colours.len()
        ));
    }
    let opts = GenerateOptions {
        max_new_tokens,
        ..default()
    };
    let on_cpu = model
        .generate(
            &image::DynamicImage::ImageRgba8(rgba),
            &c.prompt,
            &opts,
            |_, _| true,
        )
        .map_err(|e| e.to_string())?;
    if on_cpu.generated_ids != on_gpu.generated_ids {
        return Err(format!(
            "the texture path chose {:?}, the CPU preprocessor {:?}",
            on_gpu.generated_ids, on_cpu.generated_ids
        ));
    }
    Ok(())
}
