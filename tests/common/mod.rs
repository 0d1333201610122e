//! Shared test helpers: the GPU (tests fail, never skip, without an adapter), one error
//! measure, and the fixtures' location.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use paligemma::{Gpu, GpuOptions};

/// The test GPU, made once per test binary. Panics (so the test fails) when no adapter exists:
/// CI has lavapipe, and a skipped kernel test proves nothing.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        report_vulkan_validation();
        let gpu = Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| {
            panic!("{e}\n(tests need a GPU adapter: install mesa-vulkan-drivers for lavapipe)")
        });
        eprintln!("test adapter: {}", gpu.adapter_name());
        gpu
    })
}

/// Fails unless every |got[i] - want[i]| <= tol * max |want| (and nothing is NaN); the
/// message gives the number of failing elements, the worst one and its index. Returns
/// max |got - want| / max |want|, the fixtures' measure.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    paligemma::testing::compare(what, got, want, tol).unwrap_or_else(|e| panic!("{e}"))
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

/// The naga capabilities a shader is validated with: what every backend has, plus what the
/// device features it declares (`Shader::features`) grant. `unpack2x16float` (16-bit weights)
/// is core WGSL; naga names it SHADER_FLOAT16_IN_FLOAT32, which wgpu grants on Vulkan, Metal,
/// DX12 and GL ES 3.1. A shader that uses more than it declares fails validation.
pub fn naga_capabilities(features: wgpu::Features) -> naga::valid::Capabilities {
    use naga::valid::Capabilities;
    let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if features.contains(wgpu::Features::SHADER_F16) {
        caps |= Capabilities::SHADER_FLOAT16;
    }
    if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
        caps |= Capabilities::COOPERATIVE_MATRIX;
    }
    caps
}

/// Prints every message of the Vulkan validation layer, which wgpu enables in debug builds when
/// the layer is installed (`vulkan-validationlayers`) and reports through `log`, prefixed with
/// `VULKAN VALIDATION:` so that CI's validation step can fail on any (the tests alone would not
/// see them: wgpu does not turn them into errors).
pub fn report_vulkan_validation() {
    struct Validation;
    impl log::Log for Validation {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.target().starts_with("wgpu_hal::vulkan") && m.level() <= log::Level::Warn
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("VULKAN VALIDATION: {}", r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Validation = Validation;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}
