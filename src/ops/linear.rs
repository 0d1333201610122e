//! `shaders/linear.wgsl`: y = x W^T (+ b) for many rows (`matmul`, prefill) or one row (`gemv`,
//! decode), with W in any `WeightFormat` (f32, f16, bf16, q8, q4); Gemma's gated MLP input in
//! one GEMV; and the logits over a chunked vocabulary.

use super::{ChunkedTable, View, Weight, WeightFormat, matmul_coop, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, Recorder};
use crate::shaders::{Binding, Elem, Entry, Shader, shader};

/// Invocations per workgroup, in every entry point.
pub const WG: u32 = 256;
/// `matmul`'s output tile is TILE x TILE, each of the (TILE / 4)^2 = WG invocations computing
/// a 4 x 4 block.
pub const TILE: u32 = 64;
/// Depth of the x and W tiles staged in workgroup memory by `matmul`.
pub const TILE_K: u32 = 16;
/// Output features per GEMV workgroup; each has WG / GEMV_ROWS lanes striding over k.
pub const GEMV_ROWS: u32 = 8;
/// The most input rows one GEMV dispatch takes (a batch of decoding sequences): each weight is
/// read once for all of them. More rows go to `matmul`.
pub const GEMV_BATCH: usize = 16;
const _: () = assert!((TILE / 4) * (TILE / 4) == WG);
// matmul stages one vec4 of x and one of W per invocation per depth step.
const _: () = assert!(TILE_K * TILE / 4 == WG);

pub(crate) const SHADER: Shader = shader!(
    "linear",
    ["grid", "reduce", "weight_format", "math", "linear_io"],
    &[
        ("WG", WG),
        ("TILE", TILE),
        ("TILE_K", TILE_K),
        ("GEMV_ROWS", GEMV_ROWS),
        ("LANES", WG / GEMV_ROWS),
        ("GEMV_BATCH", GEMV_BATCH as u32),
    ]
);

/// The GEMV pipeline variants: `W_DTYPE` x `ROWS` (1, 2, 4, 8, 16: the rows of a dispatch,
/// rounded up to a power of two).
const ROW_VARIANTS: usize = GEMV_BATCH.ilog2() as usize + 1;
static GEMV_OVERRIDES: [[[(&str, u32); 2]; ROW_VARIANTS]; 5] = gemv_overrides();

