//! Image preprocessing, mirroring what transformers' `SiglipImageProcessor` (PIL backend) does
//! for PaliGemma: convert to RGB, resize to `size x size` with Pillow's `Image.resize(...,
//! resample=BICUBIC)`, scale to `[0, 1]`, normalise with mean = std = 0.5 to `[-1, 1]`, and lay
//! the result out channel-major (CHW).
//!
//! The resize is a port of Pillow's `libImaging/Resample.c` (Pillow 13) rather than
//! `image::imageops::resize(.., FilterType::CatmullRom)`. The image crate uses the same Keys
//! kernel but runs the vertical pass first with an `f32` intermediate and no fixed-point
//! weights: measured against Pillow it is off by 1 level of 255 when shrinking and
//! by up to 12 when enlarging (5x7 -> 32x32), whereas this port reproduces Pillow bit for bit.
//! Remaining differences from transformers come from decoding, not resizing: JPEG decoders
//! disagree by a few levels (the image crate's zune-jpeg vs Pillow's libjpeg-turbo).

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
/// `[-1, 1]`, computed with the same f32 arithmetic as the processor (bit-identical for the same
/// decoded pixels). Like Pillow's `convert("RGB")`, alpha is dropped (not blended) and grayscale
/// is replicated to three channels. 16-bit images are rounded to 8 bits; Pillow instead keeps the
/// high byte of 16-bit RGB (at most 1 level apart) and saturates 16-bit grayscale at 255, a quirk
/// not worth copying.
pub fn preprocess(img: &DynamicImage, size: u32) -> Vec<f32> {
    preprocess_with(img, size, Resample::Bicubic)
}

/// Pillow's resampling filters that the processors use: PaliGemma's `SiglipImageProcessor`
/// resizes bicubic, Gemma 3's `Gemma3ImageProcessor` bilinear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    Bicubic,
    Bilinear,
}

impl Resample {
    /// The kernel and its support.
    pub(crate) fn kernel(self) -> (fn(f64) -> f64, f64) {
        match self {
            Resample::Bicubic => (bicubic, 2.0),
            Resample::Bilinear => (bilinear, 1.0),
        }
    }
}

/// [`preprocess`] with the resize done by `filter`.
pub fn preprocess_with(img: &DynamicImage, size: u32, filter: Resample) -> Vec<f32> {
    let rgb = resize_pil(&img.to_rgb8(), size, size, filter);
    let plane = (size as usize) * (size as usize);
    let mut out = vec![0.0f32; 3 * plane];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = normalize_level(px[c]);
        }
    }
    out
}

/// An 8-bit level as the processor scales it, with its float32 arithmetic: rescale by 1/255,
/// then (x - 0.5) / 0.5.
pub(crate) fn normalize_level(v: u8) -> f32 {
    (f32::from(v) / 255.0 - 0.5) / 0.5
}

/// Fixed-point precision of Pillow's 8-bit resampler (`PRECISION_BITS = 32 - 8 - 2`).
pub(crate) const PRECISION_BITS: u32 = 22;

