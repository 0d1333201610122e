//! The kernel case table and the harness that runs it, in the manner of llama.cpp's
//! `test-backend-ops`: each case is a shape, the GPU op, its CPU reference and a tolerance.
//! `tests/kernels.rs` checks every case; `examples/bench --kernels` times the cases at the
//! real model's sizes. Not a stable API: it exists so the tests and the bench share one table.
//!
//! Tolerances are relative to max |reference|. The GPU computes in f32 and the references in
//! f64, so the error is f32 rounding: about 1e-7 per operation, growing like sqrt(k) for a
//! k-term sum; 2e-5 covers sums of up to 16384 terms with margin, while a kernel with a wrong
//! index or a missed element is off by O(1).

mod cases;

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::Result;
use crate::gpu::{Gpu, Recorder};

pub use crate::ops::sample::sample_ref;
pub use cases::kernel_cases;
pub use cases::resize::texture_with;

/// The usual tolerance: f32 arithmetic against an f64 reference.
pub const TOL: f64 = 2e-5;

/// Uploads a case's inputs and says how to run it.
type Build = Box<dyn Fn(&mut Io) -> Result<Prepared>>;
/// Records the kernel(s) under test.
type Record = Box<dyn Fn(&mut Recorder) -> Result<()>>;

/// One kernel case, built in `cases.rs`; run it with [`check`](Self::check) or
/// [`time`](Self::time).
pub struct KernelCase {
    /// The kernel family (the shader's name), for grouping.
    pub family: &'static str,
    /// What runs on which shape, e.g. `linear Matmul Bf16 m=67 n=131 k=97`.
    pub name: String,
    /// max |got - want| must stay within `tol` x max |want|.
    pub tol: f64,
    /// Whether the shape is the real model's (the bench times these).
    pub real_size: bool,
    /// When set, recording must fail with an error containing this text (bad input refused).
    pub refuses: Option<&'static str>,
    /// Floating-point operations of one run, for the products (0 for the others).
    pub flops: u64,
    seed: u64,
    build: Build,
}

/// A case ready to run: its inputs are on the GPU.
pub(crate) struct Prepared {
    pub record: Record,
    /// The buffer compared with the reference, whole (gaps a kernel must not touch included).
    pub out: wgpu::Buffer,
    pub out_len: usize,
    /// The reference's answer for the whole of `out`.
    pub want: Box<dyn FnOnce() -> Vec<f32>>,
    /// `out` holds u32 values (compared as f32, exact below 2^24).
    pub u32_out: bool,
}

/// Uploads for a case, with its random inputs drawn from the case's own seed.
pub(crate) struct Io<'g> {
    pub gpu: &'g Gpu,
    pub rng: StdRng,
    /// Bytes uploaded: what the kernel reads at least once, for the bench's bandwidth.
    pub bytes: u64,
}

impl Io<'_> {
    /// `n` values uniform in [-scale, scale).
    pub fn rand(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| self.rng.random_range(-scale..scale))
            .collect()
    }

    /// A storage buffer holding `data`.
    pub fn upload(&mut self, data: &[f32]) -> Result<wgpu::Buffer> {
        self.bytes += 4 * data.len() as u64;
        self.gpu.upload_f32("case input", data)
    }

    /// A storage buffer holding `bytes`.
    pub fn upload_bytes(&mut self, bytes: &[u8]) -> Result<wgpu::Buffer> {
        self.bytes += bytes.len() as u64;
        self.gpu.storage_init("case input", bytes)
    }
}

