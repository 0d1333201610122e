//! Images into image features: preprocessing (on the CPU for an image, on the GPU for a
//! texture), the vision tower, the projector.

use super::PaliGemma;
use crate::error::{Error, Result};
use crate::generation::ImageInput;
use crate::ops::View;
use crate::preprocess::{Resample, preprocess_with};

/// An image encoded and projected: the rows that replace the `<image>` tokens, on the GPU.
pub struct ImageFeatures {
    /// `[n, text hidden]` f32.
    pub buffer: wgpu::Buffer,
    pub n: usize,
    /// SigLIP's output before the projector, `[patches, vision hidden]` f32 (transformers'
    /// `vision_out`, for comparisons).
    pub vision: wgpu::Buffer,
}

impl PaliGemma {
    /// `image` as the model's processor prepares it: `[3, S, S]` f32, resized as Pillow
    /// resizes (bicubic for PaliGemma, bilinear for Gemma 3), normalised to [-1, 1].
    pub fn preprocess(&self, image: &image::DynamicImage) -> Vec<f32> {
        preprocess_with(image, self.image_size() as u32, self.resample())
    }

    /// The processor's resize filter.
    fn resample(&self) -> Resample {
        match self.config.image_tokens {
            None => Resample::Bicubic,
            Some(_) => Resample::Bilinear,
        }
    }

    /// Runs the vision tower and the projector on an image. Long work is submitted a layer at
    /// a time, returning to a frame loop between layers (see [`Gpu::set_polled_by_caller`](crate::Gpu::set_polled_by_caller));
    /// nothing is awaited.
    ///
    /// A texture (rgba8 or bgra8, unorm or srgb, `COPY_SRC` usage, any size whose bytes fit one
    /// storage binding: 8K frames fit the 128 MiB default) is read as its stored bytes,
    /// resized as Pillow's bicubic in the same integer arithmetic and normalised through the
    /// same table as [`preprocess`](crate::preprocess::preprocess) on the same bytes: the
    /// pixels are identical (integer math and a lookup, so on any driver), and so is the
    /// answer. Alpha is dropped, as Pillow's `convert("RGB")` drops it. On a shared device the
    /// work goes to the queue after whatever the caller has submitted so far, so a frame
    /// rendered and submitted before this call is what is read. The texture must belong to
    /// the model's device: wgpu panics on another device's texture, and offers no way to check
    /// beforehand.
    pub async fn encode(&self, image: impl Into<ImageInput<'_>>) -> Result<ImageFeatures> {
        let pixels = self.pixels(image.into())?;
        self.encode_pixels(&pixels).await
    }

    /// The image as preprocessed pixels `[3, S, S]` on the GPU: resized and normalised on the
    /// CPU for an image, on the GPU for a texture.
    pub(super) fn pixels(&self, image: ImageInput) -> Result<wgpu::Buffer> {
        let (s, c) = (self.image_size(), self.config.vision.num_channels);
        match image {
            ImageInput::Image(image) => {
                let pixels = self.preprocess(&image);
                self.gpu.upload_f32("pixels", &pixels)
            }
            ImageInput::Pixels(pixels) if pixels.len() != c * s * s => {
                Err(Error::invalid(format!(
                    "pixel buffer holds {} values, the vision tower wants {c} x {s} x {s}",
                    pixels.len()
                )))
            }
            ImageInput::Pixels(pixels) => self.gpu.upload_f32("pixels", &pixels),
            ImageInput::Texture(texture) => {
                let pixels = self.gpu.storage("pixels", (3 * s * s * 4) as u64)?;
                let mut rec = self.gpu.recorder();
                let out = View::new(&pixels, 3, s * s);
                let filter = self.resample();
                crate::ops::resize::preprocess_texture(&mut rec, &texture, s, filter, out)?;
                rec.submit("preprocessing a texture")?;
                Ok(pixels)
            }
        }
    }

    /// SigLIP, then the projector, on pixels on the GPU.
    pub(super) async fn encode_pixels(&self, pixels: &wgpu::Buffer) -> Result<ImageFeatures> {
        let (patches, n, dv, dt) = (
            self.config.vision.num_patches(),
            self.num_image_tokens(),
            self.config.vision.hidden_size,
            self.config.text.hidden_size,
        );
        let vision = self.gpu.storage("vision out", (patches * dv * 4) as u64)?;
        self.vision
            .encode_buffer(&self.gpu, pixels, &vision)
            .await?;
        let buffer = self.gpu.storage("image features", (n * dt * 4) as u64)?;
        let mut rec = self.gpu.recorder();
        let (x, y) = (View::new(&vision, patches, dv), View::new(&buffer, n, dt));
        self.projector.forward(&mut rec, x, y)?;
        rec.submit("the projector")?;
        Ok(ImageFeatures { buffer, n, vision })
    }
}
