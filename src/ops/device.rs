//! [`Gpu`]'s constructors and its cooperative-matrix switch. They live with the ops rather than
//! in `gpu/` because they are where a kernel's needs meet the device: they hand the
//! cooperative-matrix matmul's [`REQUIREMENT`] to the runtime, which knows no kernel.

use super::matmul_coop::{REQUIREMENT, SHADER, adapter_supports, subgroups_fit};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuOptions};

impl Gpu {
    /// Picks an adapter (see [`GpuOptions`]) and creates a device with the adapter's own limits
    /// (not wgpu's conservative defaults) and the optional features it has. Blocks; see
    /// [`new_async`](Self::new_async).
    pub fn new(opts: &GpuOptions) -> Result<Gpu> {
        #[cfg(not(target_arch = "wasm32"))]
        return pollster::block_on(Self::new_async(opts));
        #[cfg(target_arch = "wasm32")]
        {
            let _ = opts;
            Err(Error::invalid(
                "`Gpu::new` would block, which a web page cannot do: await `Gpu::new_async`",
            ))
        }
    }

    /// [`new`](Self::new), awaitable (the form a web page uses).
    pub async fn new_async(opts: &GpuOptions) -> Result<Gpu> {
        Gpu::create(opts, &REQUIREMENT).await
    }

    /// The device features cooperative matrices need (with wgpu's experimental features
    /// enabled): request them when making a device to share (see
    /// [`set_cooperative_matrix`](Self::set_cooperative_matrix)).
    pub const COOPERATIVE_MATRIX_FEATURES: wgpu::Features = SHADER.features;

    /// Whether `adapter` can run the library's cooperative-matrix matmul: the features, a
    /// subgroup-scoped 16 x 16 x 16 configuration of f16 operands with f32 accumulation, and
    /// subgroups of at most 32 invocations that divide 32.
    pub fn adapter_supports_cooperative_matrix(adapter: &wgpu::Adapter) -> bool {
        adapter_supports(adapter)
    }

    /// Turns cooperative matrices on or off for the products recorded from now on. On needs
    /// a device created with [`COOPERATIVE_MATRIX_FEATURES`](Self::COOPERATIVE_MATRIX_FEATURES)
    /// (and wgpu's experimental features) from an adapter for which
    /// [`adapter_supports_cooperative_matrix`](Self::adapter_supports_cooperative_matrix)
    /// holds; the features and the subgroup sizes of the adapter info are checked here, the
    /// adapter's matrix configurations cannot be (a device does not list them).
    pub fn set_cooperative_matrix(&self, on: bool) -> Result<()> {
        let needs = Self::COOPERATIVE_MATRIX_FEATURES;
        if on {
            if !self.features().contains(needs) {
                return Err(Error::invalid(format!(
                    "cooperative matrices need the device features {needs:?}; {} has {:?}",
                    self.adapter_name(),
                    self.features()
                )));
            }
            if !self.info().is_some_and(subgroups_fit) {
                return Err(Error::invalid(format!(
                    "cooperative matrices need subgroups of at most 32 invocations that divide \
                     32, which {} does not report",
                    self.adapter_name()
                )));
            }
        }
        self.store_cooperative_matrix(on);
        Ok(())
    }
}
