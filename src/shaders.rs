//! The WGSL sources, embedded at compile time: one file per kernel family in `shaders/`, each
//! registered by its op module (`ops::linear::SHADER` for `shaders/linear.wgsl`; the list of
//! all of them is `ops::SHADERS`).
//!
//! WGSL has no includes, so the preludes a family uses are prepended to it, and no way to share
//! a constant with the host, so every size both sides depend on (workgroup sizes, tiles, rows
//! per workgroup) is a Rust constant of the op module, emitted ahead of the WGSL as
//! `const NAME: u32 = V;`. The shader files use the names and never restate the values.

use std::fmt::Write;

/// Preludes (no entry points of their own): `grid` (flat workgroup indices), `reduce` (tree
/// reductions in workgroup memory), `weight_format` (f32/f16/bf16 weights from u32 words),
/// `math` (stable tanh, GELU), `linear_io` (the linear layers' params, bindings and store).
pub(crate) const PRELUDES: &[&str] = &["grid", "reduce", "weight_format", "math", "linear_io"];

/// One kernel family's WGSL and the host constants it is compiled with.
#[derive(Debug)]
pub struct Shader {
    pub name: &'static str,
    /// The preludes it uses, then `shaders/<name>.wgsl`, as written.
    pub body: &'static str,
    /// `(NAME, value)` pairs defined by the host and emitted as WGSL constants.
    pub constants: &'static [(&'static str, u32)],
    /// The device features the shader needs (empty for all but the optional paths): declared
    /// here so a pipeline is refused with their names on a device without them, and so the
    /// naga tests validate the shader with exactly the capabilities they grant.
    pub features: wgpu::Features,
}

impl Shader {
    /// The complete WGSL: the family's `enable` directives (WGSL wants them before anything
    /// else), the host's constants, the preludes, the family's file.
    pub fn source(&self) -> String {
        let is_enable = |l: &str| l.starts_with("enable ");
        let mut s = String::new();
        for line in self.body.lines().filter(|l| is_enable(l)) {
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(
            s,
            "// {}.wgsl, compiled with the host's constants (src/ops/{}.rs):",
            self.name, self.name
        );
        for (name, value) in self.constants {
            let _ = writeln!(s, "const {name}: u32 = {value}u;");
        }
        for line in self.body.lines().filter(|l| !is_enable(l)) {
            let _ = writeln!(s, "{line}");
        }
        s
    }
}

/// A [`Shader`] from `shaders/<name>.wgsl`, the listed preludes and constants, and the device
/// features it needs (none unless given).
macro_rules! shader {
    ($name:literal, [$($prelude:literal),*], $constants:expr) => {
        $crate::shaders::shader!($name, [$($prelude),*], $constants, wgpu::Features::empty())
    };
    ($name:literal, [$($prelude:literal),*], $constants:expr, $features:expr) => {
        $crate::shaders::Shader {
            name: $name,
            body: concat!(
                $(include_str!(concat!("../../shaders/", $prelude, ".wgsl")), "\n",)*
                include_str!(concat!("../../shaders/", $name, ".wgsl"))
            ),
            constants: $constants,
            features: $features,
        }
    };
}
pub(crate) use shader;
