//! `shaders/patch_embed.wgsl`: SigLIP's patch embedding (Conv2d with kernel = stride = patch)
//! plus the learned position embedding.

use super::{View, grid_for, u32_of};
use crate::error::{Error, Result};
use crate::gpu::Recorder;
use crate::shaders::{Binding, Elem, Entry, Shader, shader};

/// Invocations per workgroup.
pub const WG: u32 = 256;

pub(crate) const SHADER: Shader = shader!("patch_embed", ["grid"], &[("WG", WG)]);

/// Mirrors `Params` in patch_embed.wgsl (the size is checked against it by
/// `tests/interfaces.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    image_size: u32,
    patch_size: u32,
    channels: u32,
    dim: u32,
    grid: u32,
    _pad: [u32; 3],
}

/// The patch convolution plus bias and position.
pub(crate) const PATCH_EMBED: Entry = Entry {
    shader: &SHADER,
    name: "patch_embed",
    params: size_of::<Params>(),
    bindings: &[
        Binding::read(1, "pixels", Elem::F32),
        Binding::read(2, "w", Elem::F32),
        Binding::read(3, "pos_b", Elem::F32),
        Binding::read_write(4, "out", Elem::F32),
    ],
};

pub(crate) const ENTRIES: &[&Entry] = &[&PATCH_EMBED];

/// The geometry of a patch embedding.
#[derive(Clone, Copy, Debug)]
pub struct PatchGeometry {
    pub image_size: usize,
    pub patch: usize,
    pub channels: usize,
    pub dim: usize,
}

impl PatchGeometry {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch
    }
    pub fn n_patches(&self) -> usize {
        self.grid() * self.grid()
    }
}

/// SigLIP's embeddings: the patch convolution `[dim, channels, patch, patch]` with its bias
/// `[dim]`, and the learned position embedding `[n_patches, dim]`, all f32. The bias rides as
/// one more row of the position table, so the kernel binds four storage buffers (the
/// downlevel limit) instead of five.
#[derive(Clone, Debug)]
pub struct PatchEmbedding {
    pub geometry: PatchGeometry,
    pub weight: wgpu::Buffer,
    /// `[n_patches + 1, dim]`: the position embedding, then the bias.
    pub position_and_bias: wgpu::Buffer,
}

impl PatchEmbedding {
    /// Uploads the convolution `weight`, its `bias` and the `position` embedding.
    pub fn new(
        gpu: &crate::gpu::Gpu,
        geometry: PatchGeometry,
        weight: &[f32],
        bias: &[f32],
        position: &[f32],
    ) -> Result<PatchEmbedding> {
        let (n, d) = (geometry.n_patches(), geometry.dim);
        if bias.len() != d || position.len() != n * d {
            return Err(Error::invalid(format!(
                "patch embedding: bias of {} and positions of {} for {n} patches of {d}",
                bias.len(),
                position.len()
            )));
        }
        let table: Vec<f32> = position.iter().chain(bias).copied().collect();
        Ok(PatchEmbedding {
            geometry,
            weight: gpu.upload_f32("patch embedding", weight)?,
            position_and_bias: gpu.upload_f32("positions and bias", &table)?,
        })
    }

    /// out `[n_patches, dim]` = conv(pixels `[channels, size, size]`) + bias + position.
    pub fn forward(&self, rec: &mut Recorder, pixels: &wgpu::Buffer, out: View) -> Result<()> {
        let g = &self.geometry;
        if g.patch == 0 || !g.image_size.is_multiple_of(g.patch) {
            return Err(Error::invalid(format!(
                "image size {} is not a multiple of the patch size {}",
                g.image_size, g.patch
            )));
        }
        out.expect_packed("patch embeddings", g.n_patches(), g.dim)?;
        let params = Params {
            image_size: u32_of("image size", g.image_size)?,
            patch_size: u32_of("patch", g.patch)?,
            channels: u32_of("channels", g.channels)?,
            dim: u32_of("dim", g.dim)?,
            grid: u32_of("grid", g.grid())?,
            _pad: [0; 3],
        };
        let groups = grid_for(rec.gpu(), g.n_patches() * g.dim, WG);
        let buffers = [pixels, &self.weight, &self.position_and_bias, out.buffer];
        rec.dispatch(&PATCH_EMBED, &params, &buffers, groups)
    }
}

/// CPU reference for [`PatchEmbedding`].
pub fn patch_embed_ref(
    g: &PatchGeometry,
    pixels: &[f32],
    w: &[f32],
    b: &[f32],
    pos: &[f32],
) -> Vec<f32> {
    let (s, p, c, d, grid) = (g.image_size, g.patch, g.channels, g.dim, g.grid());
    let mut out = vec![0f32; g.n_patches() * d];
    for py in 0..grid {
        for px in 0..grid {
            let pi = py * grid + px;
            for o in 0..d {
                let mut acc = b[o] as f64;
                for ch in 0..c {
                    for ky in 0..p {
                        for kx in 0..p {
                            let wv = w[((o * c + ch) * p + ky) * p + kx] as f64;
                            let xv = pixels[(ch * s + py * p + ky) * s + px * p + kx] as f64;
                            acc += wv * xv;
                        }
                    }
                }
                out[pi * d + o] = (acc + pos[pi * d + o] as f64) as f32;
            }
        }
    }
    out
}
