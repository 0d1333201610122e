//! `shaders/rope.wgsl`: rotary position embedding, half-split, from precomputed cos/sin tables.

use super::{View, grid_for, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recorder};
use crate::shaders::{Binding, Elem, Entry, Shader, shader};

/// Invocations per workgroup.
pub const WG: u32 = 256;

pub(crate) const SHADER: Shader = shader!("rope", ["grid"], &[("WG", WG)]);

/// Mirrors `Params` in rope.wgsl (the size is checked against it by `tests/interfaces.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    heads: u32,
    head_dim: u32,
    stride: u32,
    offset: u32,
    pos0: u32,
    /// `rope_qk`'s keys: heads per row, and where their rows are.
    k_heads: u32,
    k_stride: u32,
    k_offset: u32,
    _pad: [u32; 3],
}

const COS: Binding = Binding::read(1, "cos_t", Elem::F32);
const SIN: Binding = Binding::read(2, "sin_t", Elem::F32);
const X: Binding = Binding::read_write(3, "x", Elem::F32);

/// Rows at positions pos0, pos0 + 1, ...
pub(crate) const ROPE: Entry = Entry {
    shader: &SHADER,
    name: "rope",
    params: size_of::<Params>(),
    bindings: &[COS, SIN, X],
};

/// Row r at `positions[r]`.
pub(crate) const ROPE_AT: Entry = Entry {
    shader: &SHADER,
    name: "rope_at",
    params: size_of::<Params>(),
    bindings: &[COS, SIN, X, Binding::read(4, "positions", Elem::U32)],
};

/// Queries in x and keys in k, in one dispatch.
pub(crate) const ROPE_QK: Entry = Entry {
    shader: &SHADER,
    name: "rope_qk",
    params: size_of::<Params>(),
    bindings: &[COS, SIN, X, Binding::read_write(5, "k", Elem::F32)],
};

pub(crate) const ENTRIES: &[&Entry] = &[&ROPE, &ROPE_AT, &ROPE_QK];

/// cos and sin of pos * `inv_freq[i]`, `[max_pos, head_dim / 2]` each, on the GPU.
#[derive(Clone, Debug)]
pub struct RopeTables {
    pub cos: wgpu::Buffer,
    pub sin: wgpu::Buffer,
    pub head_dim: usize,
    pub max_pos: usize,
}

/// RoPE for one kind of layer: angles pos * inv_freq with inv_freq = theta^(-2i / head_dim)
/// / factor (transformers' "linear" scaling; factor 1 is its "default").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    pub theta: f32,
    pub factor: f32,
}

impl Rope {
    /// Unscaled RoPE of base `theta`.
    pub const fn new(theta: f32) -> Rope {
        Rope { theta, factor: 1.0 }
    }
}

/// `inv_freq[i]` = 1 / theta^(2i / head_dim) / factor, rounded as transformers computes it in
/// f32 (the exponent is an f32 division, the power is correctly rounded here, then the f32
/// division by the factor).
pub fn inv_freq(head_dim: usize, rope: Rope) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let e = (2 * i) as f32 / head_dim as f32;
            1.0f32 / ((rope.theta as f64).powf(e as f64) as f32) / rope.factor
        })
        .collect()
}

/// The cos and sin tables for positions 0..max_pos: the angle is the f32 product
/// pos * inv_freq (as transformers forms it), its cos and sin evaluated in f64.
pub fn rope_tables_ref(head_dim: usize, rope: Rope, max_pos: usize) -> (Vec<f32>, Vec<f32>) {
    let f = inv_freq(head_dim, rope);
    let mut c = Vec::with_capacity(max_pos * f.len());
    let mut s = Vec::with_capacity(max_pos * f.len());
    for pos in 0..max_pos {
        for &fi in &f {
            let angle = (pos as f32 * fi) as f64;
            c.push(angle.cos() as f32);
            s.push(angle.sin() as f32);
        }
    }
    (c, s)
}

impl RopeTables {
    pub fn new(gpu: &Gpu, head_dim: usize, rope: Rope, max_pos: usize) -> Result<RopeTables> {
        if !head_dim.is_multiple_of(2) {
            return Err(Error::invalid(format!(
                "RoPE needs an even head_dim, got {head_dim}"
            )));
        }
        let (c, s) = rope_tables_ref(head_dim, rope, max_pos);
        Ok(RopeTables {
            cos: gpu.upload_f32("rope cos", &c)?,
            sin: gpu.upload_f32("rope sin", &s)?,
            head_dim,
            max_pos,
        })
    }
}

/// Rotates, in place, the `heads` head vectors of each row of `x`; row r has position
/// `pos0 + r`.
pub fn rope(
    rec: &mut Recorder,
    x: View,
    tables: &RopeTables,
    heads: usize,
    pos0: usize,
) -> Result<()> {
    let params = params(&x, tables, heads, pos0, pos0 + x.rows)?;
    dispatch(rec, &ROPE, params, x, tables, None)
}

