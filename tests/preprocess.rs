//! `preprocess` against transformers' `SiglipImageProcessor` output stored in the fixtures.

mod common;

use std::path::{Path, PathBuf};

use paligemma::preprocess::{load_image, preprocess};
use safetensors::SafeTensors;

fn case_dir(case: &str) -> PathBuf {
    common::fixture_path(case)
}

/// `vision_config.image_size` of a fixture model.
fn image_size(case: &str) -> u32 {
    let path = case_dir(case).join("model/config.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let config: serde_json::Value = serde_json::from_str(&text).expect("config.json parses");
    config["vision_config"]["image_size"]
        .as_u64()
        .expect("vision_config.image_size") as u32
}

/// A `[1, 3, S, S]` f32 tensor from `expected.safetensors`, flattened.
fn expected(case: &str, name: &str) -> Vec<f32> {
    let path = case_dir(case).join("expected.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let tensors = SafeTensors::deserialize(&bytes).expect("safetensors parses");
    let t = tensors
        .tensor(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name} dtype");
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Compares element-wise; panics with the number of failures and the worst element
/// (as channel, row, column) if any differ by more than `tol`.
fn assert_close(what: &str, got: &[f32], want: &[f32], size: u32, tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut fails, mut worst, mut at) = (0usize, 0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        fails += usize::from(d > tol || d.is_nan());
        if d > worst || d.is_nan() {
            (worst, at) = (d, i);
        }
    }
    let s = size as usize;
    let (c, y, x) = (at / (s * s), at / s % s, at % s);
    eprintln!("{what}: max |diff| {worst:e} at [c{c}, y{y}, x{x}], {fails} over {tol:e}");
    assert_eq!(
        fails,
        0,
        "{what}: {fails} of {} values differ by more than {tol:e}; worst {worst:e} at [c{c}, y{y}, x{x}] (got {}, want {})",
        got.len(),
        got[at],
        want[at]
    );
}

fn check(case: &str, file: &str, tensor: &str, tol: f32) {
    let size = image_size(case);
    let img = load_image(&case_dir(case).join(file)).expect("image loads");
    let got = preprocess(&img, size);
    assert_close(
        &format!("{case}/{file}"),
        &got,
        &expected(case, tensor),
        size,
        tol,
    );
}

#[test]
fn preprocess_matches_fixture_pixels() {
    for case in ["mqa", "gqa"] {
        check(case, "image.png", "pixel_values", 1e-6);
    }
}

/// `photo.jpg` is larger and not square, so this exercises the bicubic resize. The tolerance
/// (2/255 of the `[0, 1]` range) leaves room for JPEG decoders differing by a level.
#[test]
fn preprocess_matches_fixture_photo_resize() {
    for case in ["mqa", "gqa"] {
        check(
            case,
            "photo.jpg",
            "photo_pixel_values",
            2.0 / 255.0 * 2.0 + 1e-6,
        );
    }
}

#[test]
fn preprocess_never_panics_on_odd_images() {
    use image::{DynamicImage, GrayImage, ImageBuffer, Rgb, RgbaImage};
    let images = [
        DynamicImage::ImageRgb8(ImageBuffer::from_pixel(1, 1, Rgb([255, 0, 7]))),
        DynamicImage::ImageLuma8(GrayImage::from_fn(1000, 2, |x, _| image::Luma([x as u8]))),
        DynamicImage::ImageRgba8(RgbaImage::from_pixel(3, 500, image::Rgba([10, 20, 30, 0]))),
        DynamicImage::ImageRgb16(ImageBuffer::from_pixel(7, 5, Rgb([65535u16, 0, 32768]))),
    ];
    for img in &images {
        for size in [1, 16, 33] {
            let px = preprocess(img, size);
            assert_eq!(px.len(), 3 * (size * size) as usize);
            assert!(px.iter().all(|v| (-1.0..=1.0).contains(v)), "{px:?}");
        }
    }
    // A constant image stays constant at any size; alpha is dropped, not blended.
    let px = preprocess(&images[2], 16);
    let want = [10.0f32, 20.0, 30.0].map(|v| (v / 255.0 - 0.5) / 0.5);
    for (c, plane) in px.chunks_exact(256).enumerate() {
        assert!(plane.iter().all(|&v| v == want[c]), "channel {c}");
    }
}

#[test]
fn load_image_error_names_the_file() {
    let path = Path::new("tests/fixtures/no-such-image.png");
    let err = load_image(path).expect_err("missing file").to_string();
    assert!(err.contains("no-such-image.png"), "{err}");
    let path = case_dir("mqa").join("expected.json");
    let err = load_image(&path).expect_err("not an image").to_string();
    assert!(err.contains("expected.json"), "{err}");
}
