//! The case table: awkward sizes (1, primes, not multiples of a workgroup), operands placed at
//! offsets and strides inside larger buffers, and the real model's sizes. Outputs start random,
//! so an element a kernel fails to write, or writes where it must not, is caught.

mod attention;
mod conv;
mod elementwise;
mod linear;
pub(crate) mod resize;

use super::{KernelCase, Prepared};
use crate::error::Result;
use crate::ops::{View, WeightFormat};

pub(super) const FORMATS: [WeightFormat; 5] = [
    WeightFormat::F32,
    WeightFormat::F16,
    WeightFormat::Bf16,
    WeightFormat::Q8,
    WeightFormat::Q4,
];

/// Every case, in family order.
pub fn kernel_cases() -> Vec<KernelCase> {
    let mut v = Vec::new();
    linear::linear_cases(&mut v);
    linear::table_cases(&mut v);
    elementwise::norm_cases(&mut v);
    elementwise::elementwise_cases(&mut v);
    elementwise::rope_cases(&mut v);
    elementwise::rope_at_cases(&mut v);
    elementwise::rope_qk_cases(&mut v);
    attention::attention_cases(&mut v);
    v.extend(attention::patch_cases());
    v.extend(attention::avg_pool_cases());
    conv::conv_cases(&mut v);
    resize::resize_cases(&mut v);
    v
}

/// `m` rows of `width` inside a buffer of `init`, at `offset` and `stride`.
pub(super) fn placed(
    b: &wgpu::Buffer,
    rows: usize,
    width: usize,
    offset: usize,
    stride: usize,
) -> View<'_> {
    View {
        buffer: b,
        rows,
        width,
        offset,
        stride,
    }
}

/// `init` with rows of `width` at `offset + r * stride` replaced by `f(old, new)` of `rows`.
pub(super) fn scatter(
    init: &[f32],
    rows: &[f32],
    width: usize,
    offset: usize,
    stride: usize,
    f: impl Fn(f32, f32) -> f32,
) -> Vec<f32> {
    let mut y = init.to_vec();
    for (r, row) in rows.chunks(width).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let i = offset + r * stride + c;
            y[i] = f(y[i], v);
        }
    }
    y
}

/// The rows of `width` at `offset + r * stride`, packed.
pub(super) fn gather_rows(
    x: &[f32],
    rows: usize,
    width: usize,
    offset: usize,
    stride: usize,
) -> Vec<f32> {
    (0..rows)
        .flat_map(|r| x[offset + r * stride..][..width].to_vec())
        .collect()
}

pub(super) fn prepared(
    out: wgpu::Buffer,
    out_len: usize,
    record: impl Fn(&mut crate::gpu::Recorder) -> Result<()> + 'static,
    want: impl FnOnce() -> Vec<f32> + 'static,
) -> Result<Prepared> {
    Ok(Prepared {
        record: Box::new(record),
        out,
        out_len,
        want: Box::new(want),
        u32_out: false,
    })
}
