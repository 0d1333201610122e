//! The GPU runtime, in six parts:
//! - this file: the device ([`Gpu`], made by the library or adopted from the caller), its
//!   limits, and error scopes that turn wgpu errors into [`Error`] values;
//! - `adapter`: choosing an adapter, and the [`Requirement`] of an optional kernel path;
//! - [`buffers`]: allocation, upload, read-back;
//! - [`pipelines`]: a [`Kernel`] (a declared entry point, override constants) built once;
//! - [`recorder`]: a [`Recorder`] batching dispatches into one submission, and the
//!   [`DispatchCache`] that makes a repeated submission (a decode step) create no GPU objects;
//! - [`profile`]: GPU timestamps per submission or per kernel.
//!
//! Every wait on the GPU (device creation, error scopes, buffer mapping) is an `async fn`
//! (`new_async`, `scoped_async`, `read_async`, `wait_async`); the blocking functions are
//! wrappers over them (`Gpu::block_on`), so a web page, which cannot block, awaits the same code.
//! The model's API is awaitable throughout (`PaliGemma::generate`, ..., with
//! `PaliGemma::block_on` its blocking form): only the read-backs wait, and everything between
//! them records and submits without waiting.
//!
//! The runtime knows no kernel: it imports nothing from `ops` or `model`. What a kernel needs
//! of it comes in as data: each entry point's interface ([`Entry`](crate::shaders::Entry)),
//! each shader's device features, and the optional path's [`Requirement`], which the public
//! constructors in `ops/device.rs` pass to [`Gpu::create`].

mod adapter;
pub mod buffers;
pub mod pipelines;
pub mod profile;
pub mod recorder;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::{Error, Result};
pub(crate) use adapter::Requirement;
pub(crate) use pipelines::Kernel;
pub(crate) use recorder::{DispatchCache, Recorder};

/// How [`Gpu::new`] picks an adapter. Fields left `None` fall back to the environment
/// variables wgpu users know (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, `WGPU_POWER_PREF`), then to
/// the highest-performance adapter.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Backends to consider, e.g. `wgpu::Backends::VULKAN`.
    pub backends: Option<wgpu::Backends>,
    /// A case-insensitive substring of the adapter's name, e.g. `"llvmpipe"` or `"H100"`.
    pub adapter_name: Option<String>,
    /// The adapter at this position of [`Gpu::adapters`]' list (which takes the same
    /// `WGPU_BACKEND`): how to choose one of several identical GPUs, which share a name (a Ray
    /// worker's assigned GPU, say). Takes precedence over `adapter_name`.
    pub adapter_index: Option<usize>,
    /// Request no optional feature (timestamps, cooperative matrices), to exercise the
    /// portable path.
    pub no_optional_features: bool,
    /// Run the vision tower's and the prefill's products on cooperative matrices (tensor
    /// cores; `ops::matmul_coop`) where the adapter supports them. Off by default: wgpu calls
    /// the feature experimental, and the kernel has not yet been measured on a GPU that has it
    /// (lavapipe lacks it); `bench --coop` and `tests/kernels.rs` exercise it.
    pub cooperative_matrix: bool,
    /// Request WebGPU's default limits ([`wgpu::Limits::default`]: 128 MiB per storage
    /// binding, 256 MiB per buffer, 16 KiB of workgroup memory, 8 storage buffers per stage)
    /// instead of the adapter's: what any browser grants, so a model that loads and answers
    /// so runs on every browser's WebGPU, as far as limits go.
    pub default_limits: bool,
}

/// Optional features some path uses when present; each has a fallback that needs none.
/// Timestamps are the only one today (profiling); the kernels need no feature at all (16-bit
/// weights are unpacked from u32 words).
const OPTIONAL_FEATURES: wgpu::Features =
    wgpu::Features::TIMESTAMP_QUERY.union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS);

/// The largest binding the library makes, whatever the device reports: wgpu's Metal bounds
/// checks clamp binding sizes to 32 bits, so a binding past 4 GiB would be silently wrong.
const MAX_BINDING_BYTES: u64 = 2 << 30;

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// Unknown for a caller's device unless the caller passes it.
    info: Option<wgpu::AdapterInfo>,
    limits: wgpu::Limits,
    features: wgpu::Features,
    /// Set by the device-lost callback (only on devices the library created itself).
    lost: Arc<Mutex<Option<String>>>,
    /// The first error the uncaptured-error handler saw (only on devices the library created
    /// itself): how errors reach the caller on the web, where scopes cannot be waited for.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    reported: Arc<Mutex<Option<String>>>,
    /// Bytes of every buffer the library allocated (never decremented): load and session
    /// footprints are differences of this counter.
    allocated: AtomicU64,
    /// See [`Gpu::set_polled_by_caller`].
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    polled_by_caller: std::sync::atomic::AtomicBool,
    /// See [`Gpu::cooperative_matrix`].
    cooperative_matrix: std::sync::atomic::AtomicBool,
    /// Bytes uploaded since the queue was last flushed (see `buffers::FLUSH_BYTES`).
    unflushed: AtomicU64,
    /// Compute dispatches recorded so far (a cumulative counter, for `bench`).
    dispatched: AtomicU64,
    /// A 16-byte buffer bound where a kernel's optional input (e.g. a bias) is absent.
    dummy: wgpu::Buffer,
    /// Kernels' scratch by name (see [`Gpu::shared_scratch`]).
    scratch: Mutex<std::collections::HashMap<&'static str, wgpu::Buffer>>,
    pipelines: RwLock<pipelines::Cache>,
    profile: Mutex<Option<profile::Profile>>,
}

