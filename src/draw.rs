//! Answers drawn on the picture (`paligemma --draw`): each object's mask as a translucent
//! colour, its box, and its label on a filled tab above the box, one colour per label.
//! Primitives and the bitmap font come from `embedded-graphics`; masks are blended here.

use std::convert::Infallible;

use embedded_graphics::mono_font::{MonoTextStyle, ascii::FONT_9X15};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Baseline, Text};
use image::RgbImage;

use crate::detection::Detection;
use crate::segmentation::Mask;

/// Colours, one per distinct label, in order of first appearance.
const PALETTE: [[u8; 3]; 6] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [240, 200, 0],
];

/// How much of a mask's colour covers the picture.
pub const MASK_ALPHA: f32 = 0.45;
/// Box stroke width in pixels.
pub const STROKE: u32 = 2;

/// An `RgbImage` as an `embedded-graphics` target (pixels outside are dropped).
struct Canvas<'a>(&'a mut RgbImage);

impl OriginDimensions for Canvas<'_> {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for Canvas<'_> {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Infallible> {
        let (w, h) = self.0.dimensions();
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < w && (p.y as u32) < h {
                self.0
                    .put_pixel(p.x as u32, p.y as u32, image::Rgb([c.r(), c.g(), c.b()]));
            }
        }
        Ok(())
    }
}

/// The colour of each detection: by label, in order of first appearance.
pub fn colours(detections: &[Detection]) -> Vec<[u8; 3]> {
    let mut labels: Vec<&str> = Vec::new();
    detections
        .iter()
        .map(|d| {
            let i = labels
                .iter()
                .position(|l| *l == d.label)
                .unwrap_or_else(|| {
                    labels.push(&d.label);
                    labels.len() - 1
                });
            PALETTE[i % PALETTE.len()]
        })
        .collect()
}

/// Draws `detections` (with `masks[i]` for detection i where there is one) on `image`.
pub fn draw(image: &mut RgbImage, detections: &[Detection], masks: &[Option<Mask>]) {
    let colours = colours(detections);
    for (mask, c) in masks.iter().zip(&colours) {
        let Some(m) = mask else { continue };
        for (i, _) in m.inside.iter().enumerate().filter(|(_, v)| **v) {
            let (x, y) = (m.x + i as u32 % m.width, m.y + i as u32 / m.width);
            if let Some(p) = image.get_pixel_mut_checked(x, y) {
                for (v, &c) in p.0.iter_mut().zip(c) {
                    *v = (*v as f32 * (1.0 - MASK_ALPHA) + c as f32 * MASK_ALPHA).round() as u8;
                }
            }
        }
    }
    let mut canvas = Canvas(image);
    for (d, c) in detections.iter().zip(&colours) {
        let colour = Rgb888::new(c[0], c[1], c[2]);
        let (x0, y0) = (d.x_min.max(0.0) as i32, d.y_min.max(0.0) as i32);
        let size = Size::new(
            (d.x_max - d.x_min).max(1.0) as u32,
            (d.y_max - d.y_min).max(1.0) as u32,
        );
        let _ = Rectangle::new(Point::new(x0, y0), size)
            .into_styled(PrimitiveStyle::with_stroke(colour, STROKE))
            .draw(&mut canvas);
        if d.label.is_empty() {
            continue;
        }
        // The label on a tab above the box (inside it when the box touches the top).
        let glyph = FONT_9X15.character_size;
        let tab = Size::new(
            glyph.width * d.label.chars().count() as u32 + 4,
            glyph.height + 2,
        );
        let top = if y0 >= tab.height as i32 {
            y0 - tab.height as i32
        } else {
            y0
        };
        let _ = Rectangle::new(Point::new(x0, top), tab)
            .into_styled(PrimitiveStyle::with_fill(colour))
            .draw(&mut canvas);
        let style = MonoTextStyle::new(&FONT_9X15, Rgb888::WHITE);
        let _ = Text::with_baseline(&d.label, Point::new(x0 + 2, top + 1), style, Baseline::Top)
            .draw(&mut canvas);
    }
}
