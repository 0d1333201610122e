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
//!
//! The modules: `settings` (the command line), `scene` (the 3D scene and the view),
//! `capture` (requests from the main world to the render world, answers back), `generation`
//! (every call into the model: loading, the futures polled a frame at a time, the CPU path),
//! `ui` (answers and boxes on screen), `headless` (the screenshot, the check, the exit).

mod capture;
mod generation;
mod headless;
mod scene;
mod settings;
mod ui;

use std::sync::Mutex;
use std::sync::mpsc::channel;
use std::time::Duration;

use bevy::app::ScheduleRunnerPlugin;
use bevy::prelude::*;
use bevy::render::{ExtractSchedule, Render, RenderApp, RenderPlugin, RenderSystems};
use bevy::window::ExitCondition;

use crate::capture::{Answers, Captures, Outbox, Pending};
use crate::generation::Jobs;
use crate::settings::Settings;

/// The scene's render target, which the model reads.
const FRAME: (u32, u32) = (480, 360);
/// The headless view (scene and answer below it), which `--screenshot` writes.
const VIEW: (u32, u32) = (FRAME.0 + 40, FRAME.1 + 140);

fn main() -> AppExit {
    let settings = match Settings::from_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return AppExit::error();
        }
    };
    let mut app = App::new();
    add_plugins(&mut app, &settings);
    let (answers_tx, answers_rx) = channel();
    app.insert_resource(settings)
        .insert_resource(Answers {
            tx: answers_tx,
            rx: Mutex::new(answers_rx),
        })
        .init_resource::<Outbox>()
        .init_resource::<Captures>()
        .add_systems(Startup, (scene::setup_scene, generation::start_loading))
        .add_systems(
            Update,
            (
                scene::spin,
                generation::finish_loading,
                capture::capture,
                ui::receive_answers,
                headless::finish_headless,
            )
                .chain(),
        );
    app.sub_app_mut(RenderApp)
        .init_resource::<Pending>()
        .init_resource::<Jobs>()
        .add_systems(ExtractSchedule, capture::take_requests)
        .add_systems(
            Render,
            generation::drive_generations
                .after(RenderSystems::Render)
                .before(RenderSystems::Cleanup),
        );
    app.run()
}

/// Bevy's plugins: with a window, or headless (no window, frames back to back).
fn add_plugins(app: &mut App, settings: &Settings) {
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
}
