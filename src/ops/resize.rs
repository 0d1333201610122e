//! `shaders/resize.wgsl`: the image preprocessor for a frame that is already on the GPU.
//! A texture is copied to a buffer as it is stored (so sRGB bytes stay sRGB bytes), resized as
//! Pillow's bicubic does in the same fixed-point arithmetic as [`crate::preprocess`] (the
//! coefficient tables are built by the same code), and normalised: the pixels equal
//! `preprocess` of the texture's RGB bytes exactly.

use super::{View, grid_for, u32_of};
use crate::error::{Error, Result};
use crate::gpu::Recorder;
use crate::preprocess::{
    PRECISION_BITS, Resample, fixed_point, normalize_level, precompute_coeffs, vertical_first,
};
use crate::shaders::{Binding, Elem, Entry, Shader, shader};

/// Invocations per workgroup.
pub const WG: u32 = 64;

pub(crate) const SHADER: Shader = shader!(
    "resize",
    ["grid"],
    &[("WG", WG), ("PRECISION_BITS", PRECISION_BITS)]
);

/// Mirrors `Params` in resize.wgsl (the size is checked against it by `tests/interfaces.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    in_w: u32,
    in_h: u32,
    out_w: u32,
    out_h: u32,
    horizontal: u32,
    src_stride: u32,
    ksize: u32,
    r_shift: u32,
    g_shift: u32,
    b_shift: u32,
    out_offset: u32,
    _pad: u32,
}

/// Packed RGB pixels, one u32 each.
const SRC: Binding = Binding::read(1, "src", Elem::U32);
/// The resampling coefficients (`resample`), or the normalised level of each byte value as
/// f32 bits (`normalize`).
const COEFFS: Binding = Binding::read(2, "coeffs", Elem::I32);

/// One resampling pass (horizontal or vertical) into `dst`.
pub(crate) const RESAMPLE: Entry = Entry {
    shader: &SHADER,
    name: "resample",
    params: size_of::<Params>(),
    bindings: &[SRC, COEFFS, Binding::read_write(3, "dst", Elem::U32)],
};

/// Packed pixels to normalised f32 planes in `out`.
pub(crate) const NORMALIZE: Entry = Entry {
    shader: &SHADER,
    name: "normalize",
    params: size_of::<Params>(),
    bindings: &[SRC, COEFFS, Binding::read_write(4, "out", Elem::F32)],
};

pub(crate) const ENTRIES: &[&Entry] = &[&RESAMPLE, &NORMALIZE];

const RGBA: [u32; 3] = [0, 8, 16];
const BGRA: [u32; 3] = [16, 8, 0];

/// The channel shifts of a texture format the preprocessor reads, or why it cannot.
fn channel_shifts(format: wgpu::TextureFormat) -> Result<[u32; 3]> {
    use wgpu::TextureFormat as F;
    match format {
        F::Rgba8Unorm | F::Rgba8UnormSrgb => Ok(RGBA),
        F::Bgra8Unorm | F::Bgra8UnormSrgb => Ok(BGRA),
        f => Err(Error::invalid(format!(
            "the texture is {f:?}; the preprocessor reads rgba8 or bgra8 (unorm or srgb)"
        ))),
    }
}

/// Checks that `texture` can be read: a 2D, single-sampled rgba8/bgra8 texture with
/// `COPY_SRC` usage (mip level 0 and array layer 0 are read). Returns its channel shifts.
fn check_texture(texture: &wgpu::Texture) -> Result<[u32; 3]> {
    let shifts = channel_shifts(texture.format())?;
    if texture.dimension() != wgpu::TextureDimension::D2 || texture.sample_count() != 1 {
        return Err(Error::invalid(format!(
            "the texture is {:?} with {} samples; the preprocessor reads single-sampled 2D \
             textures (resolve a multisampled target first)",
            texture.dimension(),
            texture.sample_count()
        )));
    }
    if !texture.usage().contains(wgpu::TextureUsages::COPY_SRC) {
        return Err(Error::invalid(format!(
            "the texture's usage {:?} lacks COPY_SRC, which the preprocessor needs to read it \
             (add it where the texture is created)",
            texture.usage()
        )));
    }
    Ok(shifts)
}

