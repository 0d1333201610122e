//! Every kernel entry point's interface, declared once on the host (an `Entry` const in its op
//! module: the params size and the storage bindings a dispatch passes, in order), against what
//! naga finds in the WGSL: for each entry point, the resources it uses (through the functions
//! it calls too), binding by binding: group 0, the index, the address space and access, the
//! array's element type and the variable's name, and the size of the uniform `Params` at
//! `@binding(0)` against the host struct's. An entry point of a WGSL module that no `Entry`
//! declares fails, and so does an `Entry` whose entry point the WGSL lacks.
//!
//! The dispatches bind by position in the declaration and check the count and the params size
//! (`Recorder::dispatch`), so with this test a binding or a `Params` out of step with the WGSL
//! can neither compile into a wrong bind group nor pass.

mod common;

use std::collections::BTreeMap;

use naga::valid::{ModuleInfo, ValidationFlags, Validator};
use naga::{AddressSpace, ScalarKind, StorageAccess, TypeInner};
use paligemma::testing::{Access, Elem, Entry, Shader};

/// What sits at each `(group, binding)`, described the same way from both sides, e.g.
/// `x: var<storage, read> array<f32>` or `var<uniform> Params of 48 bytes`.
type Resources = BTreeMap<(u32, u32), String>;

fn uniform(bytes: impl std::fmt::Display) -> String {
    format!("var<uniform> Params of {bytes} bytes")
}

fn storage(name: &str, read_write: bool, elem: &str) -> String {
    let access = if read_write { "read_write" } else { "read" };
    format!("{name}: var<storage, {access}> array<{elem}>")
}

/// The host's declaration: params at binding 0, then the declared bindings. Also checks that
/// they are in ascending order after 0 (the order a dispatch passes the buffers in).
fn declared(entry: &Entry, problems: &mut Vec<String>) -> Resources {
    let mut r = Resources::from([((0, 0), uniform(entry.params))]);
    let mut last = 0;
    for b in entry.bindings {
        if b.index <= last {
            problems.push(format!(
                "{}::{}: binding `{}` at {} is not after the one before it ({last})",
                entry.shader.name, entry.name, b.name, b.index
            ));
        }
        last = b.index;
        let elem = match b.elem {
            Elem::F32 => "f32",
            Elem::U32 => "u32",
            Elem::I32 => "i32",
            Elem::U32x4 => "vec4<u32>",
        };
        r.insert(
            (0, b.index),
            storage(b.name, b.access == Access::ReadWrite, elem),
        );
    }
    r
}

/// A WGSL array's element type, as `declared` writes it.
fn elem_of(module: &naga::Module, ty: naga::Handle<naga::Type>) -> String {
    let scalar = |s: naga::Scalar| match (s.kind, s.width) {
        (ScalarKind::Float, 4) => "f32".to_string(),
        (ScalarKind::Uint, 4) => "u32".to_string(),
        (ScalarKind::Sint, 4) => "i32".to_string(),
        _ => format!("{s:?}"),
    };
    match &module.types[ty].inner {
        TypeInner::Scalar(s) => scalar(*s),
        TypeInner::Vector { size, scalar: s } => format!("vec{}<{}>", *size as u8, scalar(*s)),
        other => format!("{other:?}"),
    }
}

/// The resources entry point `index` uses, per naga's analysis (which counts the uses of the
/// functions it calls), described as `declared` describes the host's.
fn used(module: &naga::Module, info: &ModuleInfo, index: usize) -> Resources {
    let uses = info.get_entry_point(index);
    let mut r = Resources::new();
    for (handle, var) in module.global_variables.iter() {
        let Some(binding) = &var.binding else {
            continue;
        };
        if uses[handle].is_empty() {
            continue;
        }
        let name = var.name.as_deref().unwrap_or("?");
        let inner = &module.types[var.ty].inner;
        let what = match (var.space, inner) {
            (AddressSpace::Uniform, TypeInner::Struct { span, .. }) => uniform(span),
            (AddressSpace::Storage { access }, TypeInner::Array { base, size, .. })
                if *size == naga::ArraySize::Dynamic =>
            {
                let read_write = access.contains(StorageAccess::STORE);
                storage(name, read_write, &elem_of(module, *base))
            }
            (space, _) => format!("{name}: {space:?} {inner:?}"),
        };
        r.insert((binding.group, binding.binding), what);
    }
    r
}