impl KernelCase {
    pub(crate) fn new(
        family: &'static str,
        name: String,
        tol: f64,
        build: impl Fn(&mut Io) -> Result<Prepared> + 'static,
    ) -> KernelCase {
        let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x1b3)
        });
        KernelCase {
            family,
            name,
            tol,
            real_size: false,
            refuses: None,
            flops: 0,
            seed,
            build: Box::new(build),
        }
    }

    /// Marks the case as the real model's size.
    pub(crate) fn real(mut self) -> Self {
        self.real_size = true;
        self
    }

    /// Marks the case as bad input that must be refused with `message`.
    pub(crate) fn refused(mut self, message: &'static str) -> Self {
        self.refuses = Some(message);
        self
    }

    fn prepare(&self, gpu: &Gpu) -> Result<(Prepared, u64)> {
        let mut io = Io {
            gpu,
            rng: StdRng::seed_from_u64(self.seed),
            bytes: 0,
        };
        let p = (self.build)(&mut io)?;
        Ok((p, io.bytes))
    }

    /// Whether `gpu` can run the case: the tensor-core matmul's only where it has cooperative
    /// matrices (elsewhere the case checks that the kernel is refused).
    pub fn runs_on(&self, gpu: &Gpu) -> bool {
        self.family != "matmul_coop" || gpu.cooperative_matrix()
    }

    /// Runs the case and compares with the reference: the relative error, or why it failed.
    pub fn check(&self, gpu: &Gpu) -> std::result::Result<f64, String> {
        let fail = |e: crate::Error| format!("{}: {e}", self.name);
        let (p, _) = self.prepare(gpu).map_err(fail)?;
        let mut rec = gpu.recorder();
        let recorded = (p.record)(&mut rec);
        if let Some(message) = self.refuses {
            return match recorded {
                Err(e) if e.to_string().contains(message) => Ok(0.0),
                Err(e) => Err(format!("{}: refused, but with `{e}`", self.name)),
                Ok(()) => Err(format!("{}: accepted bad input", self.name)),
            };
        }
        recorded.map_err(fail)?;
        rec.submit("a kernel case").map_err(fail)?;
        let got = if p.u32_out {
            let ids = gpu.read_u32(&p.out, 0, p.out_len).map_err(fail)?;
            ids.into_iter().map(|v| v as f32).collect()
        } else {
            gpu.read_f32(&p.out, 0, p.out_len).map_err(fail)?
        };
        compare(&self.name, &got, &(p.want)(), self.tol)
    }

    /// Milliseconds per run, by the wall clock: up to `reps` runs recorded into one submission
    /// (so the submit-and-wait cost, ~0.1 ms, is shared; fewer when a run takes over 10 ms, as
    /// on a software driver), the median of 3 such after a warm-up (or the first run alone when
    /// it took over a second); and the bytes the case's inputs and output hold (what the
    /// kernel must move at least).
    pub fn time(&self, gpu: &Gpu, reps: usize) -> Result<(f64, u64)> {
        let (p, bytes) = self.prepare(gpu)?;
        let run = |n: usize| -> Result<f64> {
            let t = Instant::now();
            let mut rec = gpu.recorder();
            for _ in 0..n {
                (p.record)(&mut rec)?;
            }
            rec.submit("a kernel case")?;
            gpu.wait()?;
            Ok(t.elapsed().as_secs_f64() * 1e3 / n as f64)
        };
        let moved = bytes + 4 * p.out_len as u64;
        let once = run(1)?;
        // A software adapter at the real sizes: three more runs would only make a slow
        // selftest slower.
        if once > 1000.0 {
            return Ok((once, moved));
        }
        let reps = ((10.0 / once) as usize).clamp(1, reps.max(1));
        let mut ms = (0..3).map(|_| run(reps)).collect::<Result<Vec<_>>>()?;
        ms.sort_by(f64::total_cmp);
        Ok((ms[1], moved))
    }
}

/// max |got - want| / max |want| when every element is within `tol` of max |want| (and
/// nothing is NaN); otherwise how many elements fail, the worst one and where.
pub fn compare(
    what: &str,
    got: &[f32],
    want: &[f32],
    tol: f64,
) -> std::result::Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: length {} vs reference {}",
            got.len(),
            want.len()
        ));
    }
    let max_ref = want
        .iter()
        .fold(0f64, |a, &b| a.max((b as f64).abs()))
        .max(1e-30);
    let limit = tol * max_ref;
    let mut fails = 0;
    let mut worst = (0usize, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = ((g as f64) - (w as f64)).abs();
        let d = if d.is_nan() { f64::INFINITY } else { d };
        if d > limit {
            fails += 1;
        }
        if d > worst.1 {
            worst = (i, d);
        }
    }
    if fails == 0 {
        return Ok(worst.1 / max_ref);
    }
    Err(format!(
        "{what}: {fails} of {} elements off by more than {tol:e} x max|ref| ({max_ref:.4e}); \
         worst at [{}]: got {} want {} (|diff| = {:.3e}, relative {:.3e})",
        got.len(),
        worst.0,
        got[worst.0],
        want[worst.0],
        worst.1,
        worst.1 / max_ref
    ))
}

pub use crate::shaders::{Access, Binding, Elem, Entry, Shader};

/// Every shader's name and complete WGSL source, for the naga portability test.
pub fn shader_sources() -> Vec<(&'static str, String)> {
    kernels()
        .iter()
        .map(|(s, _)| (s.name, s.source()))
        .collect()
}

/// Every shader with the host's declarations of its entry points, for `tests/interfaces.rs`.
pub fn kernels() -> &'static [(&'static Shader, &'static [&'static Entry])] {
    crate::ops::KERNELS
}

/// `draws` tokens drawn on `gpu` from the row `logits` as `opts` say, the i-th as the
/// `first + i`-th draw of the seed's stream: what the distribution test compares with
/// [`sample_ref`]. The kept set is found once, then drawn from `draws` times (what
/// `ops::sample::sample` does once per token).
pub fn sample_draws(
    gpu: &Gpu,
    logits: &[f32],
    opts: &crate::sampling::SamplingOptions,
    first: u32,
    draws: usize,
) -> Result<Vec<u32>> {
    use crate::ops::sample::{sample_draw, sample_threshold};
    let x = gpu.upload_f32("logits", logits)?;
    let out = gpu.storage("draws", draws as u64 * 4)?;
    let view = crate::ops::View::new(&x, 1, logits.len());
    // One submission: the kept set lives in the device's shared scratch, which another
    // thread's sampling may overwrite between two submissions.
    let mut rec = gpu.recorder();
    let kept = sample_threshold(&mut rec, view, opts)?;
    for i in 0..draws {
        sample_draw(&mut rec, view, &kept, first + i as u32, &out, i)?;
    }
    rec.submit("sample draws")?;
    gpu.read_u32(&out, 0, draws)
}

/// The names of the preludes (WGSL files without entry points).
pub fn prelude_names() -> &'static [&'static str] {
    crate::shaders::PRELUDES
}