const fn gemv_overrides() -> [[[(&'static str, u32); 2]; ROW_VARIANTS]; 5] {
    let mut t = [[[("W_DTYPE", 0), ("ROWS", 1)]; ROW_VARIANTS]; 5];
    let mut f = 0;
    while f < 5 {
        let mut r = 0;
        while r < ROW_VARIANTS {
            t[f][r] = [("W_DTYPE", f as u32), ("ROWS", 1 << r)];
            r += 1;
        }
        f += 1;
    }
    t
}

/// The GEMV entry `entry` for `rows` (1..=GEMV_BATCH) rows of weights in `format`.
fn gemv_kernel(entry: &'static Entry, format: WeightFormat, rows: usize) -> Kernel {
    let dtype = format.dtype() as usize;
    let variant = rows.next_power_of_two().ilog2() as usize;
    Kernel::new(entry).with(&GEMV_OVERRIDES[dtype][variant])
}

/// Mirrors `Params` in linear_io.wgsl, the prelude `matmul_coop` shares (the size is checked
/// against it by `tests/interfaces.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    x_offset: u32,
    x_stride: u32,
    y_offset: u32,
    y_stride: u32,
    /// Quantized weights: where the (scale, min) words of W and W2 start in their buffers.
    w_scales: u32,
    w2_scales: u32,
    _pad: [u32; 2],
}

/// Bytes of the linear layers' parameters (the `linear_io` prelude's), for `matmul_coop`.
pub(super) const PARAMS: usize = size_of::<Params>();

const X: Binding = Binding::read(1, "x", Elem::F32);
const W: Binding = Binding::read(2, "w", Elem::U32x4);
const B: Binding = Binding::read(3, "b", Elem::F32);
const Y: Binding = Binding::read_write(4, "y", Elem::F32);
/// `gemv_gated`'s second weight (the up projection; W is the gate).
const W2: Binding = Binding::read(5, "w2", Elem::U32x4);

/// The `linear_io` prelude's bindings of a product y = x W^T (+ b), shared by every entry but
/// `gemv_gated` (and by `matmul_coop`).
pub(super) const IO: &[Binding] = &[X, W, B, Y];

/// The tiled many-row product, weights in `W_DTYPE`.
pub(crate) const MATMUL: Entry = Entry {
    shader: &SHADER,
    name: "matmul",
    params: PARAMS,
    bindings: IO,
};

/// Up to GEMV_BATCH rows (`ROWS`), each weight read once.
pub(crate) const GEMV: Entry = Entry {
    shader: &SHADER,
    name: "gemv",
    params: PARAMS,
    bindings: IO,
};

/// [`GEMV`] with 16-byte weight loads.
pub(crate) const GEMV_VEC: Entry = Entry {
    shader: &SHADER,
    name: "gemv_vec",
    params: PARAMS,
    bindings: IO,
};

/// gelu_tanh(x W^T) * (x W2^T): no bias, y overwritten.
pub(crate) const GEMV_GATED: Entry = Entry {
    shader: &SHADER,
    name: "gemv_gated",
    params: PARAMS,
    bindings: &[X, W, Y, W2],
};

pub(crate) const ENTRIES: &[&Entry] = &[&MATMUL, &GEMV, &GEMV_VEC, &GEMV_GATED];

const BIAS: u32 = 1;
const ACCUMULATE: u32 = 2;

impl Params {
    /// The product of `w` with the rows of `x` into `y`, both checked against `w`'s shape.
    fn new(x: &View, w: &Weight, y: &View, flags: u32) -> Result<Params> {
        x.expect("linear input", x.rows, w.cols)?;
        y.expect("linear output", x.rows, w.rows)?;
        Ok(Params {
            m: u32_of("rows", x.rows)?,
            n: u32_of("out features", w.rows)?,
            k: u32_of("in features", w.cols)?,
            flags,
            x_offset: u32_of("x offset", x.offset)?,
            x_stride: u32_of("x stride", x.stride)?,
            y_offset: u32_of("y offset", y.offset)?,
            y_stride: u32_of("y stride", y.stride)?,
            w_scales: w.scale_offset,
            w2_scales: 0,
            _pad: [0; 2],
        })
    }
}

/// Which entry point computes the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearKernel {
    /// Tiled in workgroup memory; for many rows.
    Matmul,
    /// [`Matmul`](Self::Matmul) on cooperative matrices (tensor cores), f16 operands
    /// (`ops::matmul_coop`); where the device has them, for weights other than f32.
    MatmulCoop,
    /// One workgroup per GEMV_ROWS output features, each weight read once for up to
    /// [`GEMV_BATCH`] rows; for decoding.
    Gemv,
    /// [`Gemv`](Self::Gemv) with 16-byte weight loads; needs rows on 16-byte boundaries.
    GemvVec,
}

impl LinearKernel {
    /// The kernel for `m` rows of a weight with `k` columns in `format`.
    pub fn choose(m: usize, k: usize, format: WeightFormat) -> LinearKernel {
        match m {
            _ if m > GEMV_BATCH => LinearKernel::Matmul,
            _ if format.rows_vec4_aligned(k) => LinearKernel::GemvVec,
            _ => LinearKernel::Gemv,
        }
    }

    /// [`choose`](Self::choose) on `gpu`: `Matmul` becomes `MatmulCoop` where cooperative
    /// matrices are on and the weights are not f32 (whose precision f16 operands would lose).
    pub fn choose_on(gpu: &Gpu, m: usize, k: usize, format: WeightFormat) -> LinearKernel {
        match LinearKernel::choose(m, k, format) {
            LinearKernel::Matmul if gpu.cooperative_matrix() && format != WeightFormat::F32 => {
                LinearKernel::MatmulCoop
            }
            kernel => kernel,
        }
    }

    /// Whether this kernel takes any number of rows (the GEMVs take up to [`GEMV_BATCH`]).
    fn many_rows(self) -> bool {
        matches!(self, LinearKernel::Matmul | LinearKernel::MatmulCoop)
    }

    fn entry(self) -> &'static Entry {
        match self {
            LinearKernel::Matmul => &MATMUL,
            LinearKernel::MatmulCoop => &matmul_coop::MATMUL_COOP,
            LinearKernel::Gemv => &GEMV,
            LinearKernel::GemvVec => &GEMV_VEC,
        }
    }
}

/// A linear layer as checkpoints store it: `weight` `[out, in]` and an optional `bias` `[out]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<wgpu::Buffer>,
}

impl Linear {
    /// y = x W^T (+ b).
    pub fn forward(&self, rec: &mut Recorder, x: View, y: View) -> Result<()> {
        let w = &self.weight;
        let kernel = LinearKernel::choose_on(rec.gpu(), x.rows, w.cols, w.format);
        self.forward_with(rec, kernel, x, y, false)
    }

    /// y += x W^T (+ b): the projection and the residual connection after it in one pass.
    pub fn forward_add(&self, rec: &mut Recorder, x: View, y: View) -> Result<()> {
        let w = &self.weight;
        let kernel = LinearKernel::choose_on(rec.gpu(), x.rows, w.cols, w.format);
        self.forward_with(rec, kernel, x, y, true)
    }

