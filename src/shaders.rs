//! The WGSL sources, embedded at compile time: one file per kernel family in `shaders/`.
//! Preludes (`weight_format.wgsl`, `math.wgsl`) are prepended where used (WGSL has no includes).

/// A WGSL module and the device features it needs (none, for every shader here: optional
/// features only ever select faster variants).
#[derive(Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
    pub features: wgpu::Features,
}

macro_rules! shader {
    ($name:literal $(, $prelude:literal)*) => {
        Shader {
            name: $name,
            source: concat!(
                $(include_str!(concat!("../shaders/", $prelude, ".wgsl")),)*
                include_str!(concat!("../shaders/", $name, ".wgsl"))
            ),
            features: wgpu::Features::empty(),
        }
    };
}

/// Preludes (no entry points of their own), prepended to the shaders that use them.
pub const PRELUDES: &[&str] = &["weight_format", "math"];

pub const PATCH_EMBED: Shader = shader!("patch_embed");
pub const NORM: Shader = shader!("norm");
pub const LINEAR: Shader = shader!("linear", "weight_format", "math");
pub const ACTIVATION: Shader = shader!("activation", "math");
pub const ROPE: Shader = shader!("rope");
pub const ATTENTION: Shader = shader!("attention", "math");
pub const SOFTMAX: Shader = shader!("softmax");
pub const EMBEDDING: Shader = shader!("embedding", "weight_format");
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
