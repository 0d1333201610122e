//! Answers arriving from the render world: streamed onto the screen as the tokens come, printed
//! when done, and detection boxes drawn over the scene.

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use paligemma::Generation;
use paligemma::detection::{Detection, answers_with_boxes, parse_answer};

use crate::FRAME;
use crate::capture::{Answers, Captures, Reply};
use crate::scene::{AnswerText, DetectionBox, SceneView};
use crate::settings::Settings;

/// The parts of the view an answer changes: its text, and the boxes over the scene.
#[derive(SystemParam)]
pub struct AnswerView<'w, 's> {
    commands: Commands<'w, 's>,
    text: Single<'w, 's, &'static mut Text, With<AnswerText>>,
    scene: Single<'w, 's, Entity, With<SceneView>>,
    boxes: Query<'w, 's, Entity, With<DetectionBox>>,
}

impl AnswerView<'_, '_> {
    fn show(&mut self, text: String) {
        **self.text = Text::new(text);
    }

    /// Replaces the boxes over the scene with `found`'s (in the frame's pixels, which are the
    /// scene view's).
    fn draw_boxes(&mut self, found: &[Detection]) {
        for b in self.boxes.iter() {
            self.commands.entity(b).despawn();
        }
        for d in found {
            println!(
                "  {:?}: ({:.0}, {:.0}) - ({:.0}, {:.0})",
                d.label, d.x_min, d.y_min, d.x_max, d.y_max
            );
            // The parser keeps only boxes with x_min < x_max and y_min < y_max.
            self.commands.entity(*self.scene).with_child((
                Node {
                    position_type: PositionType::Absolute,
                    left: px(d.x_min),
                    top: px(d.y_min),
                    width: px(d.x_max - d.x_min),
                    height: px(d.y_max - d.y_min),
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
    }
}

pub fn receive_answers(
    settings: Res<Settings>,
    answers: Res<Answers>,
    mut captures: ResMut<Captures>,
    mut view: AnswerView,
    mut exit: MessageWriter<AppExit>,
) {
    let rx = answers.rx.lock().unwrap();
    while let Ok(reply) = rx.try_recv() {
        match reply {
            Reply::Token { id, piece } => {
                let c = &mut captures.all[id];
                c.text.push_str(&piece);
                view.show(format!("{}: {}", c.prompt, c.text));
            }
            Reply::Done { id, result: Ok(g) } => {
                answered(id, g, &settings, &mut captures, &mut view);
            }
            Reply::Done { id, result: Err(e) } => {
                eprintln!("error: capture {id} ({:?}): {e}", captures.all[id].prompt);
                exit.write(AppExit::error());
                return;
            }
        }
    }
}

/// Capture `id` answered `g`: printed, shown, its boxes drawn.
fn answered(
    id: usize,
    g: Generation,
    settings: &Settings,
    captures: &mut Captures,
    view: &mut AnswerView,
) {
    let c = &captures.all[id];
    println!(
        "capture {id} (frame {}) {:?}: {:?} ids {:?} ({:.0} ms to the first token, {:.1} \
         tokens/s)",
        c.frame_number,
        c.prompt,
        g.text,
        g.generated_ids,
        g.timings.time_to_first_token_ms,
        g.timings.decode_tokens_per_s
    );
    let answer = parse_answer(&g.text, FRAME.0, FRAME.1);
    view.draw_boxes(&answer.detections);
    if answer.skipped > 0 && answers_with_boxes(&c.prompt) {
        println!(
            "  {} malformed groups skipped: {}",
            answer.skipped,
            answer.malformed_summary()
        );
    }
    let mut shown = format!("{}: {}", c.prompt, g.text);
    if !settings.headless {
        let next = settings.prompt(captures.next_prompt);
        shown.push_str(&format!("\n\nSpace: {next:?}"));
    }
    view.show(shown);
    captures.all[id].generation = Some(g);
}
