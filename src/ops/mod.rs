//! The kernel set: for each `shaders/<name>.wgsl`, its host side and its CPU reference live in
//! `ops/<name>.rs` under the same names (`RmsNorm::forward` dispatches `rms_norm`,
//! `rms_norm_ref` is the oracle), with the constants the shader is compiled with and its
//! [`Shader`](crate::shaders::Shader). References are plain loops with f64 accumulators.
//! Each entry point's interface is declared once, as an [`Entry`] const of its module
//! (`add::ADD_INPLACE`), which the host dispatches and `tests/interfaces.rs` checks against
//! the WGSL; [`KERNELS`] lists every shader with its entries.
//!
//! Ops read and write [`View`]s: rows of f32 activations inside a buffer, checked against the
//! buffer and the op's expected shape in one place ([`View::expect`]).

pub mod activation;
pub mod add;
pub mod argmax;
pub mod attention;
pub mod avg_pool;
pub mod conv;
mod device;
pub mod gather;
pub mod linear;
pub mod matmul_coop;
pub mod norm;
pub mod patch_embed;
pub mod resize;
pub mod rope;
pub mod sample;
pub mod weights;

pub use weights::{ChunkedTable, HostWeight, Weight, WeightFormat};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::shaders::{Entry, Shader};

/// Every shader with its entry points: the naga tests translate each shader to every backend
/// (`tests/portability.rs`) and check each entry's declared interface against its WGSL, which
/// must declare no other entry point (`tests/interfaces.rs`).
pub(crate) const KERNELS: &[(&Shader, &[&Entry])] = &[
    (&activation::SHADER, activation::ENTRIES),
    (&add::SHADER, add::ENTRIES),
    (&argmax::SHADER, argmax::ENTRIES),
    (&attention::SHADER, attention::ENTRIES),
    (&avg_pool::SHADER, avg_pool::ENTRIES),
    (&conv::SHADER, conv::ENTRIES),
    (&gather::SHADER, gather::ENTRIES),
    (&linear::SHADER, linear::ENTRIES),
    (&matmul_coop::SHADER, matmul_coop::ENTRIES),
    (&norm::SHADER, norm::ENTRIES),
    (&patch_embed::SHADER, patch_embed::ENTRIES),
    (&resize::SHADER, resize::ENTRIES),
    (&rope::SHADER, rope::ENTRIES),
    (&sample::SHADER, sample::ENTRIES),
];

/// `rows` rows of `width` f32 values inside a buffer, row r starting at element
/// `offset + r * stride`: an operand of an op. Lets kernels read or write a slice of a larger
/// buffer (a KV-cache row, the last prompt row, one vocabulary chunk of the logits) without
/// copies, and carries the shape every op checks.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub rows: usize,
    pub width: usize,
    pub offset: usize,
    pub stride: usize,
}

impl<'a> View<'a> {
    /// `[rows, width]` packed from the start of `buffer`.
    pub fn new(buffer: &'a wgpu::Buffer, rows: usize, width: usize) -> View<'a> {
        View {
            buffer,
            rows,
            width,
            offset: 0,
            stride: width,
        }
    }

    /// `n` rows from row `first`.
    pub fn rows(self, first: usize, n: usize) -> View<'a> {
        View {
            offset: self.offset + first * self.stride,
            rows: n,
            ..self
        }
    }

    /// Row `r` alone.
    pub fn row(self, r: usize) -> View<'a> {
        self.rows(r, 1)
    }

    /// Columns `first..first + width` of every row.
    pub fn cols(self, first: usize, width: usize) -> View<'a> {
        View {
            offset: self.offset + first,
            width,
            ..self
        }
    }

    /// Each row cut into rows of `width` (heads, say): `[rows, k * width]` as
    /// `[rows * k, width]`. The rows must be back to back.
    pub fn split_rows(self, width: usize) -> Result<View<'a>> {
        if width == 0
            || !self.width.is_multiple_of(width)
            || (self.rows > 1 && self.stride != self.width)
        {
            return Err(Error::invalid(format!(
                "{self:?} cannot be cut into rows of {width}"
            )));
        }
        Ok(View {
            rows: self.rows * self.width / width,
            width,
            stride: width,
            ..self
        })
    }

    /// f32 elements the view covers, gaps between rows included.
    pub fn span(&self) -> usize {
        match self.rows {
            0 => 0,
            r => self.offset + (r - 1) * self.stride + self.width,
        }
    }

    /// Whether the rows are back to back from the buffer's start (what elementwise kernels,
    /// norms take).
    pub fn is_packed(&self) -> bool {
        self.offset == 0 && (self.stride == self.width || self.rows <= 1)
    }

    /// Checks that the view is `[rows, width]`, lies inside its buffer and is indexable by the
    /// shaders' u32; `what` names the operand in the error.
    pub fn expect(&self, what: &str, rows: usize, width: usize) -> Result<()> {
        if (self.rows, self.width) != (rows, width) {
            return Err(Error::invalid(format!(
                "{what} is [{}, {}], expected [{rows}, {width}]",
                self.rows, self.width
            )));
        }
        if self.width > self.stride && self.rows > 1 {
            return Err(Error::invalid(format!(
                "{what}: rows of {} overlap at stride {}",
                self.width, self.stride
            )));
        }
        let bytes = self.span() as u64 * 4;
        if bytes > self.buffer.size() {
            return Err(Error::invalid(format!(
                "{what} needs {bytes} bytes, its buffer has {}",
                self.buffer.size()
            )));
        }
        u32_of(what, self.span())?;
        Ok(())
    }

    /// [`expect`](Self::expect), and packed.
    pub fn expect_packed(&self, what: &str, rows: usize, width: usize) -> Result<()> {
        self.expect(what, rows, width)?;
        if !self.is_packed() {
            return Err(Error::invalid(format!(
                "{what} must be packed rows: {self:?}"
            )));
        }
        Ok(())
    }
}

/// Checks that a size fits the u32 the shaders index with.
pub(crate) fn u32_of(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(format!("{what} = {v} does not fit in u32")))
}

/// Workgroups for one invocation per element of `n`, in workgroups of `wg`.
pub(crate) fn grid_for(gpu: &Gpu, n: usize, wg: u32) -> [u32; 3] {
    gpu.grid(n.div_ceil(wg as usize) as u32)
}
