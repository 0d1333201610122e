//! Every WGSL kernel against its CPU reference, from one case table
//! (`paligemma::testing::kernel_cases`: shapes, the GPU op, its reference, a tolerance) run by
//! one harness, one test per kernel family. Each case draws fresh random inputs from its own
//! seed; the table holds awkward sizes (1, primes, not multiples of a workgroup), operands at
//! offsets and strides inside larger buffers, bad input that must be refused, and the real
//! model's sizes. The same cases at the real sizes are what `bench --kernels` times.

mod common;

use common::gpu;

/// Runs every case of `family`, reporting all failures at once.
fn check_family(family: &str) {
    check_family_on(gpu(), family)
}

fn check_family_on(gpu: &paligemma::Gpu, family: &str) {
    let cases: Vec<_> = paligemma::testing::kernel_cases()
        .into_iter()
        .filter(|c| c.family == family)
        .collect();
    assert!(!cases.is_empty(), "no cases for {family}");
    let mut failures = Vec::new();
    for case in &cases {
        match case.check(gpu) {
            Ok(err) => eprintln!("ok   {:.2e} (tol {:.0e})  {}", err, case.tol, case.name),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {family} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn linear() {
    check_family("linear");
}

/// The tensor-core matmul, where the device has cooperative matrices. Elsewhere it says so on
/// the terminal (past the test harness's capture) and checks that the kernel is refused rather
/// than run.
#[test]
fn matmul_coop() {
    use std::io::Write;
    let gpu = &paligemma::Gpu::new(&paligemma::GpuOptions {
        cooperative_matrix: true,
        ..Default::default()
    })
    .expect("a GPU");
    if !gpu.cooperative_matrix() {
        let _ = writeln!(
            std::io::stderr(),
            "matmul_coop: NOT RUN: {} has no cooperative matrices (EXPERIMENTAL_COOPERATIVE_MATRIX \
             with a 16x16x16 f16 configuration); the tiled matmul serves it",
            gpu.adapter_name()
        );
        let case = paligemma::testing::kernel_cases()
            .into_iter()
            .find(|c| c.family == "matmul_coop")
            .expect("matmul_coop cases");
        let refused = case
            .check(gpu)
            .expect_err("matmul_coop ran without the feature");
        assert!(refused.contains("cooperative matrices"), "{refused}");
        return;
    }
    check_family_on(gpu, "matmul_coop");
}

#[test]
fn gather_and_logits_over_chunked_tables() {
    check_family("gather");
}

#[test]
fn norm() {
    check_family("norm");
}

#[test]
fn activation() {
    check_family("activation");
}

#[test]
fn add() {
    check_family("add");
}

#[test]
fn sample() {
    check_family("sample");
}

#[test]
fn argmax() {
    check_family("argmax");
}

#[test]
fn rope() {
    check_family("rope");
}

#[test]
fn attention() {
    check_family("attention");
}

#[test]
fn conv() {
    check_family("conv");
}

#[test]
fn patch_embed() {
    check_family("patch_embed");
}

#[test]
fn every_family_is_tested() {
    let families: std::collections::BTreeSet<&str> = paligemma::testing::kernel_cases()
        .iter()
        .map(|c| c.family)
        .collect();
    let shaders: std::collections::BTreeSet<&str> = paligemma::testing::shader_sources()
        .iter()
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(
        families, shaders,
        "every shader has cases, under its own name"
    );
}

#[test]
fn resize() {
    check_family("resize");
}

#[test]
fn avg_pool() {
    check_family("avg_pool");
}
