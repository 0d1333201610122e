//! Shared test helpers: the GPU (tests fail, never skip, without an adapter), seeded random
//! data, and one `assert_close` that says how many elements fail, the largest error and where.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use paligemma::{Gpu, GpuOptions};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// The test GPU, made once per test binary. Panics (so the test fails) when no adapter exists:
/// CI has lavapipe, and a skipped kernel test proves nothing.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| {
            panic!("{e}\n(tests need a GPU adapter: install mesa-vulkan-drivers for lavapipe)")
        });
        eprintln!("test adapter: {}", gpu.adapter_name());
        gpu
    })
}

/// A seeded RNG; each test draws fresh inputs from its own seed.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in [-scale, scale).
pub fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// max |got - want| / max |want|: the fixtures' measure, robust to tiny reference values.
pub fn rel_error(got: &[f32], want: &[f32]) -> f64 {
    let max_ref = want.iter().fold(0f64, |a, &b| a.max((b as f64).abs()));
    let max_diff = got
        .iter()
        .zip(want)
        .fold(0f64, |a, (&g, &w)| a.max(((g as f64) - (w as f64)).abs()));
    if got.iter().any(|v| v.is_nan()) {
        return f64::INFINITY;
    }
    max_diff / max_ref.max(1e-30)
}

/// Fails unless every |got[i] - want[i]| <= tol * max |want| (and nothing is NaN). The message
/// gives the number of failing elements, the worst one and its index.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs reference {}",
        got.len(),
        want.len()
    );
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
    assert!(
        fails == 0,
        "{what}: {fails} of {} elements off by more than {tol:e} x max|ref| ({max_ref:.4e}); \
         worst at [{}]: got {} want {} (|diff| = {:.3e}, relative {:.3e})",
        got.len(),
        worst.0,
        got[worst.0],
        want[worst.0],
        worst.1,
        worst.1 / max_ref
    );
}

/// The repository root: where cargo built the tests, or, when the test binaries were carried
/// to another machine (the GPU machine), the working directory they run from.
pub fn repo_root() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if built.join("tests/fixtures").is_dir() {
        built
    } else {
        std::env::current_dir().expect("a working directory")
    }
}

/// tests/fixtures/<rel>.
pub fn fixture_path(rel: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(rel)
}
