//! `shaders/sample.wgsl`: the next token drawn on the GPU from softmax(logits / T) with top-k
//! and top-p applied, so a sampled token reads back 4 bytes, as a greedy one does, and a
//! sampled step can be chained to the next on the GPU like a greedy one.

use super::argmax::{PARTS, best_of_parts, parts, parts_of};
use super::{View, u32_of};
use crate::error::{Error, Result};
use crate::gpu::Recorder;
use crate::sampling::SamplingOptions;
use crate::shaders::{Binding, Elem, Entry, Shader, shader};

/// Invocations per workgroup: argmax's, since the draw ends with its second pass.
pub const WG: u32 = super::argmax::WG;
/// Logits each `sample_sort` workgroup sorts in workgroup memory: 4 per invocation, 8 KiB of
/// keys and running sums (WebGPU's default allows 16 KiB).
pub const SLICE: u32 = 1024;

pub(crate) const SHADER: Shader = shader!(
    "sample",
    ["best"],
    &[("WG", WG), ("SLICE", SLICE), ("PARTS", PARTS)]
);

/// Mirrors `Params` in sample.wgsl (the size is checked against it by `tests/interfaces.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    offset: u32,
    top_k: u32,
    slices: u32,
    inv_t: f32,
    top_p: f32,
    seed_lo: u32,
    seed_hi: u32,
    counter: u32,
    filtered: u32,
    temperature: f32,
    _pad: u32,
}

const X: Binding = Binding::read(1, "x", Elem::F32);
const PARTS_BINDING: Binding = Binding::read_write(2, "parts", Elem::U32);
const SCRATCH: Binding = Binding::read_write(3, "scratch", Elem::U32);

/// Each slice of the row sorted, with its running sums of probability.
pub(crate) const SAMPLE_SORT: Entry = Entry {
    shader: &SHADER,
    name: "sample_sort",
    params: size_of::<Params>(),
    bindings: &[X, SCRATCH],
};

/// The logit threshold of the top-k and top-p set, found from the sorted slices.
pub(crate) const SAMPLE_THRESHOLD: Entry = Entry {
    shader: &SHADER,
    name: "sample_threshold",
    params: size_of::<Params>(),
    bindings: &[SCRATCH],
};

/// Each slice's best Gumbel-perturbed score among the kept tokens, as argmax's parts.
pub(crate) const SAMPLE_PARTS: Entry = Entry {
    shader: &SHADER,
    name: "sample_parts",
    params: size_of::<Params>(),
    bindings: &[X, PARTS_BINDING, SCRATCH],
};

pub(crate) const ENTRIES: &[&Entry] = &[&SAMPLE_SORT, &SAMPLE_THRESHOLD, &SAMPLE_PARTS];

/// `out[out_index]` = a token drawn from the one row of logits `x` as `opts` say (a
/// temperature above 0), `u32::MAX` when no logit is finite. The draw is the `counter`-th of
/// `opts.seed`'s stream: a sequence passes the position it chooses a token for, so its tokens
/// depend on its seed alone, whatever runs beside it. Four dispatches with top-k or top-p,
/// two without.
pub fn sample(
    rec: &mut Recorder,
    x: View,
    opts: &SamplingOptions,
    counter: u32,
    out: &wgpu::Buffer,
    out_index: usize,
) -> Result<()> {
    let kept = sample_threshold(rec, x, opts)?;
    sample_draw(rec, x, &kept, counter, out, out_index)
}

/// The kept set of a row, as the scratch holds it for [`sample_draw`].
pub(crate) struct Kept {
    params: Params,
    /// The threshold (and the sorted slices), or the dummy when nothing is filtered.
    scratch: wgpu::Buffer,
}

