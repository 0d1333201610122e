//! The runtime on a real adapter (lavapipe in CI): errors are values, a caller's device and the
//! portable path work, a lost device is reported, timing works. Tests fail, not skip, without
//! an adapter.

use super::{Gpu, GpuOptions};
use crate::ops::View;
use crate::ops::add::add_inplace;
use crate::ops::linear::{Linear, linear_ref};
use crate::ops::norm::{RmsNorm, rms_norm_ref};
use crate::ops::{Weight, WeightFormat};
use crate::testing::{TOL, compare};

fn gpu() -> Gpu {
    Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| {
        panic!("{e}\n(tests need a GPU adapter: install mesa-vulkan-drivers for lavapipe)")
    })
}

/// `n` seeded random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

#[test]
fn gpu_errors_are_err_not_panics() {
    let g = gpu();
    // A buffer without STORAGE usage bound as storage: a validation error naming the work.
    let bad = g.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("not storage"),
        size: 64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let ok = g.storage("ok", 64).unwrap();
    let mut rec = g.recorder();
    add_inplace(&mut rec, View::new(&ok, 1, 16), View::new(&bad, 1, 16)).unwrap();
    let err = rec.submit("adding into a mapped buffer").unwrap_err();
    assert!(
        err.to_string().contains("adding into a mapped buffer"),
        "{err}"
    );
    // Too large a buffer is refused with its name.
    let err = g.storage("huge", u64::MAX / 2).unwrap_err();
    assert!(err.to_string().contains("huge"), "{err}");
    // A view past its buffer is refused before anything is recorded.
    let err = add_inplace(
        &mut g.recorder(),
        View::new(&ok, 1, 17),
        View::new(&ok, 1, 17),
    );
    assert!(err.unwrap_err().to_string().contains("bytes"));
    // And the device still works afterwards.
    let x = g.upload_f32("x", &[1.0, 2.0]).unwrap();
    let y = g.upload_f32("y", &[3.0, 4.0]).unwrap();
    let mut rec = g.recorder();
    add_inplace(&mut rec, View::new(&x, 1, 2), View::new(&y, 1, 2)).unwrap();
    rec.submit("a good add").unwrap();
    assert_eq!(g.read_f32(&x, 0, 2).unwrap(), vec![4.0, 6.0]);
}

#[test]
fn runs_on_a_device_the_caller_owns() {
    // A game engine creates its own device; the library borrows it.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("no adapter");
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default()))
            .expect("no device");
    let g = Gpu::from_device(device, queue, Some(adapter.get_info()));
    let (rows, n) = (4, 300);
    let (x, w) = (values(rows * n, 1), values(n, 2));
    let norm = RmsNorm {
        weight: g.upload_f32("w", &w).unwrap(),
        n,
        eps: 1e-6,
    };
    let xb = g.upload_f32("x", &x).unwrap();
    let yb = g.storage("y", (rows * n * 4) as u64).unwrap();
    let mut rec = g.recorder();
    let (xv, yv) = (View::new(&xb, rows, n), View::new(&yb, rows, n));
    norm.forward(&mut rec, xv, yv).unwrap();
    rec.submit("rms_norm on the caller's device").unwrap();
    let got = g.read_f32(&yb, 0, rows * n).unwrap();
    compare(
        "rms_norm (caller's device)",
        &got,
        &rms_norm_ref(&x, &w, rows, n, 1e-6),
        TOL,
    )
    .unwrap();
    // The handle moves to and works on another thread (a game's render thread, say).
    std::thread::spawn(move || g.read_f32(&yb, 0, 1).unwrap())
        .join()
        .unwrap();
}

