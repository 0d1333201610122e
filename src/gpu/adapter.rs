//! Choosing an adapter, and what an optional kernel path needs of one.

use super::GpuOptions;
use crate::error::{Error, Result};

/// What an optional kernel path needs of an adapter beyond the portable baseline. Declared by
/// the op that has such a path (`ops::matmul_coop::REQUIREMENT`, the only one) and passed in
/// by the constructors in `ops/device.rs`, so the runtime requests it without knowing any
/// kernel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Requirement {
    /// Device features the path's shaders need (with wgpu's experimental features enabled
    /// when any of them is experimental).
    pub features: wgpu::Features,
    /// Whether an adapter can run the path: the features, and what only the adapter tells
    /// (e.g. its cooperative-matrix configurations).
    pub adapter_supports: fn(&wgpu::Adapter) -> bool,
}

/// The adapter [`GpuOptions`] names (or `WGPU_ADAPTER_NAME` does), else the one wgpu prefers
/// (`WGPU_POWER_PREF`, high performance by default).
pub(super) async fn pick(opts: &GpuOptions) -> Result<wgpu::Adapter> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if let Some(b) = opts.backends {
        desc.backends = b;
    }
    let instance = wgpu::Instance::new(desc);
    let wanted_name = opts
        .adapter_name
        .clone()
        .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
        .map(|s| s.to_lowercase());
    if let Some(index) = opts.adapter_index {
        let mut adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
        let count = adapters.len();
        return (index < count)
            .then(|| adapters.swap_remove(index))
            .ok_or_else(|| {
                Error::NoAdapter(format!(
                    "adapter index {index}: only {count} adapters (0..{count}) were found"
                ))
            });
    }
    match &wanted_name {
        Some(name) => {
            let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
            let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
            adapters
                .into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(name))
                .ok_or_else(|| {
                    Error::NoAdapter(format!(
                        "no adapter name contains {name:?}; found {names:?}"
                    ))
                })
        }
        None => instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::from_env()
                    .unwrap_or(wgpu::PowerPreference::HighPerformance),
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| {
                Error::NoAdapter(format!(
                    "{e} (is a Vulkan, Metal or DX12 driver installed? on Linux without a \
                     GPU, `apt-get install mesa-vulkan-drivers` gives lavapipe)"
                ))
            }),
    }
}

impl super::Gpu {
    /// Every adapter wgpu finds on the backends `WGPU_BACKEND` allows (all by default), in the
    /// order [`GpuOptions::adapter_index`] counts.
    pub fn adapters() -> Vec<wgpu::AdapterInfo> {
        let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        let instance = wgpu::Instance::new(desc);
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        adapters.iter().map(|a| a.get_info()).collect()
    }
}