/// Every difference between the WGSL's entry points and the host's declarations of them.
fn check(shader: &Shader, entries: &[&Entry]) -> Vec<String> {
    let source = shader.source();
    let name = shader.name;
    let module = match naga::front::wgsl::parse_str(&source) {
        Ok(m) => m,
        Err(e) => return vec![format!("{name}: parse: {}", e.emit_to_string(&source))],
    };
    let caps = common::naga_capabilities(shader.features);
    let info = match Validator::new(ValidationFlags::all(), caps).validate(&module) {
        Ok(i) => i,
        Err(e) => return vec![format!("{name}: validate: {e:?}")],
    };
    let mut problems = Vec::new();
    for entry in entries {
        if entry.shader.name != name {
            problems.push(format!(
                "{}::{} is listed under the shader {name}",
                entry.shader.name, entry.name
            ));
        }
        if !module.entry_points.iter().any(|ep| ep.name == entry.name) {
            problems.push(format!(
                "{name}::{} is declared on the host, but {name}.wgsl has no such entry point",
                entry.name
            ));
        }
    }
    for (index, ep) in module.entry_points.iter().enumerate() {
        let Some(entry) = entries.iter().find(|e| e.name == ep.name) else {
            problems.push(format!(
                "{name}::{} is an entry point of {name}.wgsl that no Entry in src/ops/ \
                 declares",
                ep.name
            ));
            continue;
        };
        let host = declared(entry, &mut problems);
        let wgsl = used(&module, &info, index);
        let slots: std::collections::BTreeSet<_> = host.keys().chain(wgsl.keys()).collect();
        for &(group, binding) in slots {
            let (h, w) = (host.get(&(group, binding)), wgsl.get(&(group, binding)));
            if h != w {
                let none = "nothing".to_string();
                problems.push(format!(
                    "{name}::{} @group({group}) @binding({binding}): the WGSL uses {}, the \
                     host declares {}",
                    ep.name,
                    w.unwrap_or(&none),
                    h.unwrap_or(&none)
                ));
            }
        }
    }
    problems
}

#[test]
fn every_entry_point_matches_its_host_declaration() {
    let kernels = paligemma::testing::kernels();
    let problems: Vec<String> = kernels
        .iter()
        .flat_map(|(shader, entries)| check(shader, entries))
        .collect();
    assert!(
        problems.is_empty(),
        "{} mismatches between the WGSL and the host's declarations:\n{}",
        problems.len(),
        problems.join("\n")
    );
    let entries: usize = kernels.iter().map(|(_, e)| e.len()).sum();
    eprintln!("{} shaders, {entries} entry points checked", kernels.len());
}

/// The checker itself: a declaration out of step with the WGSL in each way it can be (index,
/// access, element type, params size, a missing or an extra entry point) is reported.
#[test]
fn mismatches_are_reported() {
    let (shader, entries) = paligemma::testing::kernels()
        .iter()
        .find(|(s, _)| s.name == "add")
        .expect("the add shader");
    assert!(check(shader, entries).is_empty());
    let good = entries[0];
    let [y, x] = [good.bindings[0], good.bindings[1]];
    let bad = |params: usize, bindings: Vec<paligemma::testing::Binding>| -> Vec<String> {
        let entry: &'static Entry = Box::leak(Box::new(Entry {
            params,
            bindings: bindings.leak(),
            ..*good
        }));
        check(shader, &[entry])
    };
    let wrong_index = paligemma::testing::Binding { index: 3, ..x };
    let wrong_access = paligemma::testing::Binding {
        access: Access::ReadWrite,
        ..y
    };
    let wrong_elem = paligemma::testing::Binding {
        elem: Elem::U32,
        ..y
    };
    for (what, problems) in [
        ("index", bad(good.params, vec![y, wrong_index])),
        ("access", bad(good.params, vec![wrong_access, x])),
        ("element type", bad(good.params, vec![wrong_elem, x])),
        ("params size", bad(good.params + 16, vec![y, x])),
        ("a missing binding", bad(good.params, vec![y])),
    ] {
        assert_eq!(
            problems.len(),
            1 + (what == "index") as usize,
            "{what}: {problems:?}"
        );
        assert!(
            problems[0].contains("add::add_inplace @group(0)"),
            "{what}: {problems:?}"
        );
    }
    let missing = check(shader, &[]);
    assert!(missing[0].contains("no Entry"), "{missing:?}");
    let extra: &'static Entry = Box::leak(Box::new(Entry {
        name: "add_twice",
        ..*good
    }));
    let extra = check(shader, &[good, extra]);
    assert!(extra[0].contains("no such entry point"), "{extra:?}");
}