/// Records the passes that find the row's kept set (none when neither top-k nor top-p
/// applies). Its draws must follow before anything else samples.
pub(crate) fn sample_threshold(
    rec: &mut Recorder,
    x: View,
    opts: &SamplingOptions,
) -> Result<Kept> {
    x.expect("sample input", 1, x.width)?;
    if opts.is_greedy() {
        return Err(Error::invalid(format!(
            "sampling needs a temperature above 0 with a finite inverse, got {}",
            opts.temperature
        )));
    }
    opts.check().map_err(|e| Error::invalid(e.to_string()))?;
    let n = u32_of("n", x.width)?;
    let filtered = opts.top_k > 0 || opts.top_p < 1.0;
    let slices = n.div_ceil(SLICE);
    let params = Params {
        n,
        offset: u32_of("offset", x.offset)?,
        top_k: opts.top_k.min(u32::MAX as usize) as u32,
        slices,
        inv_t: 1.0 / opts.temperature,
        top_p: opts.top_p,
        seed_lo: opts.seed as u32,
        seed_hi: (opts.seed >> 32) as u32,
        counter: 0,
        filtered: filtered as u32,
        temperature: opts.temperature,
        _pad: 0,
    };
    if !filtered {
        let scratch = rec.gpu().dummy().clone();
        return Ok(Kept { params, scratch });
    }
    // Sorted keys and running sums, a (largest key, count) pair per slice, the threshold.
    let words = 2 * slices as u64 * SLICE as u64 + 2 * slices as u64 + 1;
    let scratch = rec.gpu().shared_scratch("sample scratch", words * 4)?;
    rec.dispatch(&SAMPLE_SORT, &params, &[x.buffer, &scratch], [slices, 1, 1])?;
    rec.dispatch(&SAMPLE_THRESHOLD, &params, &[&scratch], [1, 1, 1])?;
    Ok(Kept { params, scratch })
}

/// Records the `counter`-th draw from the kept set of `x` into `out[out_index]`.
pub(crate) fn sample_draw(
    rec: &mut Recorder,
    x: View,
    kept: &Kept,
    counter: u32,
    out: &wgpu::Buffer,
    out_index: usize,
) -> Result<()> {
    let params = Params {
        counter,
        ..kept.params
    };
    let parts = parts(rec)?;
    let buffers = [x.buffer, &parts, &kept.scratch];
    let groups = [parts_of(params.n), 1, 1];
    rec.dispatch(&SAMPLE_PARTS, &params, &buffers, groups)?;
    best_of_parts(rec, &parts, params.n, out, u32_of("out index", out_index)?)
}

/// CPU reference for `sample`: the distribution it draws from, as (token, probability) pairs,
/// most probable first, in f64. The finite logits at or above a threshold are kept: the k-th
/// largest logit for top-k, then the largest logit whose tokens' mass within the top-k set
/// reaches top-p; tokens tied with a threshold are kept with it (as transformers' top-k keeps
/// them). An infinite logit is never drawn (greedy's argmax would pick +inf; softmax is NaN
/// there).
pub fn sample_ref(logits: &[f32], opts: &SamplingOptions) -> Vec<(u32, f64)> {
    let mut order: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (i as u32, l))
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let Some(&(_, top)) = order.first() else {
        return Vec::new();
    };
    let t = opts.temperature as f64;
    let weight = |l: f32| ((l as f64 - top as f64) / t).exp();
    let keep_from = |order: &mut Vec<(u32, f32)>, threshold: f32| {
        order.retain(|&(_, l)| l >= threshold);
    };
    if opts.top_k > 0 && opts.top_k < order.len() {
        let kth = order[opts.top_k - 1].1;
        keep_from(&mut order, kth);
    }
    if opts.top_p < 1.0 {
        let total: f64 = order.iter().map(|&(_, l)| weight(l)).sum();
        let mut mass = 0.0;
        let boundary = order.iter().find(|&&(_, l)| {
            mass += weight(l);
            mass >= opts.top_p as f64 * total
        });
        let boundary = boundary.map_or(order[order.len() - 1].1, |b| b.1);
        keep_from(&mut order, boundary);
    }
    let total: f64 = order.iter().map(|&(_, l)| weight(l)).sum();
    order.iter().map(|&(i, l)| (i, weight(l) / total)).collect()
}
