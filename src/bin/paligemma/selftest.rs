//! `paligemma selftest`: whether and how fast this library runs on an adapter, in one paste.
//! The kernel case table (every kernel against its CPU reference, on awkward and real sizes,
//! the same cases `tests/kernels.rs` checks), the shipped tiny model against transformers'
//! tokens, the adapter's driver, limits and features, and the GEMV bandwidth and matmul FLOP/s
//! measured on the real-size cases. Exit status 1 when anything fails.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use paligemma::testing::{KernelCase, kernel_cases};
use paligemma::{GenerateOptions, Gpu, GpuOptions, LoadOptions, PaliGemma};

#[derive(clap::Args, Debug)]
pub struct SelftestArgs {
    /// Run on the adapter whose name contains this (see `--list-adapters`).
    #[arg(long)]
    adapter: Option<String>,
    /// The tiny model and its transformers answer (`expected.json` beside `model/`).
    #[arg(long, default_value = "tests/fixtures/mqa")]
    fixture: PathBuf,
    /// One JSON object instead of the tables (to attach to a bug report).
    #[arg(long)]
    json: bool,
}

/// One kernel family's results.
#[derive(Default, serde::Serialize)]
struct Family {
    cases: usize,
    passed: usize,
    /// The largest error / tolerance of a passing case.
    worst_of_tolerance: f64,
    failures: Vec<String>,
    not_run: Option<String>,
}

pub fn selftest(args: &SelftestArgs) -> anyhow::Result<()> {
    let gpu = Gpu::new(&GpuOptions {
        adapter_name: args.adapter.clone(),
        cooperative_matrix: true, // tested where the adapter has them
        ..Default::default()
    })?;
    let cases = kernel_cases();
    let families = check_kernels(&gpu, &cases);
    let model = check_model(&gpu, args);
    let speed = measure(&gpu, &cases);
    let pass = families.values().all(|f| f.failures.is_empty()) && model.is_ok();
    let report = serde_json::json!({
        "pass": pass,
        "adapter": adapter(&gpu),
        "kernels": families,
        "tiny_model": match &model { Ok(m) => m.clone(), Err(e) => format!("FAILED: {e:#}") },
        "speed": speed,
    });
    if args.json {
        println!("{report}");
    } else {
        print_report(&report, &families);
    }
    anyhow::ensure!(pass, "selftest failed on {}", gpu.adapter_name());
    Ok(())
}

/// Every kernel case on the adapter, grouped by family.
fn check_kernels(gpu: &Gpu, cases: &[KernelCase]) -> BTreeMap<&'static str, Family> {
    let mut families: BTreeMap<&'static str, Family> = BTreeMap::new();
    for case in cases {
        let f = families.entry(case.family).or_default();
        if !case.runs_on(gpu) {
            f.not_run = Some("no cooperative matrices (the tiled matmul serves)".into());
            continue;
        }
        f.cases += 1;
        match case.check(gpu) {
            Ok(err) => {
                f.passed += 1;
                if case.tol > 0.0 {
                    f.worst_of_tolerance = f.worst_of_tolerance.max(err / case.tol);
                }
            }
            Err(e) => f.failures.push(e),
        }
    }
    families
}

/// The tiny model's greedy answer against the one transformers gave.
fn check_model(gpu: &Gpu, args: &SelftestArgs) -> anyhow::Result<String> {
    let dir = &args.fixture;
    let read = std::fs::read_to_string(dir.join("expected.json"))
        .with_context(|| format!("{}: no expected.json (pass --fixture)", dir.display()))?;
    let expected: serde_json::Value = serde_json::from_str(&read)?;
    let want: Vec<u32> = serde_json::from_value(expected["generated_ids"].clone())?;
    let prompt = expected["prompt"]
        .as_str()
        .context("expected.json: no prompt")?;
    let model = PaliGemma::load_on(
        gpu.clone(),
        &dir.join("model"),
        &LoadOptions::in_precision(Some(paligemma::Precision::F32)),
    )?;
    let image = paligemma::preprocess::load_image(&dir.join("image.png"))?;
    let opts = GenerateOptions {
        max_new_tokens: want.len(),
        stop_at_eos: false,
        ..Default::default()
    };
    let out = model.block_on(model.generate(&image, prompt, &opts, |_, _| true))?;
    anyhow::ensure!(
        out.generated_ids == want,
        "{}: ids {:?}, transformers {want:?}",
        dir.display(),
        out.generated_ids
    );
    Ok(format!(
        "{}: the {} greedy tokens equal transformers'",
        dir.display(),
        want.len()
    ))
}