#[test]
fn runs_without_optional_features() {
    // The portable path: no timestamps requested, 16-bit weights all the same.
    let g = Gpu::new(&GpuOptions {
        no_optional_features: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(g.features(), wgpu::Features::empty());
    let (m, n, k) = (3, 37, 70);
    let (w, x) = (values(n * k, 3), values(m * k, 4));
    let lin = Linear {
        weight: Weight::from_f32(&g, "w", &w, WeightFormat::F16, n, k).unwrap(),
        bias: None,
    };
    let xb = g.upload_f32("x", &x).unwrap();
    let yb = g.storage("y", (m * n * 4) as u64).unwrap();
    let mut rec = g.recorder();
    lin.forward(&mut rec, View::new(&xb, m, k), View::new(&yb, m, n))
        .unwrap();
    rec.submit("linear without optional features").unwrap();
    let want = linear_ref(&x, &WeightFormat::F16.round_trip(&w), None, m, n, k);
    let got = g.read_f32(&yb, 0, m * n).unwrap();
    compare("linear (no optional features)", &got, &want, TOL).unwrap();
}

/// Cooperative matrices are opt-in, and turning them on where the device lacks the features is
/// an error naming them, not a pipeline that fails later (or, worse, runs).
#[test]
fn cooperative_matrices_are_opt_in_and_checked() {
    let plain = gpu();
    assert!(!plain.cooperative_matrix(), "on without being asked for");
    if !plain.features().contains(Gpu::COOPERATIVE_MATRIX_FEATURES) {
        let e = plain.set_cooperative_matrix(true).unwrap_err().to_string();
        assert!(e.contains("EXPERIMENTAL_COOPERATIVE_MATRIX"), "{e}");
        assert!(!plain.cooperative_matrix());
    }
    plain.set_cooperative_matrix(false).unwrap();
    // Asked for: on exactly where the adapter supports it.
    let asked = Gpu::new(&GpuOptions {
        cooperative_matrix: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        asked.cooperative_matrix(),
        asked.features().contains(Gpu::COOPERATIVE_MATRIX_FEATURES)
    );
}

#[test]
fn a_lost_device_is_an_error_not_a_panic() {
    let g = gpu();
    let x = g.upload_f32("x", &[1.0; 64]).unwrap();
    let y = g.upload_f32("y", &[2.0; 64]).unwrap();
    let (xv, yv) = (View::new(&x, 1, 64), View::new(&y, 1, 64));
    // The same work succeeds before the device goes.
    let mut rec = g.recorder();
    add_inplace(&mut rec, xv, yv).unwrap();
    rec.submit("work on a live device").unwrap();
    g.device().destroy();
    let mut rec = g.recorder();
    let recorded = add_inplace(&mut rec, xv, yv).and_then(|_| rec.submit("work on a lost device"));
    let read = g.read_f32(&x, 0, 64);
    assert!(
        recorded.is_err() || read.is_err(),
        "a destroyed device reported no error"
    );
}

#[test]
fn submissions_are_timed_on_the_gpu_when_profiling() {
    let g = gpu();
    assert_eq!(g.take_gpu_ms(), None, "not profiling yet");
    g.set_profiling(true, false);
    let n = 1 << 20;
    let x = g.upload_f32("x", &vec![1.0; n]).unwrap();
    let y = g.upload_f32("y", &vec![2.0; n]).unwrap();
    let (xv, yv) = (View::new(&x, 1, n), View::new(&y, 1, n));
    let mut rec = g.recorder();
    add_inplace(&mut rec, xv, yv).unwrap();
    rec.copy(&y, 0, &x, 0, 16); // a copy between passes must not break the timing
    add_inplace(&mut rec, xv, yv).unwrap();
    rec.submit("timed work").unwrap();
    let ms = g.take_gpu_ms();
    if g.has_timestamps() {
        let ms = ms.expect("profiling on a device with timestamps");
        assert!(ms > 0.0 && ms < 10_000.0, "{ms} ms");
    } else {
        assert_eq!(ms, None);
    }
    assert_eq!(g.read_f32(&x, 0, 2).unwrap(), vec![4.0, 4.0]);
    // Per kernel: both dispatches land under the add kernel's name.
    g.set_profiling(true, true);
    let mut rec = g.recorder();
    add_inplace(&mut rec, xv, yv).unwrap();
    add_inplace(&mut rec, xv, yv).unwrap();
    rec.submit("timed kernels").unwrap();
    let times = g.take_kernel_times();
    if g.has_timestamps() {
        assert_eq!(times.len(), 1, "{times:?}");
        assert!(
            times[0].0.contains("add_inplace") && times[0].1 == 2,
            "{times:?}"
        );
    }
    g.set_profiling(false, false);
    assert_eq!(g.take_gpu_ms(), None);
}

#[test]
fn pipelines_are_built_once_and_failures_are_not_cached() {
    let g = gpu();
    let k = super::Kernel::new(&crate::ops::add::ADD_INPLACE);
    let (a, b) = (g.pipeline(k).unwrap(), g.pipeline(k).unwrap());
    assert_eq!(a, b, "one pipeline per kernel");
    static NO_SUCH_ENTRY: crate::shaders::Entry = crate::shaders::Entry {
        name: "no_such_entry",
        ..crate::ops::add::ADD_INPLACE
    };
    let missing = super::Kernel::new(&NO_SUCH_ENTRY);
    assert!(g.pipeline(missing).is_err());
    assert!(
        g.pipeline(missing).is_err(),
        "a failed build is reported again"
    );
}

/// A dispatch is checked against its entry point's declaration: a wrong number of buffers or a
/// params struct of another size is an error naming the entry, not a panic or a wgpu
/// validation error about a bind group.
#[test]
fn dispatches_are_checked_against_the_declaration() {
    let g = gpu();
    let x = g.upload_f32("x", &[1.0; 4]).unwrap();
    let add = &crate::ops::add::ADD_INPLACE;
    let mut rec = g.recorder();
    let e = rec.dispatch(add, &[0u32; 4], &[&x], [1, 1, 1]);
    let e = e.unwrap_err().to_string();
    assert!(
        e.contains("add::add_inplace takes 2 buffers (y, x), the dispatch passed 1"),
        "{e}"
    );
    let e = rec.dispatch(add, &[0u32; 8], &[&x, &x], [1, 1, 1]);
    let e = e.unwrap_err().to_string();
    assert!(
        e.contains("takes 16 bytes of parameters, the dispatch passed 32"),
        "{e}"
    );
    rec.submit("nothing").unwrap();
}
