//! Headless: once every capture is answered, the view's screenshot, the check against the CPU
//! path, and the exit.

use std::path::Path;

use bevy::prelude::*;
use bevy::render::view::screenshot::{Screenshot, ScreenshotCaptured};
use paligemma::PaliGemma;

use crate::capture::{Capture, Captures};
use crate::generation::{self, Model};
use crate::scene::ViewImage;
use crate::settings::Settings;

pub fn finish_headless(
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
    if let Some(path) = &settings.screenshot
        && !screenshot_written(&mut commands, &view, path, &mut captures)
    {
        return;
    }
    let ok = !settings.check || check_all(model, &captures, settings.max_new_tokens);
    exit.write(if ok {
        AppExit::Success
    } else {
        AppExit::error()
    });
}

/// Whether the view's screenshot is written; asks for it the first time (a frame after the last
/// answer arrived: the view shows it by then).
fn screenshot_written(
    commands: &mut Commands,
    view: &ViewImage,
    path: &Path,
    captures: &mut Captures,
) -> bool {
    if !captures.requested_screenshot {
        captures.requested_screenshot = true;
        let path = path.to_path_buf();
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
    captures.saved
}

/// Checks every capture (see [`check`]); says which failed, or that all passed.
fn check_all(model: &PaliGemma, captures: &Captures, max_new_tokens: usize) -> bool {
    let mut ok = true;
    for (id, c) in captures.all.iter().enumerate() {
        if let Err(e) = check(model, c, max_new_tokens) {
            eprintln!("check: capture {id} ({:?}): {e}", c.prompt);
            ok = false;
        }
    }
    if ok {
        println!(
            "check: on all {} captured frames, the CPU preprocessor's answer is the texture \
             path's, token for token",
            captures.all.len()
        );
    }
    ok
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
    let image = image::DynamicImage::ImageRgba8(rgba);
    let on_cpu = generation::answer_on_cpu(model, &image, &c.prompt, max_new_tokens)
        .map_err(|e| e.to_string())?;
    if on_cpu.generated_ids != on_gpu.generated_ids {
        return Err(format!(
            "the texture path chose {:?}, the CPU preprocessor {:?}",
            on_gpu.generated_ids, on_cpu.generated_ids
        ));
    }
    Ok(())
}
