//! A finished generation as the JSON the Python half reads: the fields of the library's
//! `Generation`, and for `detect`/`segment` prompts the objects in the command line's shape.

use image::DynamicImage;
use paligemma::detection::{answers_with_boxes, parse_answer};
use paligemma::segmentation::{SegDecoder, masks, objects_json};
use paligemma::{Generation, Result};

/// `generation` for `prompt` about `image`, masks decoded when a decoder is loaded.
pub fn json(
    generation: &Generation,
    prompt: &str,
    image: &DynamicImage,
    decoder: Option<&SegDecoder>,
) -> Result<String> {
    let detections = if answers_with_boxes(prompt) {
        objects(&generation.text, image, decoder)?
    } else {
        serde_json::Value::Array(Vec::new())
    };
    let value = serde_json::json!({
        "text": generation.text,
        "generated_ids": generation.generated_ids,
        "prompt_ids": generation.prompt_ids,
        "finish_reason": generation.finish_reason,
        "timings": generation.timings,
        "image_size": [image.width(), image.height()],
        "detections": detections,
    });
    Ok(value.to_string())
}

/// The objects of an answer's text: boxes in `image`'s pixels, masks when a decoder is loaded.
pub fn objects(
    text: &str,
    image: &DynamicImage,
    decoder: Option<&SegDecoder>,
) -> Result<serde_json::Value> {
    let answer = parse_answer(text, image.width(), image.height());
    Ok(objects_json(
        &answer.detections,
        &masks(&answer.detections, decoder)?,
    ))
}
