//! Images from Python: a path, encoded bytes, or raw pixels (what PIL and numpy hold), decoded
//! once in Rust with the GIL released.

use std::path::PathBuf;
use std::sync::Arc;

use image::DynamicImage;
use pyo3::prelude::*;

use crate::detached;

/// A decoded image, ready to answer about.
#[pyclass(module = "paligemma_wgpu._native", frozen)]
pub struct Image {
    pub(crate) image: Arc<DynamicImage>,
}

#[pymethods]
impl Image {
    /// Reads and decodes an image file (any format the command line reads).
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Image> {
        let image = detached(py, || paligemma::preprocess::load_image(&path))?;
        Ok(Image::new(image))
    }

    /// Decodes an encoded image (PNG, JPEG, WebP, ...) held in memory.
    #[staticmethod]
    fn decode(py: Python<'_>, data: &[u8]) -> PyResult<Image> {
        let image = detached(py, || {
            image::load_from_memory(data).map_err(|e| {
                paligemma::Error::Invalid(format!("image bytes ({} bytes): {e}", data.len()))
            })
        })?;
        Ok(Image::new(image))
    }

    /// Raw 8-bit pixels, row-major: 1 (gray), 3 (RGB) or 4 (RGBA) channels per pixel.
    #[staticmethod]
    fn from_pixels(width: u32, height: u32, channels: u32, data: Vec<u8>) -> PyResult<Image> {
        let bytes = data.len();
        let wrong = |what: &str| {
            pyo3::exceptions::PyValueError::new_err(format!(
                "image pixels ({width} x {height} x {channels}, {bytes} bytes): {what}"
            ))
        };
        if width == 0 || height == 0 {
            return Err(wrong("the image is empty"));
        }
        let expected = width as u64 * height as u64 * channels as u64;
        if bytes as u64 != expected {
            return Err(wrong(&format!("expected {expected} bytes")));
        }
        let image = match channels {
            1 => image::GrayImage::from_raw(width, height, data).map(DynamicImage::ImageLuma8),
            3 => image::RgbImage::from_raw(width, height, data).map(DynamicImage::ImageRgb8),
            4 => image::RgbaImage::from_raw(width, height, data).map(DynamicImage::ImageRgba8),
            _ => return Err(wrong("channels must be 1, 3 or 4")),
        };
        Ok(Image::new(image.ok_or_else(|| wrong("size mismatch"))?))
    }

    #[getter]
    fn width(&self) -> u32 {
        self.image.width()
    }

    #[getter]
    fn height(&self) -> u32 {
        self.image.height()
    }
}

impl Image {
    fn new(image: DynamicImage) -> Image {
        Image {
            image: Arc::new(image),
        }
    }
}