/// A GPU device with the state the kernels need. Cheap to clone (a shared handle), and
/// `Send + Sync`: it can be used from another thread than the one that made it.
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.adapter_name())
            .finish()
    }
}

impl Gpu {
    /// [`new_async`](Self::new_async) with the one optional kernel path there is, `optional`,
    /// taken when [`GpuOptions::cooperative_matrix`] asks for it and the adapter supports it.
    pub(crate) async fn create(opts: &GpuOptions, optional: &Requirement) -> Result<Gpu> {
        let adapter = adapter::pick(opts).await?;
        let info = adapter.get_info();
        let mut features = if opts.no_optional_features {
            wgpu::Features::empty()
        } else {
            adapter.features() & OPTIONAL_FEATURES
        };
        let coop = opts.cooperative_matrix
            && !opts.no_optional_features
            && (optional.adapter_supports)(&adapter);
        if coop {
            features |= optional.features;
        }
        let experimental = if features.intersects(wgpu::Features::all_experimental_mask()) {
            // SAFETY: wgpu marks cooperative matrices experimental (its validation of them is
            // incomplete), hence opt-in. The one shader that uses them (matmul_coop.wgsl) is
            // validated and translated by naga in tests/portability.rs and checked against the
            // reference wherever the feature exists (tests/kernels.rs).
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("paligemma"),
                required_features: features,
                required_limits: match opts.default_limits {
                    true => wgpu::Limits::default(),
                    false => adapter.limits(),
                },
                experimental_features: experimental,
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Device(format!("{} ({:?}): {e}", info.name, info.backend)))?;
        // Natively everything the library does runs in error scopes; anything that still
        // escapes them is logged rather than left to wgpu's default handler, which panics. On
        // the web (no blocking scopes) the handler keeps the first error for the next call.
        let reported = Arc::new(Mutex::new(None::<String>));
        let keep = reported.clone();
        device.on_uncaptured_error(Arc::new(move |e| {
            log::error!("uncaptured wgpu error: {e}");
            if let Ok(mut r) = keep.lock() {
                r.get_or_insert_with(|| e.to_string());
            }
        }));
        let lost = Arc::new(Mutex::new(None));
        let lost_cb = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = lost_cb.lock() {
                *l = Some(match msg.is_empty() {
                    true => format!("{reason:?}"),
                    false => format!("{reason:?}: {msg}"),
                });
            }
        });
        log::info!(
            "adapter {} ({:?}, {:?}), features {features:?}",
            info.name,
            info.backend,
            info.device_type,
        );
        let gpu = Self::wrap(device, queue, Some(info), lost, reported);
        gpu.inner.cooperative_matrix.store(coop, Ordering::Relaxed);
        Ok(gpu)
    }

    /// Wraps a device the caller already owns. The library uses the device's own features and
    /// limits and never replaces the caller's error handlers or device-lost callback.
    ///
    /// # Sharing a device and queue with a renderer
    ///
    /// - **Ordering.** The library records its own command encoders and submits them to the
    ///   shared queue; wgpu runs submissions in order, so work the caller submitted before a
    ///   call (a frame rendered into a texture given to
    ///   [`PaliGemma::encode`](crate::PaliGemma::encode) of a texture) is complete before the
    ///   library's reads, and the caller's later submissions come after the library's.
    /// - **What waits for the GPU.** Loading (uploads), the end of the image encoding
    ///   (`start`, `generate` wait for the vision tower), the prefill and each decode step
    ///   (one 4-byte read-back of the chosen token, greedy or sampled).
    ///   Nothing else does. Long work (vision, prefill) is cut into one submission per layer,
    ///   so no driver watchdog fires.
    /// - **Keeping frames smooth.** Call [`Gpu::set_polled_by_caller`] when the engine polls
    ///   its device every frame, and poll an awaitable operation
    ///   ([`PaliGemma::generate`](crate::PaliGemma::generate) of a texture, or
    ///   [`start`](crate::PaliGemma::start) then [`advance`](crate::PaliGemma::advance) a token
    ///   per frame, or a [`Scheduler`](crate::Scheduler)'s step) once per frame:
    ///   it never blocks, and it returns to the frame loop between layers, so each frame's own
    ///   submissions reach the queue between two layers of the prefill rather than behind all of
    ///   it (`tests/engine.rs` drives a generation this way). Or block on them on a
    ///   worker thread: the model is `Send + Sync`, and wgpu's device and queue may be used from
    ///   any thread.
    /// - **Memory.** [`PaliGemma::weight_memory`](crate::PaliGemma::weight_memory),
    ///   [`DecoderState::gpu_bytes`](crate::DecoderState::gpu_bytes) and
    ///   [`Sequence::gpu_bytes`](crate::Sequence::gpu_bytes) report what the library holds;
    ///   dropping the model, a state or a sequence frees it.
    /// - **Errors.** Every library call runs in wgpu error scopes and reports failures as
    ///   [`Error`](crate::Error)s; the caller's uncaptured-error handler sees none of them.
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: Option<wgpu::AdapterInfo>,
    ) -> Gpu {
        Self::wrap(device, queue, info, Arc::default(), Arc::default())
    }

    fn wrap(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: Option<wgpu::AdapterInfo>,
        lost: Arc<Mutex<Option<String>>>,
        reported: Arc<Mutex<Option<String>>>,
    ) -> Gpu {
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Gpu {
            inner: Arc::new(Inner {
                limits: device.limits(),
                features: device.features(),
                device,
                queue,
                info,
                lost,
                reported,
                allocated: AtomicU64::new(0),
                unflushed: AtomicU64::new(0),
                dispatched: AtomicU64::new(0),
                polled_by_caller: Default::default(),
                cooperative_matrix: Default::default(),
                dummy,
                scratch: Mutex::default(),
                pipelines: RwLock::default(),
                profile: Mutex::new(None),
            }),
        }
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }
    pub fn info(&self) -> Option<&wgpu::AdapterInfo> {
        self.inner.info.as_ref()
    }
    /// "name (backend)" of the adapter, for logs and reports.
    pub fn adapter_name(&self) -> String {
        match &self.inner.info {
            Some(i) => format!("{} ({:?})", i.name, i.backend),
            None => "caller's device".to_string(),
        }
    }
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }
    pub fn features(&self) -> wgpu::Features {
        self.inner.features
    }

    /// Whether the many-row products (vision tower, prefill) run on cooperative matrices
    /// (tensor cores; `ops::matmul_coop`) rather than the tiled f32 kernel: where
    /// [`GpuOptions::cooperative_matrix`] asked for them and the adapter has them, or on a
    /// caller's device after [`set_cooperative_matrix`](Self::set_cooperative_matrix).
    pub fn cooperative_matrix(&self) -> bool {
        self.inner.cooperative_matrix.load(Ordering::Relaxed)
    }

    /// Records whether cooperative matrices are on; the checks are the caller's
    /// ([`set_cooperative_matrix`](Self::set_cooperative_matrix), with the kernel's
    /// requirement).
    pub(crate) fn store_cooperative_matrix(&self, on: bool) {
        self.inner.cooperative_matrix.store(on, Ordering::Relaxed);
    }

    /// Compute dispatches recorded through this `Gpu` so far (a cumulative counter: a decode
    /// step's count is a difference of it).
    pub fn dispatch_count(&self) -> u64 {
        self.inner.dispatched.load(Ordering::Relaxed)
    }

    pub(crate) fn count_dispatch(&self) {
        self.inner.dispatched.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes allocated through this `Gpu` so far (a cumulative counter).
    pub fn allocated_bytes(&self) -> u64 {
        self.inner.allocated.load(Ordering::Relaxed)
    }

    /// A small buffer to bind where an optional input is absent.
    pub(crate) fn dummy(&self) -> &wgpu::Buffer {
        &self.inner.dummy
    }

    /// The largest buffer one storage binding may cover: what a single weight chunk or
    /// activation block may hold (the device's limit, capped at 2 GiB).
    pub fn max_binding_bytes(&self) -> u64 {
        let l = &self.inner.limits;
        l.max_storage_buffer_binding_size
            .min(l.max_buffer_size)
            .min(MAX_BINDING_BYTES)
    }

    /// Returns `Err` if the device-lost callback has fired.
    pub fn check_lost(&self) -> Result<()> {
        match self.inner.lost.lock().ok().and_then(|l| l.clone()) {
            Some(m) => Err(Error::DeviceLost(m)),
            None => Ok(()),
        }
    }

    /// Runs `f` inside validation and out-of-memory error scopes; any error becomes `Err`
    /// naming `op`. Blocks on the scopes; see [`scoped_async`](Self::scoped_async).
    ///
    /// In a browser nothing may block, so there `f` runs without scopes and the errors the
    /// browser reports (asynchronously, to the device's uncaptured-error handler) are returned
    /// by the next library call instead: later than natively, but never lost.
    pub fn scoped<T>(&self, op: &str, f: impl FnOnce() -> T) -> Result<T> {
        #[cfg(not(target_arch = "wasm32"))]
        return pollster::block_on(self.scoped_async(op, f));
        #[cfg(target_arch = "wasm32")]
        {
            self.check_lost()?;
            let out = f();
            self.take_reported(op)?;
            Ok(out)
        }
    }

    /// On the web: an error the browser reported since the last call, as an [`Error`].
    #[cfg(target_arch = "wasm32")]
    fn take_reported(&self, op: &str) -> Result<()> {
        match self.inner.reported.lock().ok().and_then(|mut r| r.take()) {
            Some(message) => Err(Error::Gpu {
                op: format!("{op} (or GPU work before it: the browser reports errors late)"),
                message,
            }),
            None => Ok(()),
        }
    }

    /// [`scoped`](Self::scoped), awaitable.
    pub async fn scoped_async<T>(&self, op: &str, f: impl FnOnce() -> T) -> Result<T> {
        self.check_lost()?;
        let device = &self.inner.device;
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        // Both scopes are popped before anything is awaited: wgpu's scopes belong to the
        // thread that pushed them (their guards are not `Send`), and a future that held one
        // across an await could neither move to another thread nor be `Send` for executors
        // that require it (an engine's task pool, tokio).
        let (v, o) = (val.pop(), oom.pop());
        let (v, o) = (v.await, o.await);
        if let Some(e) = v.or(o) {
            return Err(Error::Gpu {
                op: op.to_string(),
                message: e.to_string(),
            });
        }
        self.check_lost()?;
        Ok(out)
    }

    /// Runs `f`, one of the library's awaitable operations, to its end on the calling thread:
    /// the blocking forms are this over the awaitable ones. Natively, while `f` waits, the
    /// device is polled until the GPU is idle (its callbacks are what `f` waits for). A web page
    /// cannot block (the browser's event loop must run for the GPU's answer to arrive), so
    /// there a future not ready at once is an error saying to await it, not a hang.
    pub(crate) fn block_on<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
                return out;
            }
            #[cfg(target_arch = "wasm32")]
            return Err(Error::invalid(format!(
                "`{what}` waits for the GPU, which a web page cannot block on: await it instead"
            )));
            #[cfg(not(target_arch = "wasm32"))]
            {
                let _ = what;
                self.poll_device(wgpu::PollType::wait_indefinitely())?;
            }
        }
    }

    /// The caller polls the device itself: a game engine's frame loop calls
    /// `device.poll(PollType::Poll)` every frame (Bevy's renderer does). The awaitable
    /// operations then never block the thread inside `device.poll`: a future such as
    /// [`PaliGemma::advance`](crate::PaliGemma::advance) is polled once per frame (any
    /// executor, or a no-op waker) and is ready once the GPU has answered.
    /// [`PaliGemma::block_on`](crate::PaliGemma::block_on) still waits. Off by default: the
    /// operations then wait inside `device.poll`,
    /// which suits a thread that does nothing else.
    pub fn set_polled_by_caller(&self, on: bool) {
        self.inner.polled_by_caller.store(on, Ordering::Relaxed);
    }

    /// Between the layers of long work (vision, prefill): when the caller polls the device
    /// ([`set_polled_by_caller`](Self::set_polled_by_caller)), returns to its frame loop once,
    /// so the frame's own submissions go to the queue between two layers instead of behind the
    /// whole prefill. Otherwise ready at once.
    pub(crate) fn between_layers(&self) -> YieldOnce {
        #[cfg(not(target_arch = "wasm32"))]
        let yielded = !self.inner.polled_by_caller.load(Ordering::Relaxed);
        #[cfg(target_arch = "wasm32")]
        let yielded = true;
        YieldOnce { yielded }
    }

    /// Splits `n` workgroups over x and y so no dimension exceeds the device limit; shaders
    /// rebuild the linear index with `flat_workgroup` (grid.wgsl) and drop the overhang.
    pub(crate) fn grid(&self, n: u32) -> [u32; 3] {
        let max = self
            .inner
            .limits
            .max_compute_workgroups_per_dimension
            .max(1);
        if n <= max {
            [n.max(1), 1, 1]
        } else {
            let y = n.div_ceil(max);
            [n.div_ceil(y), y, 1]
        }
    }
}

/// A future that is pending once (waking its task at once), then ready.
pub(crate) struct YieldOnce {
    yielded: bool,
}

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.yielded {
            return std::task::Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

#[cfg(test)]
mod tests;