    /// [`forward`](Self::forward) or, when `accumulate`, [`forward_add`](Self::forward_add),
    /// with an explicit kernel (tests run every kernel on every shape).
    pub fn forward_with(
        &self,
        rec: &mut Recorder,
        kernel: LinearKernel,
        x: View,
        y: View,
        accumulate: bool,
    ) -> Result<()> {
        let w = &self.weight;
        if kernel == LinearKernel::MatmulCoop && !rec.gpu().cooperative_matrix() {
            return Err(Error::invalid(format!(
                "matmul_coop needs cooperative matrices, which are off on {}",
                rec.gpu().adapter_name()
            )));
        }
        if !kernel.many_rows() && x.rows > GEMV_BATCH {
            return Err(Error::invalid(format!(
                "gemv takes up to {GEMV_BATCH} rows, not {}",
                x.rows
            )));
        }
        if kernel == LinearKernel::GemvVec && !w.format.rows_vec4_aligned(w.cols) {
            return Err(Error::invalid(format!(
                "gemv_vec needs rows on 16-byte boundaries; k = {} in {:?} is not",
                w.cols, w.format
            )));
        }
        let flags =
            if self.bias.is_some() { BIAS } else { 0 } | if accumulate { ACCUMULATE } else { 0 };
        let params = Params::new(&x, w, &y, flags)?;
        let gpu = rec.gpu().clone();
        let groups = match kernel {
            LinearKernel::Matmul => [
                (w.rows as u32).div_ceil(TILE),
                (x.rows as u32).div_ceil(TILE),
                1,
            ],
            LinearKernel::MatmulCoop => [
                (w.rows as u32).div_ceil(matmul_coop::BN),
                (x.rows as u32).div_ceil(matmul_coop::BM),
                1,
            ],
            _ => gpu.grid((w.rows as u32).div_ceil(GEMV_ROWS)),
        };
        let bias = self.bias.as_ref().unwrap_or(gpu.dummy());
        let k = match kernel {
            LinearKernel::Matmul | LinearKernel::MatmulCoop => {
                Kernel::new(kernel.entry()).with(w.format.overrides())
            }
            _ => gemv_kernel(kernel.entry(), w.format, x.rows),
        };
        rec.dispatch(k, &params, &[x.buffer, &w.buffer, bias, y.buffer], groups)
    }
}

/// y = gelu_tanh(x W_gate^T) * (x W_up^T) for up to [`GEMV_BATCH`] rows: Gemma's MLP up to
/// `down_proj` in one dispatch (decode). Needs the two weights alike with rows on 16-byte boundaries; see
/// [`gated_supported`].
pub fn gemv_gated(rec: &mut Recorder, x: View, gate: &Weight, up: &Weight, y: View) -> Result<()> {
    if !gated_supported(gate, up) {
        return Err(Error::invalid(format!(
            "gemv_gated needs two [n, k] weights of one format with k a multiple of 16 bytes; got \
             {}x{} {:?} and {}x{} {:?}",
            gate.rows, gate.cols, gate.format, up.rows, up.cols, up.format
        )));
    }
    let rows = x.rows;
    if rows == 0 || rows > GEMV_BATCH {
        return Err(Error::invalid(format!(
            "gemv_gated takes 1 to {GEMV_BATCH} rows, not {rows}"
        )));
    }
    x.expect("gated MLP input", rows, gate.cols)?;
    y.expect("gated MLP output", rows, gate.rows)?;
    let params = Params {
        w2_scales: up.scale_offset,
        ..Params::new(&x, gate, &y, 0)?
    };
    let gpu = rec.gpu().clone();
    let k = gemv_kernel(&GEMV_GATED, gate.format, rows);
    let groups = gpu.grid((gate.rows as u32).div_ceil(GEMV_ROWS));
    rec.dispatch(
        k,
        &params,
        &[x.buffer, &gate.buffer, y.buffer, &up.buffer],
        groups,
    )
}

/// Whether [`gemv_gated`] can combine `gate` and `up`.
pub fn gated_supported(gate: &Weight, up: &Weight) -> bool {
    (gate.rows, gate.cols, gate.format) == (up.rows, up.cols, up.format)
        && gate.format.rows_vec4_aligned(gate.cols)
}

/// Logits of the rows of `x` against a chunked `[vocab, H]` table (the tied embedding, or an
/// untied `lm_head`): `y[r, v]` = `x[r]` . `E[v]`, each chunk filling its columns of `y`.
pub fn logits(rec: &mut Recorder, x: View, table: &ChunkedTable, y: View) -> Result<()> {
    y.expect("logits", x.rows, table.rows)?;
    for (start, chunk) in &table.chunks {
        let part = Linear {
            weight: chunk.clone(),
            bias: None,
        };
        part.forward(rec, x, y.cols(*start, chunk.rows))?;
    }
    Ok(())
}

/// CPU reference: y `[m, n]` = x `[m, k]` W^T `[k, n]` (+ b `[n]`), f64 accumulation.
pub fn linear_ref(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        let xr = &x[r * k..(r + 1) * k];
        for c in 0..n {
            let wr = &w[c * k..(c + 1) * k];
            let mut acc: f64 = xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
            if let Some(b) = b {
                acc += b[c] as f64;
            }
            y[r * n + c] = acc as f32;
        }
    }
    y
}
