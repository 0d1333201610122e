//! The WGSL sources, embedded at compile time: one file per kernel family in `shaders/`, each
//! registered by its op module (`ops::linear::SHADER` for `shaders/linear.wgsl`; the list of
//! all of them is `ops::KERNELS`), and the host's declaration of each entry point's interface
//! ([`Entry`]), which `tests/interfaces.rs` checks against the WGSL.
//!
//! WGSL has no includes, so the preludes a family uses are prepended to it, and no way to share
//! a constant with the host, so every size both sides depend on (workgroup sizes, tiles, rows
//! per workgroup) is a Rust constant of the op module, emitted ahead of the WGSL as
//! `const NAME: u32 = V;`. The shader files use the names and never restate the values.

use std::fmt::Write;

use crate::error::{Error, Result};

/// Preludes (no entry points of their own): `grid` (flat workgroup indices), `reduce` (tree
/// reductions in workgroup memory), `weight_format` (f32/f16/bf16 weights from u32 words),
/// `math` (stable tanh, GELU), `linear_io` (the linear layers' params, bindings and store),
/// `best` (a row's best (value, index) pair: argmax and sampling).
pub(crate) const PRELUDES: &[&str] = &[
    "grid",
    "reduce",
    "weight_format",
    "math",
    "linear_io",
    "best",
];

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

/// One entry point of a [`Shader`] and its interface, declared once by its op module: the size
/// of the `Params` struct at `@binding(0)` and the storage buffers after it, in the order a
/// dispatch passes them. `Recorder::dispatch` (`gpu/recorder.rs`) binds buffers
/// by position in this list (so a call site cannot mistype an index) and refuses a wrong count
/// or params size; `tests/interfaces.rs` checks every declaration against what naga finds in
/// the WGSL (indices, address spaces, access, element types, the params size, and that every
/// entry point is declared).
#[derive(Debug)]
pub struct Entry {
    pub shader: &'static Shader,
    /// The `@compute fn`'s name.
    pub name: &'static str,
    /// Bytes of the host's `Params` (`size_of`), which must be the WGSL struct's size.
    pub params: usize,
    /// The storage bindings the entry point uses, in ascending `@binding` order.
    pub bindings: &'static [Binding],
}

/// A storage buffer at `@group(0) @binding(index)`: `var<storage, access> name: array<elem>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub index: u32,
    /// The WGSL variable's name, also what errors call the operand.
    pub name: &'static str,
    pub access: Access,
    pub elem: Elem,
}

/// How a storage buffer is declared in WGSL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// What a storage buffer's WGSL array holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    U32,
    I32,
    /// `vec4<u32>`: weights read 16 bytes at a time.
    U32x4,
}

impl Binding {
    /// `var<storage, read> name: array<elem>` at `@binding(index)`.
    pub const fn read(index: u32, name: &'static str, elem: Elem) -> Binding {
        Binding {
            index,
            name,
            access: Access::Read,
            elem,
        }
    }

    /// `var<storage, read_write> name: array<elem>` at `@binding(index)`.
    pub const fn read_write(index: u32, name: &'static str, elem: Elem) -> Binding {
        Binding {
            index,
            name,
            access: Access::ReadWrite,
            elem,
        }
    }
}

impl Entry {
    /// `shader::entry`: the entry point's name in errors and profiles.
    pub fn qualified_name(&self) -> String {
        format!("{}::{}", self.shader.name, self.name)
    }

    /// Checks a dispatch against the declaration: `params` bytes of parameters and `buffers`
    /// storage buffers. A mismatch is a bug of the calling op, reported as an error rather
    /// than left to wgpu (which would name a bind group, not the operand).
    pub(crate) fn check(&self, params: usize, buffers: usize) -> Result<()> {
        if params != self.params {
            return Err(Error::invalid(format!(
                "{} takes {} bytes of parameters, the dispatch passed {params}",
                self.qualified_name(),
                self.params
            )));
        }
        if buffers != self.bindings.len() {
            let names: Vec<&str> = self.bindings.iter().map(|b| b.name).collect();
            return Err(Error::invalid(format!(
                "{} takes {} buffers ({}), the dispatch passed {buffers}",
                self.qualified_name(),
                names.len(),
                names.join(", ")
            )));
        }
        Ok(())
    }
}
