//! Image preprocessing, mirroring what transformers' `SiglipImageProcessor` (PIL backend) does
//! for PaliGemma: convert to RGB, resize to `size x size` with Pillow's `Image.resize(...,
//! resample=BICUBIC)`, scale to `[0, 1]`, normalise with mean = std = 0.5 to `[-1, 1]`, and lay
//! the result out channel-major (CHW).
//!
//! The resize is a port of Pillow's `libImaging/Resample.c` rather than
//! `image::imageops::resize(.., FilterType::CatmullRom)`: the image crate runs the vertical pass
//! first, keeps an `f32` intermediate and does not round coefficients to fixed point, which puts
//! it several levels of 255 away from Pillow on real photos (see `tests/preprocess.rs`), while
//! this port reproduces Pillow bit for bit.

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::error::{Error, Result};

/// Reads an image in any format the `image` crate decodes (format guessed from the content, not
/// the extension) and applies its EXIF orientation, as transformers' `load_image` does with
/// `ImageOps.exif_transpose`, so the model sees the picture the way a viewer shows it.
pub fn load_image(path: &Path) -> Result<DynamicImage> {
    let err = |source| Error::Image {
        path: path.to_path_buf(),
        source,
    };
    let reader = ImageReader::open(path)
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?
        .with_guessed_format()
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let mut decoder = reader.into_decoder().map_err(err)?;
    let orientation = decoder.orientation().map_err(err)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(err)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Turns any image into PaliGemma's pixel input: `[3, size, size]` f32 in CHW order, values in
/// `[-1, 1]`. Alpha is dropped (like Pillow's `convert("RGB")`), grayscale is replicated to three
/// channels and 16-bit samples are rounded to 8 bits (Pillow also works on 8-bit RGB here).
pub fn preprocess(img: &DynamicImage, size: u32) -> Vec<f32> {
    let rgb = resize_bicubic_pil(&img.to_rgb8(), size, size);
    let plane = (size as usize) * (size as usize);
    let mut out = vec![0.0f32; 3 * plane];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            // Same float32 arithmetic as the processor: rescale by 1/255, then (x - 0.5) / 0.5.
            out[c * plane + i] = (f32::from(px[c]) / 255.0 - 0.5) / 0.5;
        }
    }
    out
}

/// Fixed-point precision of Pillow's 8-bit resampler (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Pillow's bicubic kernel (Keys, a = -0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per-output-pixel source windows and fixed-point weights for one axis, as Pillow's
/// `precompute_coeffs` + `normalize_coeffs_8bpc`: the kernel is widened by the scale factor when
/// shrinking (antialiasing), each window's weights are normalised to sum 1, then rounded to
/// `PRECISION_BITS` fixed point (away from zero).
struct Coeffs {
    /// `(first source index, count)` per output pixel.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output pixel (only the first `count` are used).
    weights: Vec<i32>,
    ksize: usize,
}

fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0.0f64; ksize];
    for (xx, w_out) in weights.chunks_exact_mut(ksize).enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        // C's `(int)(v + 0.5)`: truncation, then clamped to the image.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax =
            (((center + support + 0.5) as i64).min(in_size as i64) as usize).saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            *kx = bicubic((x as f64 + xmin as f64 - center + 0.5) / filterscale);
            ww += *kx;
        }
        for (kx, w) in k.iter().zip(w_out.iter_mut()).take(xmax) {
            let v = if ww != 0.0 { kx / ww } else { *kx } * f64::from(1u32 << PRECISION_BITS);
            *w = if v < 0.0 {
                (v - 0.5) as i32
            } else {
                (v + 0.5) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs {
        bounds,
        weights,
        ksize,
    }
}

/// Pillow's `clip8`: drop the fixed-point fraction and clamp to `0..=255`.
fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One separable pass. `get(o, j)` reads source sample `j` (along the axis) for output line `o`,
/// the result is written through `put(o, i, value)` for output index `i`.
fn apply(
    c: &Coeffs,
    lines: usize,
    get: impl Fn(usize, usize) -> u8,
    mut put: impl FnMut(usize, usize, u8),
) {
    for o in 0..lines {
        for (i, &(min, n)) in c.bounds.iter().enumerate() {
            let w = &c.weights[i * c.ksize..i * c.ksize + n];
            let acc = w
                .iter()
                .enumerate()
                .fold(1i64 << (PRECISION_BITS - 1), |acc, (j, &wj)| {
                    acc + i64::from(get(o, min + j)) * i64::from(wj)
                });
            put(o, i, clip8(acc));
        }
    }
}

/// Bicubic resize identical to Pillow's `Image.resize((width, height), Image.BICUBIC)` on an RGB
/// image: horizontal pass then vertical pass, each rounding to `u8`. A pass whose size does not
/// change is skipped, as in Pillow (so resizing to the same size is the identity). Zero-sized
/// input or output gives an empty (or black, for an empty input) image rather than a panic.
pub fn resize_bicubic_pil(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let (w, h) = (width as usize, height as usize);
    if sw == 0 || sh == 0 || w == 0 || h == 0 {
        return RgbImage::new(width, height);
    }
    let s = src.as_raw();
    let horiz = if w != sw {
        let c = precompute_coeffs(sw, w);
        let mut tmp = vec![0u8; w * sh * 3];
        for ch in 0..3 {
            apply(
                &c,
                sh,
                |y, x| s[(y * sw + x) * 3 + ch],
                |y, x, v| tmp[(y * w + x) * 3 + ch] = v,
            );
        }
        tmp
    } else {
        s.clone()
    };
    let out = if h != sh {
        let c = precompute_coeffs(sh, h);
        let mut out = vec![0u8; w * h * 3];
        for ch in 0..3 {
            apply(
                &c,
                w,
                |x, y| horiz[(y * w + x) * 3 + ch],
                |x, y, v| out[(y * w + x) * 3 + ch] = v,
            );
        }
        out
    } else {
        horiz
    };
    RgbImage::from_raw(width, height, out).unwrap_or_else(|| RgbImage::new(width, height))
}
