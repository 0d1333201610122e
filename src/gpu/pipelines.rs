//! Compute pipelines, each built once per device from a typed [`Kernel`] key: no string is
//! formatted and no lock is contended on the hot path (a decode step looks up ~200 kernels).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use super::Gpu;
use crate::error::{Error, Result};
use crate::shaders::{Entry, Shader};

/// One declared entry point ([`Entry`]) with its pipeline-overridable constants: what a compute
/// pipeline is built from, and its name in profiles.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kernel {
    pub entry: &'static Entry,
    /// `override` constants and their values (e.g. `W_DTYPE`, the weight format).
    pub overrides: &'static [(&'static str, u32)],
}

impl Kernel {
    pub const fn new(entry: &'static Entry) -> Kernel {
        Kernel {
            entry,
            overrides: &[],
        }
    }

    /// The same entry point with `overrides` set.
    pub const fn with(self, overrides: &'static [(&'static str, u32)]) -> Kernel {
        Kernel { overrides, ..self }
    }

    pub fn shader(&self) -> &'static Shader {
        self.entry.shader
    }

    /// `shader::entry`, with the overrides when there are any: the kernel's name in profiles.
    pub fn name(&self) -> String {
        let mut s = self.entry.qualified_name();
        for (k, v) in self.overrides {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }
}

impl From<&'static Entry> for Kernel {
    fn from(entry: &'static Entry) -> Kernel {
        Kernel::new(entry)
    }
}

// Shaders are identified by name (each is a `static`, but its address is not guaranteed to be
// unique across codegen units).
impl PartialEq for Kernel {
    fn eq(&self, o: &Self) -> bool {
        (self.shader().name, self.entry.name, self.overrides)
            == (o.shader().name, o.entry.name, o.overrides)
    }
}
impl Eq for Kernel {}
impl Hash for Kernel {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (self.shader().name, self.entry.name, self.overrides).hash(h);
    }
}

/// Built modules and pipelines.
#[derive(Default)]
pub(crate) struct Cache {
    modules: HashMap<&'static str, wgpu::ShaderModule>,
    pipelines: HashMap<Kernel, wgpu::ComputePipeline>,
}

impl Gpu {
    /// The compute pipeline of `kernel`, built on first use.
    pub(crate) fn pipeline(&self, kernel: Kernel) -> Result<wgpu::ComputePipeline> {
        let lock = &self.inner.pipelines;
        if let Some(p) = lock.read().expect("pipeline cache").pipelines.get(&kernel) {
            return Ok(p.clone());
        }
        let name = kernel.name();
        let missing = kernel.shader().features - self.features();
        if !missing.is_empty() {
            return Err(Error::invalid(format!(
                "{name} needs the device features {missing:?}, which {} lacks",
                self.adapter_name()
            )));
        }
        let pipeline = self.scoped(&format!("building pipeline {name}"), || {
            let mut cache = lock.write().expect("pipeline cache");
            let module = cache
                .modules
                .entry(kernel.shader().name)
                .or_insert_with(|| {
                    let source = kernel.shader().source();
                    self.inner
                        .device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(kernel.shader().name),
                            source: wgpu::ShaderSource::Wgsl(source.into()),
                        })
                })
                .clone();
            let constants: Vec<(&str, f64)> = kernel
                .overrides
                .iter()
                .map(|&(k, v)| (k, v as f64))
                .collect();
            let pipeline =
                self.inner
                    .device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(&name),
                        layout: None,
                        module: &module,
                        entry_point: Some(kernel.entry.name),
                        compilation_options: wgpu::PipelineCompilationOptions {
                            constants: &constants,
                            zero_initialize_workgroup_memory: false,
                        },
                        cache: None,
                    });
            drop(cache);
            pipeline
        })?;
        // Cached only once built without error, so a failure is reported again next time.
        let mut cache = lock.write().expect("pipeline cache");
        cache.pipelines.insert(kernel, pipeline.clone());
        Ok(pipeline)
    }
}
