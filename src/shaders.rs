//! The WGSL sources, embedded at compile time: one file per kernel family in `shaders/`.
//! Shaders that read linear weights get `weight_format.wgsl` prepended (WGSL has no includes).

/// A WGSL module and the device features it needs (none, for every shader here: optional
/// features only ever select faster variants).
#[derive(Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
    pub features: wgpu::Features,
}

macro_rules! shader {
    ($name:literal) => {
        Shader {
            name: $name,
            source: include_str!(concat!("../shaders/", $name, ".wgsl")),
            features: wgpu::Features::empty(),
        }
    };
    ($name:literal, with_weights) => {
        Shader {
            name: $name,
            source: concat!(
                include_str!("../shaders/weight_format.wgsl"),
                include_str!(concat!("../shaders/", $name, ".wgsl"))
            ),
            features: wgpu::Features::empty(),
        }
    };
}

pub const PATCH_EMBED: Shader = shader!("patch_embed");
pub const NORM: Shader = shader!("norm");
pub const LINEAR: Shader = shader!("linear", with_weights);
pub const ACTIVATION: Shader = shader!("activation");
pub const ROPE: Shader = shader!("rope");
pub const ATTENTION: Shader = shader!("attention");
pub const SOFTMAX: Shader = shader!("softmax");
pub const EMBEDDING: Shader = shader!("embedding", with_weights);
pub const ADD: Shader = shader!("add");
pub const ARGMAX: Shader = shader!("argmax");

/// Every shader, for the portability test that translates each one to SPIR-V, MSL, HLSL, GLSL.
pub const ALL: &[&Shader] = &[
    &PATCH_EMBED,
    &NORM,
    &LINEAR,
    &ACTIVATION,
    &ROPE,
    &ATTENTION,
    &SOFTMAX,
    &EMBEDDING,
    &ADD,
    &ARGMAX,
];
