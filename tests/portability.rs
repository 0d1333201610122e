//! Every shader translated with naga to SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL ES
//! 3.1 (GL / WebGL-class devices), for every entry point and weight format. A shader that only
//! one backend accepts fails here, without a Mac or a Windows machine.

use naga::back::PipelineConstants;
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn overrides_of(module: &naga::Module) -> Vec<PipelineConstants> {
    let has_dtype = module
        .overrides
        .iter()
        .any(|(_, o)| o.name.as_deref() == Some("W_DTYPE"));
    if !has_dtype {
        return vec![PipelineConstants::default()];
    }
    // f32, f16, bf16, q8, q4 (`WeightFormat`).
    (0..5)
        .map(|code| {
            let mut c = PipelineConstants::default();
            c.insert("W_DTYPE".to_string(), code as f64);
            c
        })
        .collect()
}

fn translate(name: &str, source: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let module = match naga::front::wgsl::parse_str(source) {
        Ok(m) => m,
        Err(e) => return vec![format!("{name}: parse: {}", e.emit_to_string(source))],
    };
    // Only what every backend has. `unpack2x16float` (16-bit weights) is core WGSL; naga names
    // it SHADER_FLOAT16_IN_FLOAT32, which wgpu grants on Vulkan, Metal, DX12 and GL ES 3.1.
    // The one exception is the tensor-core matmul (matmul_coop.wgsl), an optional path built
    // only on devices with cooperative matrices and f16: wgpu 30 offers its 16x16 f16
    // configuration on Vulkan alone, so it must validate with those capabilities and translate
    // to SPIR-V.
    let coop = source.contains("enable wgpu_cooperative_matrix;");
    let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if coop {
        caps |= Capabilities::COOPERATIVE_MATRIX | Capabilities::SHADER_FLOAT16;
    }
    let mut validator = Validator::new(ValidationFlags::all(), caps);
    let info = match validator.validate(&module) {
        Ok(i) => i,
        Err(e) => return vec![format!("{name}: validate: {e:?}")],
    };
    for constants in overrides_of(&module) {
        for ep in &module.entry_points {
            let what = format!("{name}::{} {:?}", ep.name, constants);
            let stage = ep.stage;
            let (module, info) = match naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((stage, &ep.name)),
                &constants,
            ) {
                Ok(x) => x,
                Err(e) => {
                    failures.push(format!("{what}: overrides: {e:?}"));
                    continue;
                }
            };
            let spv = naga::back::spv::write_vec(
                &module,
                &info,
                &naga::back::spv::Options::default(),
                Some(&naga::back::spv::PipelineOptions {
                    shader_stage: stage,
                    entry_point: ep.name.clone(),
                }),
            );
            if let Err(e) = spv {
                failures.push(format!("{what}: SPIR-V: {e:?}"));
            }
            if coop {
                continue;
            }
            let msl = naga::back::msl::write_string(
                &module,
                &info,
                &naga::back::msl::Options::default(),
                &naga::back::msl::PipelineOptions {
                    entry_point: Some((stage, ep.name.clone())),
                    ..Default::default()
                },
            );
            if let Err(e) = msl {
                failures.push(format!("{what}: MSL: {e:?}"));
            }
            let mut hlsl = String::new();
            let hlsl_options = naga::back::hlsl::Options::default();
            let hlsl_pipeline = naga::back::hlsl::PipelineOptions {
                entry_point: Some((stage, ep.name.clone())),
            };
            if let Err(e) = naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_options, &hlsl_pipeline)
                .write(&module, &info, None)
            {
                failures.push(format!("{what}: HLSL: {e:?}"));
            }
            let mut glsl = String::new();
            let glsl_options = naga::back::glsl::Options::default();
            let glsl_pipeline = naga::back::glsl::PipelineOptions {
                shader_stage: stage,
                entry_point: ep.name.clone(),
                multiview: None,
            };
            let result = naga::back::glsl::Writer::new(
                &mut glsl,
                &module,
                &info,
                &glsl_options,
                &glsl_pipeline,
                naga::proc::BoundsCheckPolicies::default(),
            )
            .and_then(|mut w| w.write());
            if let Err(e) = result {
                failures.push(format!("{what}: GLSL: {e:?}"));
            }
        }
    }
    failures
}

#[test]
fn every_shader_translates_to_every_backend() {
    let failures: Vec<String> = paligemma::testing::shader_sources()
        .iter()
        .flat_map(|(name, source)| translate(name, source))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_shader_file_is_registered() {
    let built = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let dir = if built.is_dir() {
        built
    } else {
        std::path::PathBuf::from("shaders")
    };
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let stem = name.trim_end_matches(".wgsl");
        assert!(
            paligemma::testing::prelude_names().contains(&stem)
                || paligemma::testing::shader_sources()
                    .iter()
                    .any(|(s, _)| *s == stem),
            "shaders/{name} is not in shaders::ALL, so no test translates it"
        );
    }
}
