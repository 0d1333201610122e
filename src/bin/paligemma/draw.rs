//! `paligemma draw`, and the objects of an answer (boxes, masks) that the run and `draw` print
//! and draw.

use std::path::Path;

use anyhow::Context;
use paligemma::GpuOptions;
use paligemma::detection::{Answer, parse_answer};
use paligemma::segmentation::{Mask, SegDecoder};

/// The answer's objects, with masks where it has `<seg>` codes and a decoder is given.
pub(crate) fn objects(
    text: &str,
    image: &image::DynamicImage,
    decoder: Option<&SegDecoder>,
) -> anyhow::Result<(Answer, Vec<Option<Mask>>)> {
    let answer = parse_answer(text, image.width(), image.height());
    let masks = paligemma::segmentation::masks(&answer.detections, decoder)?;
    if decoder.is_none() && answer.detections.iter().any(|d| d.codes.is_some()) {
        eprintln!(
            "note: the answer has segmentation codes; pass --seg-decoder vae-oid.npz for masks"
        );
    }
    for (d, m) in answer.detections.iter().zip(&masks) {
        let area = m
            .as_ref()
            .map_or(String::new(), |m| format!(", mask of {} px", m.area()));
        println!(
            "box {:?}: x {:.1}..{:.1}, y {:.1}..{:.1}{area}",
            d.label, d.x_min, d.x_max, d.y_min, d.y_max
        );
    }
    Ok((answer, masks))
}

pub(crate) fn save_drawing(
    image: &image::DynamicImage,
    answer: &Answer,
    masks: &[Option<Mask>],
    out: &Path,
) -> anyhow::Result<()> {
    let mut picture = image.to_rgb8();
    paligemma::draw::draw(&mut picture, &answer.detections, masks);
    picture
        .save(out)
        .with_context(|| format!("writing {}", out.display()))
}

pub(crate) fn draw_answer(
    image_path: &Path,
    text: &str,
    seg_decoder: Option<&Path>,
    out: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let image = paligemma::preprocess::load_image(image_path)?;
    let decoder = match seg_decoder {
        Some(path) => {
            let gpu = paligemma::Gpu::new(&GpuOptions::default())?;
            Some(SegDecoder::load(&gpu, path)?)
        }
        None => None,
    };
    let (answer, masks) = objects(text, &image, decoder.as_ref())?;
    if answer.skipped > 0 {
        let nothing = if answer.detections.is_empty() {
            ", nothing to draw"
        } else {
            ""
        };
        eprintln!(
            "warning: {} malformed groups skipped{nothing}: {}",
            answer.skipped,
            answer.malformed_summary()
        );
    } else if answer.detections.is_empty() {
        eprintln!("warning: the answer has no <loc> group, nothing to draw");
    }
    save_drawing(&image, &answer, &masks, out)?;
    if json {
        let objects = paligemma::segmentation::objects_json(&answer.detections, &masks);
        println!(
            "{}",
            serde_json::json!({"detections": objects, "skipped_groups": answer.skipped})
        );
    }
    println!(
        "{}: {} objects ({} malformed groups skipped)",
        out.display(),
        answer.detections.len(),
        answer.skipped
    );
    Ok(())
}

/// Fails at once, not after the generation, when `path` cannot be a new file: its folder is
/// missing, or it is a folder itself.
pub(crate) fn check_writable(flag: &str, path: &Path) -> anyhow::Result<()> {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if path.is_dir() {
        anyhow::bail!("{flag} {}: is a folder, not a file", path.display());
    }
    if !folder.is_dir() {
        anyhow::bail!("{flag} {}: no folder {}", path.display(), folder.display());
    }
    Ok(())
}