/// Each real-size product's rate in bytes (what bounds a one-row GEMV) and in arithmetic
/// (what bounds a product of many rows).
fn measure(gpu: &Gpu, cases: &[KernelCase]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let products = cases.iter().filter(|c| c.real_size && c.refuses.is_none());
    for case in products.filter(|c| c.flops > 0 && c.runs_on(gpu)) {
        let figure = match case.time(gpu, 20) {
            Ok((ms, bytes)) => format!(
                "{:.1} GB/s, {:.1} GFLOP/s",
                bytes as f64 / ms / 1e6,
                case.flops as f64 / ms / 1e6
            ),
            Err(e) => format!("not measured: {e}"),
        };
        out.insert(case.name.clone(), figure.into());
    }
    out.into()
}

fn adapter(gpu: &Gpu) -> serde_json::Value {
    let (l, f) = (gpu.limits(), gpu.features());
    let info = gpu.info();
    serde_json::json!({
        "name": gpu.adapter_name(),
        "driver": info.map(|i| format!("{} {}", i.driver, i.driver_info)),
        "device_type": info.map(|i| format!("{:?}", i.device_type)),
        "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
        "max_buffer_size": l.max_buffer_size,
        "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
        "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
        "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
        "shader_f16": f.contains(wgpu::Features::SHADER_F16),
        "subgroups": f.contains(wgpu::Features::SUBGROUP),
        "timestamps": f.contains(wgpu::Features::TIMESTAMP_QUERY),
        "cooperative_matrices": gpu.cooperative_matrix(),
    })
}

fn print_report(report: &serde_json::Value, families: &BTreeMap<&'static str, Family>) {
    let a = &report["adapter"];
    let mib = |key: &str| a[key].as_u64().unwrap_or(0) >> 20;
    println!(
        "adapter: {}, driver {}, {}",
        a["name"].as_str().unwrap_or("?"),
        a["driver"].as_str().unwrap_or("unknown"),
        a["device_type"].as_str().unwrap_or("?")
    );
    println!(
        "limits: {} MiB per storage binding, {} MiB per buffer, {} KiB of workgroup storage, \
         {} storage buffers per stage, {} invocations per workgroup",
        mib("max_storage_buffer_binding_size"),
        mib("max_buffer_size"),
        a["max_compute_workgroup_storage_size"]
            .as_u64()
            .unwrap_or(0)
            >> 10,
        a["max_storage_buffers_per_shader_stage"],
        a["max_compute_invocations_per_workgroup"]
    );
    let yes = |key: &str| if a[key] == true { "yes" } else { "no" };
    println!(
        "features: shader-f16 {}, subgroups {}, timestamps {}, cooperative matrices {}",
        yes("shader_f16"),
        yes("subgroups"),
        yes("timestamps"),
        yes("cooperative_matrices")
    );
    println!("\n| kernel family | cases passed | worst error / tolerance |\n|---|---|---|");
    for (name, f) in families {
        match &f.not_run {
            Some(why) if f.cases == 0 => println!("| {name} | not run: {why} | |"),
            _ => println!(
                "| {name} | {} of {} | {:.3} |",
                f.passed, f.cases, f.worst_of_tolerance
            ),
        }
        for e in &f.failures {
            println!("  FAILED {e}");
        }
    }
    println!(
        "\ntiny model: {}",
        report["tiny_model"].as_str().unwrap_or("")
    );
    println!("\n| real-size case | measured |\n|---|---|");
    if let Some(speed) = report["speed"].as_object() {
        for (case, figure) in speed {
            println!("| {case} | {} |", figure.as_str().unwrap_or(""));
        }
    }
    let verdict = if report["pass"] == true {
        "PASS"
    } else {
        "FAIL"
    };
    println!("\nselftest: {verdict}");
}