/// Pillow's bicubic kernel (Keys, a = -0.5), support 2.
pub(crate) fn bicubic(x: f64) -> f64 {
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

/// Pillow's bilinear (triangle) kernel, support 1.
fn bilinear(x: f64) -> f64 {
    (1.0 - x.abs()).max(0.0)
}

/// Per-output-pixel source windows and weights for one axis, as Pillow's `precompute_coeffs`:
/// the kernel is widened by the scale factor when shrinking (antialiasing) and each window's
/// weights are normalised to sum 1. The 8-bit passes round them to fixed point
/// ([`fixed_point`]); float images use them as they are.
pub(crate) struct Coeffs {
    /// `(first source index, count)` per output pixel.
    pub bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output pixel (only the first `count` are used).
    pub weights: Vec<f64>,
    pub ksize: usize,
}

/// Pillow's `normalize_coeffs_8bpc`: a weight in `PRECISION_BITS` fixed point, rounded away
/// from zero.
pub(crate) fn fixed_point(w: f64) -> i32 {
    let v = w * f64::from(1u32 << PRECISION_BITS);
    if v < 0.0 {
        (v - 0.5) as i32
    } else {
        (v + 0.5) as i32
    }
}

pub(crate) fn precompute_coeffs(
    in_size: usize,
    out_size: usize,
    filter: fn(f64) -> f64,
    support: f64,
) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = support * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0f64; out_size * ksize];
    let mut k = vec![0.0f64; ksize];
    let inv_filterscale = 1.0 / filterscale;
    for (xx, w_out) in weights.chunks_exact_mut(ksize).enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        // C's `(int)(v + 0.5)`: truncation, then clamped to the image.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax =
            (((center + support + 0.5) as i64).min(in_size as i64) as usize).saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            *kx = filter((x as f64 + xmin as f64 - center + 0.5) * inv_filterscale);
            ww += *kx;
        }
        for (kx, w) in k.iter().zip(w_out.iter_mut()).take(xmax) {
            *w = if ww != 0.0 { kx / ww } else { *kx };
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

/// One separable pass over an interleaved RGB buffer of `dims = (width, height)`, resampling the
/// horizontal or vertical axis to `out` samples (Pillow's `ImagingResample{Horizontal,Vertical}_8bpc`).
fn resample_axis(
    src: &[u8],
    (w, h): (usize, usize),
    out: usize,
    horizontal: bool,
    filter: Resample,
) -> Vec<u8> {
    let (kernel, support) = filter.kernel();
    let c = precompute_coeffs(if horizontal { w } else { h }, out, kernel, support);
    let (ow, oh) = if horizontal { (out, h) } else { (w, out) };
    // Byte distance between neighbouring samples along the resampled axis.
    let step = if horizontal { 3 } else { w * 3 };
    let mut dst = vec![0u8; ow * oh * 3];
    for (p, px) in dst.chunks_exact_mut(3).enumerate() {
        let (x, y) = (p % ow, p / ow);
        let (i, base) = if horizontal {
            (x, y * w * 3)
        } else {
            (y, x * 3)
        };
        let (min, n) = c.bounds[i];
        let k = &c.weights[i * c.ksize..][..n];
        for (ch, v) in px.iter_mut().enumerate() {
            let acc = k
                .iter()
                .enumerate()
                .fold(1i64 << (PRECISION_BITS - 1), |acc, (j, &kj)| {
                    acc + i64::from(src[base + (min + j) * step + ch]) * i64::from(fixed_point(kj))
                });
            *v = clip8(acc);
        }
    }
    dst
}

/// Bicubic resize identical to Pillow's `Image.resize((width, height), Image.BICUBIC)` on an RGB
/// image: two separable passes, each rounding to `u8`. A pass whose size does not change is
/// skipped, as in Pillow (so resizing to the same size is the identity). The pass order follows
/// Pillow 13: vertical first when the height shrinks by more than twice as many pixels as the
/// width, otherwise horizontal first (Pillow 12 and older always go horizontal first; the two
/// orders differ by a few levels at most, and only for such tall inputs). Zero-sized input or
/// output gives a black (or empty) image rather than a panic.
pub fn resize_bicubic_pil(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize_pil(src, width, height, Resample::Bicubic)
}

/// [`resize_bicubic_pil`] with any of Pillow's filters (`Image.resize(.., filter)`).
pub fn resize_pil(src: &RgbImage, width: u32, height: u32, filter: Resample) -> RgbImage {
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let (w, h) = (width as usize, height as usize);
    if sw == 0 || sh == 0 || w == 0 || h == 0 {
        return RgbImage::new(width, height);
    }
    let vf = vertical_first((sw, sh), (w, h));
    let mut buf = src.as_raw().clone();
    let mut dims = (sw, sh);
    for horizontal in [!vf, vf] {
        if horizontal && dims.0 != w {
            buf = resample_axis(&buf, dims, w, true, filter);
            dims.0 = w;
        } else if !horizontal && dims.1 != h {
            buf = resample_axis(&buf, dims, h, false, filter);
            dims.1 = h;
        }
    }
    RgbImage::from_raw(width, height, buf).expect("both passes produce width * height pixels")
}

/// Whether Pillow (13) resamples the vertical axis first for `(sw, sh)` to `(w, h)`: when the
/// height shrinks by more than twice as many pixels as the width.
pub(crate) fn vertical_first((sw, sh): (usize, usize), (w, h): (usize, usize)) -> bool {
    let (dh, dw) = (sh as i64 - h as i64, sw as i64 - w as i64);
    dh > 0 && dh > 2 * dw
}

/// `Image.fromarray(x, mode="F").resize((width, height), Image.BILINEAR)` of a `[sh, sw]`
/// float image, as Pillow computes it (weights and sums in f64, stored as f32): how big_vision
/// fits a 64 x 64 segmentation mask into its box.
pub fn resize_bilinear_f32(
    src: &[f32],
    (sw, sh): (usize, usize),
    (w, h): (usize, usize),
) -> Vec<f32> {
    if sw == 0 || sh == 0 || w == 0 || h == 0 {
        return vec![0.0; w * h];
    }
    let pass = |src: &[f32], (iw, ih): (usize, usize), out: usize, horizontal: bool| {
        let c = precompute_coeffs(if horizontal { iw } else { ih }, out, bilinear, 1.0);
        let (ow, oh) = if horizontal { (out, ih) } else { (iw, out) };
        let mut dst = vec![0f32; ow * oh];
        for (p, v) in dst.iter_mut().enumerate() {
            let (x, y) = (p % ow, p / ow);
            let (i, base, step) = if horizontal {
                (x, y * iw, 1)
            } else {
                (y, x, iw)
            };
            let (min, n) = c.bounds[i];
            let k = &c.weights[i * c.ksize..][..n];
            let ss: f64 = k
                .iter()
                .enumerate()
                .map(|(j, &kj)| src[base + (min + j) * step] as f64 * kj)
                .sum();
            *v = ss as f32;
        }
        dst
    };
    let mut buf = src.to_vec();
    let mut dims = (sw, sh);
    let vf = vertical_first((sw, sh), (w, h));
    for horizontal in [!vf, vf] {
        if horizontal && dims.0 != w {
            buf = pass(&buf, dims, w, true);
            dims.0 = w;
        } else if !horizontal && dims.1 != h {
            buf = pass(&buf, dims, h, false);
            dims.1 = h;
        }
    }
    buf
}