/// The processor's value of each 8-bit level, as [`preprocess`](crate::preprocess::preprocess)
/// computes it.
fn normalized_levels() -> [f32; 256] {
    std::array::from_fn(|v| normalize_level(v as u8))
}

/// Records the preprocessing of `texture` into `out` (`[3, size * size]`): copy, resize passes
/// by `filter` (PaliGemma's bicubic, Gemma 3's bilinear; skipped where a side already has the
/// size), normalisation.
pub fn preprocess_texture(
    rec: &mut Recorder,
    texture: &wgpu::Texture,
    size: usize,
    filter: Resample,
    out: View,
) -> Result<()> {
    let shifts = check_texture(texture)?;
    out.expect("preprocessed pixels", 3, size * size)?;
    let (w, h) = (texture.width() as usize, texture.height() as usize);
    let gpu = rec.gpu().clone();
    // Rows of the copy are padded to wgpu's 256-byte alignment.
    let stride = (w * 4).next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT as usize) / 4;
    let bytes = (stride * h * 4) as u64;
    if bytes > gpu.max_binding_bytes() {
        return Err(Error::invalid(format!(
            "the {w} x {h} texture takes {bytes} bytes, over the device's largest storage \
             binding of {} (scale the frame down first)",
            gpu.max_binding_bytes()
        )));
    }
    let copied = gpu.storage("texture pixels", bytes)?;
    rec.copy_texture(texture, &copied, (stride * 4) as u32);

    let mut src = (copied, (w, h), stride, shifts);
    let vf = vertical_first((w, h), (size, size));
    for horizontal in [!vf, vf] {
        let (sw, sh) = src.1;
        let (n_in, n_out) = if horizontal { (sw, size) } else { (sh, size) };
        if n_in == n_out {
            continue;
        }
        let (kernel, support) = filter.kernel();
        let c = precompute_coeffs(n_in, n_out, kernel, support);
        let mut table: Vec<i32> = c
            .bounds
            .iter()
            .flat_map(|&(first, n)| [first as i32, n as i32])
            .collect();
        table.extend(c.weights.iter().map(|&k| fixed_point(k)));
        let coeffs = gpu.storage_init("resize coefficients", bytemuck::cast_slice(&table))?;
        let (ow, oh) = if horizontal { (size, sh) } else { (sw, size) };
        let dst = gpu.storage("resized pixels", (ow * oh * 4) as u64)?;
        let params = Params {
            in_w: u32_of("width", sw)?,
            in_h: u32_of("height", sh)?,
            out_w: ow as u32,
            out_h: oh as u32,
            horizontal: horizontal as u32,
            src_stride: src.2 as u32,
            ksize: c.ksize as u32,
            r_shift: src.3[0],
            g_shift: src.3[1],
            b_shift: src.3[2],
            ..Default::default()
        };
        let groups = grid_for(&gpu, ow * oh, WG);
        rec.dispatch(&RESAMPLE, &params, &[&src.0, &coeffs, &dst], groups)?;
        src = (dst, (ow, oh), ow, RGBA);
    }
    let params = Params {
        out_w: size as u32,
        out_h: size as u32,
        src_stride: src.2 as u32,
        r_shift: src.3[0],
        g_shift: src.3[1],
        b_shift: src.3[2],
        out_offset: u32_of("output offset", out.offset)?,
        ..Default::default()
    };
    let table = gpu.storage_init(
        "normalisation table",
        bytemuck::cast_slice(&normalized_levels()),
    )?;
    let groups = grid_for(&gpu, size * size, WG);
    rec.dispatch(&NORMALIZE, &params, &[&src.0, &table, out.buffer], groups)
}
