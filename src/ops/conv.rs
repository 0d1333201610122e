//! `shaders/conv.wgsl`: the convolutions of the segmentation decoder, in HWC layout with
//! PyTorch's weight layouts (`vae-oid.npz`).

use super::{View, grid_for, u32_of};
use crate::error::{Error, Result};
use crate::gpu::Recorder;
use crate::shaders::{Binding, Elem, Entry, Shader, shader};

/// Invocations per workgroup.
pub const WG: u32 = 256;

pub(crate) const SHADER: Shader = shader!("conv", ["grid"], &[("WG", WG)]);

/// Mirrors `Params` in conv.wgsl (the size is checked against it by `tests/interfaces.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    h: u32,
    w: u32,
    c_in: u32,
    c_out: u32,
    k: u32,
    pad: u32,
    flags: u32,
    _pad: u32,
}

/// Both convolutions read x, the weight and the bias, and write (or add to) y.
const BINDINGS: &[Binding] = &[
    Binding::read(1, "x", Elem::F32),
    Binding::read(2, "wt", Elem::F32),
    Binding::read(3, "b", Elem::F32),
    Binding::read_write(4, "y", Elem::F32),
];

/// Stride-1 "same" convolution, odd kernel.
pub(crate) const CONV2D: Entry = Entry {
    shader: &SHADER,
    name: "conv2d",
    params: size_of::<Params>(),
    bindings: BINDINGS,
};

/// Transposed convolution, kernel 4, stride 2, padding 1.
pub(crate) const CONV_TRANSPOSE2D: Entry = Entry {
    shader: &SHADER,
    name: "conv_transpose2d",
    params: size_of::<Params>(),
    bindings: BINDINGS,
};

pub(crate) const ENTRIES: &[&Entry] = &[&CONV2D, &CONV_TRANSPOSE2D];

const RELU: u32 = 1;
const ACCUMULATE: u32 = 2;

/// A convolution's weights: `weight` `[c_out, c_in, k, k]` (Conv2d) or `[c_in, c_out, 4, 4]`
/// (ConvTranspose2d), `bias` `[c_out]`, f32.
#[derive(Clone, Debug)]
pub struct Conv {
    pub weight: wgpu::Buffer,
    pub bias: wgpu::Buffer,
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
}

/// What follows the convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Nothing: y = conv(x).
    Nothing,
    /// y = relu(conv(x)).
    Relu,
    /// y += conv(x) (a residual connection).
    Add,
}

impl Then {
    fn flags(self) -> u32 {
        match self {
            Then::Nothing => 0,
            Then::Relu => RELU,
            Then::Add => ACCUMULATE,
        }
    }
}

impl Conv {
    /// Stride-1 convolution with `(k - 1) / 2` zero padding ("same"): `x` is `[h * w, c_in]`
    /// (rows of pixels), `y` `[h * w, c_out]`.
    pub fn forward(
        &self,
        rec: &mut Recorder,
        x: View,
        (h, w): (usize, usize),
        y: View,
        then: Then,
    ) -> Result<()> {
        if self.k.is_multiple_of(2) {
            return Err(Error::invalid(format!(
                "conv2d takes an odd kernel, not {}",
                self.k
            )));
        }
        self.dispatch(rec, &CONV2D, x, (h, w), y, (h * w, then))
    }

    /// Transposed convolution, kernel 4, stride 2, padding 1: `[h * w, c_in]` to
    /// `[2h * 2w, c_out]`.
    pub fn forward_transposed(
        &self,
        rec: &mut Recorder,
        x: View,
        (h, w): (usize, usize),
        y: View,
        then: Then,
    ) -> Result<()> {
        if self.k != 4 {
            return Err(Error::invalid(format!(
                "conv_transpose2d takes a 4 x 4 kernel, not {}",
                self.k
            )));
        }
        self.dispatch(rec, &CONV_TRANSPOSE2D, x, (h, w), y, (4 * h * w, then))
    }

    fn dispatch(
        &self,
        rec: &mut Recorder,
        entry: &'static Entry,
        x: View,
        (h, w): (usize, usize),
        y: View,
        (out_pixels, then): (usize, Then),
    ) -> Result<()> {
        x.expect_packed("convolution input", h * w, self.c_in)?;
        y.expect_packed("convolution output", out_pixels, self.c_out)?;
        let params = Params {
            h: u32_of("height", h)?,
            w: u32_of("width", w)?,
            c_in: u32_of("input channels", self.c_in)?,
            c_out: u32_of("output channels", self.c_out)?,
            k: u32_of("kernel", self.k)?,
            pad: ((self.k - 1) / 2) as u32,
            flags: then.flags(),
            _pad: 0,
        };
        let buffers = [x.buffer, &self.weight, &self.bias, y.buffer];
        let groups = grid_for(rec.gpu(), out_pixels * self.c_out, WG);
        rec.dispatch(entry, &params, &buffers, groups)
    }
}

fn then_ref(v: f64, old: f32, then: Then) -> f32 {
    match then {
        Then::Nothing => v as f32,
        Then::Relu => v.max(0.0) as f32,
        Then::Add => (v + old as f64) as f32,
    }
}

/// CPU reference for [`Conv::forward`]: x `[h, w, c_in]`, w `[c_out, c_in, k, k]`, applied to
/// `y` (read when `then` is `Add`).
pub fn conv2d_ref(
    x: &[f32],
    (h, w): (usize, usize),
    wt: &[f32],
    b: &[f32],
    (c_in, c_out, k): (usize, usize, usize),
    y: &mut [f32],
    then: Then,
) {
    let pad = (k - 1) as i64 / 2;
    for oy in 0..h {
        for ox in 0..w {
            for o in 0..c_out {
                let mut acc = b[o] as f64;
                for ky in 0..k {
                    for kx in 0..k {
                        let (iy, ix) = (oy as i64 + ky as i64 - pad, ox as i64 + kx as i64 - pad);
                        if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                            continue;
                        }
                        let base = (iy as usize * w + ix as usize) * c_in;
                        for i in 0..c_in {
                            acc +=
                                x[base + i] as f64 * wt[((o * c_in + i) * k + ky) * k + kx] as f64;
                        }
                    }
                }
                let g = (oy * w + ox) * c_out + o;
                y[g] = then_ref(acc, y[g], then);
            }
        }
    }
}

/// CPU reference for [`Conv::forward_transposed`]: x `[h, w, c_in]`, w `[c_in, c_out, 4, 4]`,
/// y `[2h, 2w, c_out]`.
pub fn conv_transpose2d_ref(
    x: &[f32],
    (h, w): (usize, usize),
    wt: &[f32],
    b: &[f32],
    (c_in, c_out): (usize, usize),
    y: &mut [f32],
    then: Then,
) {
    let (oh, ow) = (2 * h, 2 * w);
    for oy in 0..oh {
        for ox in 0..ow {
            for (o, &bias) in b.iter().enumerate().take(c_out) {
                let mut acc = bias as f64;
                for iy in 0..h {
                    for ix in 0..w {
                        let (ky, kx) =
                            (oy as i64 + 1 - 2 * iy as i64, ox as i64 + 1 - 2 * ix as i64);
                        if !(0..4).contains(&ky) || !(0..4).contains(&kx) {
                            continue;
                        }
                        for i in 0..c_in {
                            let wi = ((i * c_out + o) * 4 + ky as usize) * 4 + kx as usize;
                            acc += x[(iy * w + ix) * c_in + i] as f64 * wt[wi] as f64;
                        }
                    }
                }
                let g = (oy * ow + ox) * c_out + o;
                y[g] = then_ref(acc, y[g], then);
            }
        }
    }
}