/// [`rope`] with row r at position `positions[r]` (`u32 [x.rows]`, each at most
/// `max_position`): a batch of sequences decoding at their own positions.
pub fn rope_at(
    rec: &mut Recorder,
    x: View,
    tables: &RopeTables,
    heads: usize,
    positions: &wgpu::Buffer,
    max_position: usize,
) -> Result<()> {
    let params = params(&x, tables, heads, 0, max_position + 1)?;
    dispatch(rec, &ROPE_AT, params, x, tables, Some(positions))
}

/// RoPE on the queries `q` (`heads` per row) and the keys `k` (`k_heads` per row) of the same
/// rows, the first at position `pos0`: [`rope`] on both, in one dispatch.
pub fn rope_qk(
    rec: &mut Recorder,
    q: View,
    k: View,
    tables: &RopeTables,
    heads: usize,
    k_heads: usize,
    pos0: usize,
) -> Result<()> {
    if k.rows != q.rows {
        return Err(Error::invalid(format!(
            "rope_qk: {} query rows but {} key rows",
            q.rows, k.rows
        )));
    }
    let kp = params(&k, tables, k_heads, pos0, pos0 + k.rows)?;
    let params = Params {
        k_heads: kp.heads,
        k_stride: kp.stride,
        k_offset: kp.offset,
        ..params(&q, tables, heads, pos0, pos0 + q.rows)?
    };
    dispatch(rec, &ROPE_QK, params, q, tables, Some(k.buffer))
}

/// Checks the rows and the highest position `end - 1` against the tables.
fn params(x: &View, tables: &RopeTables, heads: usize, pos0: usize, end: usize) -> Result<Params> {
    x.expect("rotated rows", x.rows, heads * tables.head_dim)?;
    if end > tables.max_pos {
        return Err(Error::invalid(format!(
            "positions up to {end} exceed the RoPE table's {}",
            tables.max_pos
        )));
    }
    Ok(Params {
        rows: u32_of("rows", x.rows)?,
        heads: u32_of("heads", heads)?,
        head_dim: u32_of("head_dim", tables.head_dim)?,
        stride: u32_of("stride", x.stride)?,
        offset: u32_of("offset", x.offset)?,
        pos0: u32_of("position", pos0)?,
        k_heads: 0,
        k_stride: 0,
        k_offset: 0,
        _pad: [0; 3],
    })
}

/// Dispatches `entry` on `x` with the tables, and `extra` (the positions or the keys) for the
/// entries that declare a fourth binding.
fn dispatch(
    rec: &mut Recorder,
    entry: &'static Entry,
    params: Params,
    x: View,
    tables: &RopeTables,
    extra: Option<&wgpu::Buffer>,
) -> Result<()> {
    // One invocation per rotated pair, over the queries' heads and `rope_qk`'s keys.
    let heads = (params.heads + params.k_heads) as usize;
    let n = x.rows * heads * tables.head_dim / 2;
    let groups = grid_for(rec.gpu(), n, WG);
    let mut buffers = vec![&tables.cos, &tables.sin, x.buffer];
    buffers.extend(extra);
    rec.dispatch(entry, &params, &buffers, groups)
}

/// CPU reference: x [rows, heads * head_dim] rotated with positions pos0.., as transformers'
/// `apply_rotary_pos_emb` (q * cos + rotate_half(q) * sin), in f64 from the f32 angles.
pub fn rope_ref(
    x: &[f32],
    rows: usize,
    heads: usize,
    head_dim: usize,
    pos0: usize,
    rope: Rope,
) -> Vec<f32> {
    let positions: Vec<usize> = (pos0..pos0 + rows).collect();
    rope_at_ref(x, &positions, heads, head_dim, rope)
}

/// CPU reference for [`rope_at`]: row r of x at position `positions[r]`.
pub fn rope_at_ref(
    x: &[f32],
    positions: &[usize],
    heads: usize,
    head_dim: usize,
    rope: Rope,
) -> Vec<f32> {
    let f = inv_freq(head_dim, rope);
    let half = head_dim / 2;
    let mut y = x.to_vec();
    for (r, &pos) in positions.iter().enumerate() {
        for h in 0..heads {
            let o = (r * heads + h) * head_dim;
            for i in 0..half {
                let angle = (pos as f32 * f[i]) as f64;
                let (s, c) = angle.sin_cos();
                let a = x[o + i] as f64;
                let b = x[o + i + half] as f64;
                y[o + i] = (a * c - b * s) as f32;
                y[o + i + half] = (b * c + a * s) as f32;
            }
        }
    }
    y
}
