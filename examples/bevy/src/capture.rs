//! Captures: main world -> render world -> answers back. The main world decides to capture
//! (Space, or every few frames headless) and leaves a request in the [`Outbox`]; the render
//! world takes it in the extract step, so it travels with the frame the main world has just
//! simulated ([`take_requests`]); `generation::drive_generations` answers it; the tokens come
//! back over the [`Answers`] channel.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use bevy::diagnostic::FrameCount;
use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use bevy::render::MainWorld;
use bevy::render::view::screenshot::{Screenshot, ScreenshotCaptured};
use paligemma::{GenerateOptions, Generation, PaliGemma};

use crate::generation::{self, Model};
use crate::scene::{AnswerText, Frame};
use crate::settings::Settings;

/// A capture on its way to the render world.
pub struct Request {
    pub id: usize,
    pub prompt: String,
    pub frame: Handle<Image>,
    pub model: Arc<PaliGemma>,
    pub opts: GenerateOptions,
    pub answers: Sender<Reply>,
}

/// Requests made this frame, taken by the render world in the extract step.
#[derive(Resource, Default)]
pub struct Outbox(pub Vec<Request>);

/// Render world: the requests of the frame being extracted.
#[derive(Resource, Default)]
pub struct Pending(pub Vec<Request>);

/// What the render world sends back about capture `id`.
pub enum Reply {
    Token {
        id: usize,
        piece: String,
    },
    Done {
        id: usize,
        /// The answer, or why there is none.
        result: Result<Generation, String>,
    },
}

#[derive(Resource)]
pub struct Answers {
    pub tx: Sender<Reply>,
    pub rx: Mutex<Receiver<Reply>>,
}

/// What each capture asked and got.
#[derive(Default)]
pub struct Capture {
    pub prompt: String,
    pub frame_number: u32,
    pub text: String,
    pub generation: Option<Generation>,
    /// The captured frame as the CPU sees it (headless `--check` only).
    pub pixels: Option<Image>,
}

#[derive(Resource, Default)]
pub struct Captures {
    pub all: Vec<Capture>,
    pub next_prompt: usize,
    /// The view's screenshot was written.
    pub saved: bool,
    pub requested_screenshot: bool,
}

/// What decides whether this frame is captured, and what a capture is made of.
#[derive(SystemParam)]
pub struct CaptureContext<'w> {
    settings: Res<'w, Settings>,
    model: Res<'w, Model>,
    frame: Res<'w, Frame>,
    answers: Res<'w, Answers>,
    frames: Res<'w, FrameCount>,
    keys: Option<Res<'w, ButtonInput<KeyCode>>>,
}

impl CaptureContext<'_> {
    /// The model, when this frame is to be captured (`captured` captures so far).
    fn due(&self, captured: usize) -> Option<&Arc<PaliGemma>> {
        let Model::Ready { model, since } = &*self.model else {
            return None;
        };
        let s = &self.settings;
        let go = if s.headless {
            let age = self.frames.0 - since;
            captured < s.captures && age > 0 && age.is_multiple_of(s.every)
        } else {
            self.keys
                .as_ref()
                .is_some_and(|k| k.just_pressed(KeyCode::Space))
        };
        go.then_some(model)
    }
}

pub fn capture(
    mut commands: Commands,
    ctx: CaptureContext,
    mut outbox: ResMut<Outbox>,
    mut captures: ResMut<Captures>,
    mut text: Single<&mut Text, With<AnswerText>>,
) {
    let id = captures.all.len();
    let Some(model) = ctx.due(id) else {
        return;
    };
    let prompt = ctx.settings.prompt(captures.next_prompt).to_string();
    captures.next_prompt += 1;
    outbox.0.push(Request {
        id,
        prompt: prompt.clone(),
        frame: ctx.frame.0.clone(),
        model: model.clone(),
        opts: generation::options(ctx.settings.max_new_tokens),
        answers: ctx.answers.tx.clone(),
    });
    if ctx.settings.check {
        // The same frame read back to the CPU: the screenshot is taken in the render world's
        // frame that also starts the generation.
        commands
            .spawn(Screenshot::image(ctx.frame.0.clone()))
            .observe(
                move |shot: On<ScreenshotCaptured>, mut captures: ResMut<Captures>| {
                    captures.all[id].pixels = Some(shot.image.clone());
                },
            );
    }
    **text = Text::new(format!("{prompt}: "));
    captures.all.push(Capture {
        prompt,
        frame_number: ctx.frames.0,
        ..default()
    });
}

/// Render world, extract step: the requests of the frame being extracted.
pub fn take_requests(mut main: ResMut<MainWorld>, mut pending: ResMut<Pending>) {
    pending.0.append(&mut main.resource_mut::<Outbox>().0);
}
