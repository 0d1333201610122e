//! Every shader translated with naga to SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL ES
//! 3.1 (GL / WebGL-class devices), for every entry point and weight format. A shader that only
//! one backend accepts fails here, without a Mac or a Windows machine.

mod common;

use naga::back::PipelineConstants;
use naga::valid::{ValidationFlags, Validator};
use paligemma::testing::Shader;

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

/// What fails to translate; the SPIR-V modules made go to `spirv` (named).
fn translate(shader: &Shader, spirv: &mut Vec<(String, Vec<u32>)>) -> Vec<String> {
    let (name, source) = (shader.name, &shader.source());
    let mut failures = Vec::new();
    let module = match naga::front::wgsl::parse_str(source) {
        Ok(m) => m,
        Err(e) => return vec![format!("{name}: parse: {}", e.emit_to_string(source))],
    };
    // Only what every backend has, plus what the shader declares it needs. The one shader that
    // needs anything is the tensor-core matmul (matmul_coop.wgsl), an optional path built only
    // on devices with cooperative matrices and f16: wgpu 30 offers its 16x16 f16 configuration
    // on Vulkan alone, so it must validate with those capabilities and translate to SPIR-V.
    let coop = shader
        .features
        .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
    let caps = common::naga_capabilities(shader.features);
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
            match spv {
                Ok(words) => spirv.push((what.clone(), words)),
                Err(e) => failures.push(format!("{what}: SPIR-V: {e:?}")),
            }
            if coop {
                continue;
            }
            failures.extend(
                metal_dx12_gl(&module, &info, ep)
                    .into_iter()
                    .map(|e| format!("{what}: {e}")),
            );
        }
    }
    failures
}

/// Entry point `ep` of `module` (overrides applied) in MSL, HLSL and GLSL: what fails.
fn metal_dx12_gl(
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    ep: &naga::EntryPoint,
) -> Vec<String> {
    let mut failures = Vec::new();
    let stage = ep.stage;
    let msl = naga::back::msl::write_string(
        module,
        info,
        &naga::back::msl::Options::default(),
        &naga::back::msl::PipelineOptions {
            entry_point: Some((stage, ep.name.clone())),
            ..Default::default()
        },
    );
    if let Err(e) = msl {
        failures.push(format!("MSL: {e:?}"));
    }
    let mut hlsl = String::new();
    let hlsl_options = naga::back::hlsl::Options::default();
    let hlsl_pipeline = naga::back::hlsl::PipelineOptions {
        entry_point: Some((stage, ep.name.clone())),
    };
    if let Err(e) = naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_options, &hlsl_pipeline)
        .write(module, info, None)
    {
        failures.push(format!("HLSL: {e:?}"));
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
        module,
        info,
        &glsl_options,
        &glsl_pipeline,
        naga::proc::BoundsCheckPolicies::default(),
    )
    .and_then(|mut w| w.write());
    if let Err(e) = result {
        failures.push(format!("GLSL: {e:?}"));
    }
    failures
}

#[test]
fn every_shader_translates_to_every_backend() {
    let failures: Vec<String> = paligemma::testing::kernels()
        .iter()
        .flat_map(|(shader, _)| translate(shader, &mut Vec::new()))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// naga's SPIR-V of every kernel, entry point and weight format passes Khronos' `spirv-val`
/// (Debian's `spirv-tools`; CI installs it). naga validates its input; this checks its output,
/// what a Vulkan driver receives. The tensor-core matmul is validated where spirv-val knows
/// cooperative matrices, and listed as not validated where it does not.
#[test]
fn naga_spirv_passes_spirv_val() {
    let mut spirv = Vec::new();
    for (shader, _) in paligemma::testing::kernels() {
        translate(shader, &mut spirv);
    }
    let dir = std::env::temp_dir().join(format!("paligemma-spv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut failures, mut unknown) = (Vec::new(), Vec::new());
    for (i, (what, words)) in spirv.iter().enumerate() {
        let path = dir.join(format!("{i}.spv"));
        std::fs::write(&path, bytemuck::cast_slice::<u32, u8>(words)).unwrap();
        let out = std::process::Command::new("spirv-val")
            .args(["--target-env", "vulkan1.1"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("spirv-val: {e} (install spirv-tools)"));
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // CooperativeMatrixKHR (capability 6022) is newer than Debian 12's SPIRV-Tools 2023.1:
        // said, not hidden; any other failure of that module still fails.
        if why.contains("Invalid capability operand: 6022") {
            unknown.push(what.clone());
        } else if !out.status.success() {
            failures.push(format!("{what}: {why}"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "spirv-val: {} modules valid, {} failed, {} not validated: this spirv-val does not know \
         SPV_KHR_cooperative_matrix ({})",
        spirv.len() - failures.len() - unknown.len(),
        failures.len(),
        unknown.len(),
        unknown.join(", ")
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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
            "shaders/{name} is not in ops::KERNELS, so no test translates it"
        );
    }
}
