//! The GPU preprocessor against the CPU one (`preprocess`, itself Pillow's bicubic bit for
//! bit): textures of random bytes in every format read, shrunk, enlarged, tall enough for the
//! vertical-first pass order, already the right size, and at a game's frame sizes.
use super::prepared;
use crate::ops::View;
use crate::ops::resize::preprocess_texture;
use crate::preprocess::{Resample, preprocess_with};
use crate::testing::KernelCase;

/// A texture of `format` holding `rgba` (w x h x 4 bytes in RGBA order; BGRA formats get them
/// swapped, so both hold the same picture), readable by the preprocessor and renderable.
pub fn texture_with(
    gpu: &crate::Gpu,
    format: wgpu::TextureFormat,
    (w, h): (u32, u32),
    rgba: &[u8],
) -> wgpu::Texture {
    let bgra = matches!(
        format,
        wgpu::TextureFormat::Bgra8Unorm | wgpu::TextureFormat::Bgra8UnormSrgb
    );
    let bytes: Vec<u8> = if bgra {
        rgba.chunks(4)
            .flat_map(|p| [p[2], p[1], p[0], p[3]])
            .collect()
    } else {
        rgba.to_vec()
    };
    let texture = gpu.device().create_texture(&wgpu::TextureDescriptor {
        label: Some("case texture"),
        size: wgpu::Extent3d {
            width: w,
            height: h,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUsages::COPY_SRC
            | wgpu::TextureUsages::COPY_DST
            | wgpu::TextureUsages::RENDER_ATTACHMENT,
        view_formats: &[],
    });
    gpu.queue().write_texture(
        texture.as_image_copy(),
        &bytes,
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(4 * w),
            rows_per_image: Some(h),
        },
        texture.size(),
    );
    texture
}

pub(super) fn resize_cases(v: &mut Vec<KernelCase>) {
    use wgpu::TextureFormat as F;
    let (cubic, linear) = (Resample::Bicubic, Resample::Bilinear);
    for (w, h, size, format, filter, real) in [
        (1, 1, 8, F::Rgba8Unorm, cubic, false),
        (5, 7, 32, F::Rgba8Unorm, cubic, false),
        (97, 61, 32, F::Bgra8Unorm, cubic, false),
        (97, 61, 32, F::Bgra8Unorm, linear, false),
        (33, 130, 16, F::Rgba8UnormSrgb, cubic, false), // tall: Pillow 13 resamples vertically first
        (33, 130, 16, F::Rgba8UnormSrgb, linear, false),
        (32, 32, 32, F::Bgra8UnormSrgb, cubic, false), // already the size: normalisation only
        (65, 32, 32, F::Rgba8Unorm, cubic, false),     // one axis already the size
        (1920, 1080, 224, F::Bgra8UnormSrgb, cubic, true),
        (1280, 720, 448, F::Rgba8UnormSrgb, cubic, true),
        (800, 600, 896, F::Rgba8Unorm, cubic, true),
        (1920, 1080, 896, F::Bgra8UnormSrgb, linear, true), // Gemma 3
    ] {
        let case = preprocess_texture_case(w, h, size, format, filter);
        v.push(if real { case.real() } else { case });
    }
    refused_texture_cases(v);
}

/// A random `w` x `h` texture of `format` preprocessed to `size` by `filter`: the CPU
/// preprocessor's bits.
fn preprocess_texture_case(
    w: u32,
    h: u32,
    size: u32,
    format: wgpu::TextureFormat,
    filter: Resample,
) -> KernelCase {
    let name = format!("preprocess_texture {w}x{h} {format:?} -> {size} {filter:?}");
    KernelCase::new("resize", name, 0.0, move |io| {
        let rgba: Vec<u8> = io
            .rand((w * h * 4) as usize, 1.0)
            .iter()
            .map(|u| ((u + 1.0) * 127.99) as u8)
            .collect();
        let texture = texture_with(io.gpu, format, (w, h), &rgba);
        let n = (3 * size * size) as usize;
        let init = io.rand(n + 5, 1.0);
        let out = io.upload(&init)?;
        let o = out.clone();
        prepared(
            out,
            init.len(),
            move |rec| {
                let out = placed_pixels(&o, size);
                preprocess_texture(rec, &texture, size as usize, filter, out)
            },
            move || {
                let rgb: Vec<u8> = rgba.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
                let img = image::RgbImage::from_raw(w, h, rgb).expect("w * h pixels");
                let px = preprocess_with(&image::DynamicImage::ImageRgb8(img), size, filter);
                let mut want = init;
                want[2..2 + n].copy_from_slice(&px);
                want
            },
        )
    })
}

/// Textures the preprocessor cannot read are refused, naming why.
fn refused_texture_cases(v: &mut Vec<KernelCase>) {
    for (format, usage, why) in [
        (
            wgpu::TextureFormat::Rgba16Float,
            wgpu::TextureUsages::COPY_SRC,
            "rgba8 or bgra8",
        ),
        (
            wgpu::TextureFormat::Rgba8Unorm,
            wgpu::TextureUsages::TEXTURE_BINDING,
            "lacks COPY_SRC",
        ),
    ] {
        v.push(
            KernelCase::new(
                "resize",
                format!("refuses {format:?} {usage:?}"),
                0.0,
                move |io| {
                    let texture = io.gpu.device().create_texture(&wgpu::TextureDescriptor {
                        label: Some("unreadable"),
                        size: wgpu::Extent3d {
                            width: 4,
                            height: 4,
                            depth_or_array_layers: 1,
                        },
                        mip_level_count: 1,
                        sample_count: 1,
                        dimension: wgpu::TextureDimension::D2,
                        format,
                        usage,
                        view_formats: &[],
                    });
                    let out = io.upload(&[0.0; 3 * 64])?;
                    let o = out.clone();
                    prepared(
                        out,
                        3 * 64,
                        move |rec| {
                            let out = View::new(&o, 3, 64);
                            preprocess_texture(rec, &texture, 8, Resample::Bicubic, out)
                        },
                        Vec::new,
                    )
                },
            )
            .refused(why),
        );
    }
}

/// The pixels `[3, size * size]` at offset 2 of `b` (so writes outside are caught).
fn placed_pixels(b: &wgpu::Buffer, size: u32) -> View<'_> {
    let plane = (size * size) as usize;
    View {
        buffer: b,
        rows: 3,
        width: plane,
        offset: 2,
        stride: plane,
    }
}
