//! The GPU runtime: one `wgpu::Device` and `Queue`, the adapter's real limits and optional
//! features, a cache of compute pipelines, and a [`Recorder`] that batches kernel dispatches
//! into one submission. This is the only place that explains wgpu boilerplate.
//!
//! A `Gpu` is made by the library ([`Gpu::new`], which picks an adapter) or wraps a device the
//! caller already owns ([`Gpu::from_device`], e.g. a game engine's). Every GPU operation runs
//! inside error scopes, so validation errors, out-of-memory and device loss come back as
//! [`Error`] values instead of panics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::shaders::Shader;

/// How [`Gpu::new`] picks an adapter. Fields left `None` fall back to the environment
/// variables wgpu users know (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, `WGPU_POWER_PREF`), then to
/// the highest-performance adapter.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Backends to consider, e.g. `wgpu::Backends::VULKAN`.
    pub backends: Option<wgpu::Backends>,
    /// A case-insensitive substring of the adapter's name, e.g. `"llvmpipe"` or `"H100"`.
    pub adapter_name: Option<String>,
    /// Do not request optional features (f16, subgroups, cooperative matrices), to exercise the
    /// portable fallback paths.
    pub no_optional_features: bool,
}

/// Optional features the kernels can use; each has a fallback path that needs none of them.
const OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS);

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// Unknown for a caller's device unless the caller passes it.
    info: Option<wgpu::AdapterInfo>,
    limits: wgpu::Limits,
    features: wgpu::Features,
    /// Set by the device-lost callback (only on devices the library created itself).
    lost: Arc<Mutex<Option<String>>>,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    /// Bytes of every buffer `storage`/`storage_init` created (never decremented): load and
    /// session footprints are differences of this counter.
    allocated: AtomicU64,
    /// GPU timing, when on (see [`Gpu::set_profiling`]).
    profile: Mutex<Option<Profile>>,
    /// Each pipeline's cache key, to name kernels in profiles.
    pipeline_names: Mutex<HashMap<wgpu::ComputePipeline, String>>,
    /// A 16-byte buffer bound where a kernel's optional input (e.g. a bias) is absent.
    dummy: wgpu::Buffer,
    pipelines: Mutex<HashMap<String, wgpu::ComputePipeline>>,
}

/// A GPU device with the state the kernels need. Cheap to clone (shared handle).
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
    /// Picks an adapter (see [`GpuOptions`]) and creates a device with the adapter's own limits
    /// (not wgpu's conservative defaults) and the optional features it has.
    pub fn new(opts: &GpuOptions) -> Result<Gpu> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if let Some(b) = opts.backends {
            desc.backends = b;
        }
        let instance = wgpu::Instance::new(desc);
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let wanted_name = opts
            .adapter_name
            .clone()
            .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
            .map(|s| s.to_lowercase());
        let adapter = match &wanted_name {
            Some(name) => {
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(name))
                    .ok_or_else(|| {
                        Error::NoAdapter(format!(
                            "no adapter name contains {name:?}; found {names:?}"
                        ))
                    })?
            }
            None => pollster::block_on(
                instance.request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::from_env()
                        .unwrap_or(wgpu::PowerPreference::HighPerformance),
                    force_fallback_adapter: false,
                    compatible_surface: None,
                    apply_limit_buckets: false,
                }),
            )
            .map_err(|e| {
                Error::NoAdapter(format!(
                    "{e} (is a Vulkan, Metal or DX12 driver installed? on Linux without a GPU, \
                     `apt-get install mesa-vulkan-drivers` gives lavapipe)"
                ))
            })?,
        };
        let info = adapter.get_info();
        let features = if opts.no_optional_features {
            wgpu::Features::empty()
        } else {
            adapter.features() & OPTIONAL_FEATURES
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("paligemma"),
            required_features: features,
            required_limits: adapter.limits(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Device(format!("{} ({:?}): {e}", info.name, info.backend)))?;
        // Everything the library does runs in error scopes; anything that still escapes them
        // is logged rather than left to wgpu's default handler, which panics.
        device.on_uncaptured_error(Arc::new(|e| log::error!("uncaptured wgpu error: {e}")));
        let lost = Arc::new(Mutex::new(None));
        let lost_cb = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = lost_cb.lock() {
                *l = Some(format!("{reason:?}: {msg}"));
            }
        });
        log::info!(
            "adapter {} ({:?}, {:?}), features {:?}",
            info.name,
            info.backend,
            info.device_type,
            features
        );
        Ok(Self::wrap(device, queue, Some(info), lost))
    }

    /// Wraps a device the caller already owns. The library uses the device's own features and
    /// limits and never replaces the caller's error handlers or device-lost callback.
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: Option<wgpu::AdapterInfo>,
    ) -> Gpu {
        Self::wrap(device, queue, info, Arc::new(Mutex::new(None)))
    }

    fn wrap(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: Option<wgpu::AdapterInfo>,
        lost: Arc<Mutex<Option<String>>>,
    ) -> Gpu {
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Gpu {
            inner: Arc::new(Inner {
                profile: Mutex::new(None),
                pipeline_names: Mutex::new(HashMap::new()),
                allocated: AtomicU64::new(0),
                dummy,
                limits: device.limits(),
                features: device.features(),
                device,
                queue,
                info,
                lost,
                modules: Mutex::new(HashMap::new()),
                pipelines: Mutex::new(HashMap::new()),
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
    /// Whether the device has `SHADER_F16` (then 16-bit weights are the default precision).
    pub fn has_f16(&self) -> bool {
        self.inner.features.contains(wgpu::Features::SHADER_F16)
    }

    /// Whether submissions can be timed on the GPU (the adapter has TIMESTAMP_QUERY).
    pub fn has_timestamps(&self) -> bool {
        self.inner
            .features
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Turns GPU timing on or off. While on, each submission waits for the GPU and adds its
    /// duration (first dispatch to last, by timestamps) to a total read by
    /// [`take_gpu_ms`](Self::take_gpu_ms). With `per_kernel`, every dispatch gets a compute
    /// pass and timestamps of its own, totalled per pipeline
    /// ([`take_kernel_times`](Self::take_kernel_times)). For benchmarks: it serialises the CPU
    /// and the GPU. Without TIMESTAMP_QUERY it stays off.
    pub fn set_profiling(&self, on: bool, per_kernel: bool) {
        let state = (on && self.has_timestamps()).then(|| Profile {
            total_ns: 0.0,
            per_kernel: per_kernel.then(HashMap::new),
        });
        *self.inner.profile.lock().expect("profile") = state;
    }

    /// The GPU time of the submissions since the last call, in ms (None when not profiling).
    pub fn take_gpu_ms(&self) -> Option<f64> {
        let mut p = self.inner.profile.lock().expect("profile");
        p.as_mut().map(|p| std::mem::take(&mut p.total_ns) / 1e6)
    }

    /// Per pipeline: (name, dispatches, total ms) since the last call, slowest first.
    pub fn take_kernel_times(&self) -> Vec<(String, usize, f64)> {
        let mut p = self.inner.profile.lock().expect("profile");
        let Some(map) = p.as_mut().and_then(|p| p.per_kernel.as_mut()) else {
            return Vec::new();
        };
        let mut v: Vec<(String, usize, f64)> =
            map.drain().map(|(k, (n, ns))| (k, n, ns / 1e6)).collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2));
        v
    }

    /// Bytes allocated through this `Gpu` so far (a cumulative counter).
    pub fn allocated_bytes(&self) -> u64 {
        self.inner.allocated.load(Ordering::Relaxed)
    }

    /// A small buffer to bind where an optional input is absent.
    pub fn dummy(&self) -> &wgpu::Buffer {
        &self.inner.dummy
    }

    /// The largest buffer one storage binding may cover: what a single weight chunk may hold.
    pub fn max_binding_bytes(&self) -> u64 {
        self.inner
            .limits
            .max_storage_buffer_binding_size
            .min(self.inner.limits.max_buffer_size)
    }

    /// Returns `Err` if the device-lost callback has fired.
    pub fn check_lost(&self) -> Result<()> {
        match self.inner.lost.lock().ok().and_then(|l| l.clone()) {
            Some(m) => Err(Error::DeviceLost(m)),
            None => Ok(()),
        }
    }

    /// Runs `f` inside validation and out-of-memory error scopes; any error becomes `Err` naming `op`.
    pub fn scoped<T>(&self, op: &str, f: impl FnOnce() -> T) -> Result<T> {
        self.check_lost()?;
        let oom = self
            .inner
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self
            .inner
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(val.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = v.or(o) {
            return Err(Error::Gpu {
                op: op.to_string(),
                message: e.to_string(),
            });
        }
        self.check_lost()?;
        Ok(out)
    }

    /// The compute pipeline for `shader`'s `entry` with the given override constants, built once.
    pub fn pipeline(
        &self,
        shader: &Shader,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> Result<wgpu::ComputePipeline> {
        let mut key = format!("{}::{entry}", shader.name);
        for (k, v) in constants {
            key.push_str(&format!(" {k}={v}"));
        }
        if let Some(p) = self
            .inner
            .pipelines
            .lock()
            .expect("pipeline cache")
            .get(&key)
        {
            return Ok(p.clone());
        }
        let missing = shader.features - self.features();
        if !missing.is_empty() {
            return Err(Error::invalid(format!(
                "shader {} needs {missing:?}, which this device lacks",
                shader.name
            )));
        }
        let pipeline = self.scoped(&format!("building pipeline {key}"), || {
            let module = {
                let mut modules = self.inner.modules.lock().expect("module cache");
                modules
                    .entry(shader.name)
                    .or_insert_with(|| {
                        self.inner
                            .device
                            .create_shader_module(wgpu::ShaderModuleDescriptor {
                                label: Some(shader.name),
                                source: wgpu::ShaderSource::Wgsl(shader.source.into()),
                            })
                    })
                    .clone()
            };
            self.inner
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&key),
                    layout: None,
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
        })?;
        self.inner
            .pipelines
            .lock()
            .expect("pipeline cache")
            .insert(key.clone(), pipeline.clone());
        self.inner
            .pipeline_names
            .lock()
            .expect("pipeline names")
            .insert(pipeline.clone(), key);
        Ok(pipeline)
    }

    fn check_size(&self, label: &str, size: u64) -> Result<u64> {
        self.inner.allocated.fetch_add(size, Ordering::Relaxed);
        let max = self.inner.limits.max_buffer_size;
        if size > max {
            return Err(Error::invalid(format!(
                "buffer `{label}` needs {size} bytes, over this device's max_buffer_size {max}"
            )));
        }
        // wgpu copies and maps in 4-byte units, weights are read as 16-byte vectors, and a
        // zero-sized binding is invalid: round up to 16.
        Ok(size.max(16).div_ceil(16) * 16)
    }

    /// An uninitialised storage buffer that can also be copied to and from.
    pub fn storage(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        let size = self.check_size(label, size)?;
        self.scoped(&format!("allocating `{label}` ({size} bytes)"), || {
            self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// A storage buffer holding `bytes` (padded with zeros to a multiple of 4).
    pub fn storage_init(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        let size = self.check_size(label, bytes.len() as u64)?;
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        self.buffer_with(label, bytes, size, usage)
    }

    /// Creates a buffer mapped at creation and copies `bytes` in: one copy, no staging buffer
    /// (a 1 GiB embedding chunk is not duplicated). Unlike `DeviceExt::create_buffer_init`,
    /// which panics when the mapping fails (a lost device), this returns `Err`.
    fn buffer_with(
        &self,
        label: &str,
        bytes: &[u8],
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        let op = format!("uploading `{label}` ({} bytes)", bytes.len());
        let buffer = self.scoped(&op, || {
            self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: true,
            })
        })?;
        {
            let mut view = buffer.get_mapped_range_mut(..).map_err(|e| Error::Gpu {
                op: op.clone(),
                message: e.to_string(),
            })?;
            view.slice(..bytes.len()).copy_from_slice(bytes);
        }
        self.scoped(&op, || buffer.unmap())?;
        Ok(buffer)
    }

    /// A storage buffer holding `data` as f32.
    pub fn upload_f32(&self, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
        self.storage_init(label, bytemuck::cast_slice(data))
    }

    /// Writes `data` into `buf` at byte `offset` (queued; ordered before the next submission).
    pub fn write(&self, buf: &wgpu::Buffer, offset: u64, data: &[u8]) -> Result<()> {
        self.scoped("writing a buffer", || {
            if data.len().is_multiple_of(4) {
                self.inner.queue.write_buffer(buf, offset, data);
            } else {
                let mut v = data.to_vec();
                v.resize(data.len().div_ceil(4) * 4, 0);
                self.inner.queue.write_buffer(buf, offset, &v);
            }
        })
    }

    /// Copies `size` bytes from `buf` at `offset` back to the CPU, waiting for the GPU.
    pub fn read(&self, buf: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let padded = size.max(4).div_ceil(4) * 4;
        let staging = self.scoped("allocating a read-back buffer", || {
            self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("read-back"),
                size: padded,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        self.scoped("reading a buffer back", || {
            let mut enc = self
                .inner
                .device
                .create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(buf, offset, &staging, 0, padded);
            self.inner.queue.submit([enc.finish()]);
        })?;
        let (tx, rx) = std::sync::mpsc::channel();
        self.scoped("mapping a read-back buffer", || {
            staging.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            })
        })?;
        self.wait()?;
        rx.recv()
            .map_err(|_| Error::DeviceLost("map callback never ran".into()))?
            .map_err(|e| Error::Gpu {
                op: "mapping a read-back buffer".into(),
                message: e.to_string(),
            })?;
        let view = staging.get_mapped_range(..).map_err(|e| Error::Gpu {
            op: "mapping a read-back buffer".into(),
            message: e.to_string(),
        })?;
        let mut out = view.to_vec();
        drop(view);
        self.scoped("unmapping a read-back buffer", || staging.unmap())?;
        out.truncate(size as usize);
        Ok(out)
    }

    /// Reads `count` f32 values starting at element `offset`.
    pub fn read_f32(&self, buf: &wgpu::Buffer, offset: usize, count: usize) -> Result<Vec<f32>> {
        let bytes = self.read(buf, offset as u64 * 4, count as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Reads `count` u32 values starting at element `offset`.
    pub fn read_u32(&self, buf: &wgpu::Buffer, offset: usize, count: usize) -> Result<Vec<u32>> {
        let bytes = self.read(buf, offset as u64 * 4, count as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Blocks until all submitted work is done.
    pub fn wait(&self) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu {
                op: "waiting for the GPU".into(),
                message: e.to_string(),
            })?;
        self.check_lost()
    }

    /// Starts recording a batch of dispatches.
    pub fn recorder(&self) -> Recorder<'_> {
        Recorder {
            gpu: self,
            cmds: Vec::new(),
            params: Vec::new(),
        }
    }

    /// Splits `n` workgroups over x and y so no dimension exceeds the device limit; shaders
    /// rebuild the linear index as `wid.x + wid.y * nwg.x` and drop the overhang.
    pub fn grid(&self, n: u32) -> [u32; 3] {
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

/// A buffer range bound to one `@binding` of a kernel.
#[derive(Clone)]
pub struct Bind {
    pub binding: u32,
    pub buffer: wgpu::Buffer,
}

/// Shorthand for a whole-buffer binding.
pub fn bind(binding: u32, buffer: &wgpu::Buffer) -> Bind {
    Bind {
        binding,
        buffer: buffer.clone(),
    }
}

enum Cmd {
    Dispatch {
        pipeline: wgpu::ComputePipeline,
        binds: Vec<Bind>,
        /// Byte offset and size of this dispatch's parameters in the shared uniform buffer.
        params: (u64, u64),
        groups: [u32; 3],
    },
    Copy {
        src: wgpu::Buffer,
        src_offset: u64,
        dst: wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    },
}

/// Records kernel dispatches and copies, then submits them as one command buffer. Every kernel
/// reads its sizes from `@group(0) @binding(0) var<uniform> p: Params`; the parameters of all
/// dispatches share one uniform buffer, each at an aligned offset.
pub struct Recorder<'g> {
    gpu: &'g Gpu,
    cmds: Vec<Cmd>,
    params: Vec<u8>,
}

impl Recorder<'_> {
    pub fn gpu(&self) -> &Gpu {
        self.gpu
    }

    /// Queues one dispatch of `pipeline` with `params` at binding 0 and `binds` after it.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        pipeline: wgpu::ComputePipeline,
        params: &P,
        binds: Vec<Bind>,
        groups: [u32; 3],
    ) {
        let align = self.gpu.limits().min_uniform_buffer_offset_alignment as usize;
        let offset = self.params.len().div_ceil(align) * align;
        let bytes = bytemuck::bytes_of(params);
        self.params.resize(offset, 0);
        self.params.extend_from_slice(bytes);
        self.cmds.push(Cmd::Dispatch {
            pipeline,
            binds,
            params: (offset as u64, bytes.len() as u64),
            groups,
        });
    }

    /// Queues a buffer-to-buffer copy (byte offsets and size, multiples of 4).
    pub fn copy(
        &mut self,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    ) {
        self.cmds.push(Cmd::Copy {
            src: src.clone(),
            src_offset,
            dst: dst.clone(),
            dst_offset,
            size,
        });
    }

    /// Builds bind groups, encodes everything and submits it. `op` names the work in errors.
    pub fn submit(self, op: &str) -> Result<()> {
        self.submit_cached(op, None)
    }

    /// Like [`submit`](Self::submit), but with `cache` the parameters go to the cache's
    /// persistent uniform buffer and bind groups are reused when a dispatch repeats (same
    /// pipeline, parameter slot and buffers), as it does at every decode step: steady-state
    /// decoding then creates no GPU objects at all.
    pub fn submit_cached(self, op: &str, mut cache: Option<&mut DispatchCache>) -> Result<()> {
        if self.cmds.is_empty() {
            return Ok(());
        }
        let gpu = self.gpu;
        let device = gpu.device();
        let size = self.params.len().max(4).div_ceil(16) as u64 * 16;
        let uniform = match cache.as_deref_mut() {
            Some(c) => {
                if c.uniform.as_ref().is_none_or(|u| u.size() < size) {
                    c.groups.clear();
                    c.uniform = Some(gpu.scoped("allocating the parameter buffer", || {
                        device.create_buffer(&wgpu::BufferDescriptor {
                            label: Some("params (cached)"),
                            size: size.next_power_of_two(),
                            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                            mapped_at_creation: false,
                        })
                    })?);
                }
                if c.groups.len() > DispatchCache::MAX_GROUPS {
                    c.groups.clear();
                }
                let u = c.uniform.clone().expect("just set");
                gpu.write(&u, 0, &self.params)?;
                u
            }
            None => gpu.buffer_with("params", &self.params, size, wgpu::BufferUsages::UNIFORM)?,
        };
        let n_dispatch = self
            .cmds
            .iter()
            .filter(|c| matches!(c, Cmd::Dispatch { .. }))
            .count();
        // Per-kernel timing needs two queries a dispatch; past a query set's limit the
        // submission is timed as a whole.
        let fits = 2 * n_dispatch <= wgpu::QUERY_SET_MAX_QUERIES as usize;
        let (profiling, per_kernel) = match &*gpu.inner.profile.lock().expect("profile") {
            Some(p) => (true, p.per_kernel.is_some() && fits),
            None => (false, false),
        };
        // Two timestamps per submission, or per dispatch when profiling kernels.
        let n_queries = if per_kernel { 2 * n_dispatch } else { 2 } as u32;
        let timer = (profiling && n_dispatch > 0)
            .then(|| {
                gpu.scoped("creating timestamp queries", || {
                    let set = device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("timer"),
                        ty: wgpu::QueryType::Timestamp,
                        count: n_queries,
                    });
                    let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("timestamps"),
                        size: 8 * n_queries as u64,
                        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                        mapped_at_creation: false,
                    });
                    (set, resolve)
                })
            })
            .transpose()?;
        let first_pass = self
            .cmds
            .iter()
            .position(|c| matches!(c, Cmd::Dispatch { .. }));
        let last_pass = self
            .cmds
            .iter()
            .rposition(|c| matches!(c, Cmd::Dispatch { .. }));
        let mut kernels: Vec<wgpu::ComputePipeline> = Vec::new();
        let result = gpu.scoped(op, || {
            let mut enc =
                device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(op) });
            let mut i = 0;
            while i < self.cmds.len() {
                if let Cmd::Copy {
                    src,
                    src_offset,
                    dst,
                    dst_offset,
                    size,
                } = &self.cmds[i]
                {
                    enc.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size);
                    i += 1;
                    continue;
                }
                // One compute pass for each run of dispatches; wgpu orders storage accesses
                // between dispatches inside a pass.
                let run_end = self.cmds[i..]
                    .iter()
                    .position(|c| matches!(c, Cmd::Copy { .. }))
                    .map_or(self.cmds.len(), |n| i + n);
                let timestamp_writes = timer.as_ref().and_then(|(set, _)| {
                    let (begin, end) = if per_kernel {
                        let d = 2 * kernels.len() as u32;
                        (Some(d), Some(d + 1))
                    } else {
                        let begin = (Some(i) == first_pass).then_some(0);
                        (begin, last_pass.filter(|&l| l < run_end).map(|_| 1))
                    };
                    (begin.is_some() || end.is_some()).then_some(wgpu::ComputePassTimestampWrites {
                        query_set: set,
                        beginning_of_pass_write_index: begin,
                        end_of_pass_write_index: end,
                    })
                });
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(op),
                    timestamp_writes,
                });
                while let Some(Cmd::Dispatch {
                    pipeline,
                    binds,
                    params,
                    groups,
                }) = self.cmds.get(i)
                {
                    let make = || {
                        let mut entries = vec![wgpu::BindGroupEntry {
                            binding: 0,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &uniform,
                                offset: params.0,
                                size: wgpu::BufferSize::new(params.1),
                            }),
                        }];
                        entries.extend(binds.iter().map(|b| wgpu::BindGroupEntry {
                            binding: b.binding,
                            resource: b.buffer.as_entire_binding(),
                        }));
                        device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: None,
                            layout: &pipeline.get_bind_group_layout(0),
                            entries: &entries,
                        })
                    };
                    let bg = match cache.as_deref_mut() {
                        Some(c) => {
                            let key = BindKey {
                                pipeline: pipeline.clone(),
                                params: *params,
                                buffers: binds
                                    .iter()
                                    .map(|b| (b.binding, b.buffer.clone()))
                                    .collect(),
                            };
                            c.groups.entry(key).or_insert_with(make).clone()
                        }
                        None => make(),
                    };
                    pass.set_pipeline(pipeline);
                    pass.set_bind_group(0, &bg, &[]);
                    pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                    i += 1;
                    if per_kernel {
                        kernels.push(pipeline.clone());
                        break; // one pass, with its own timestamps, per dispatch
                    }
                }
            }
            if let Some((set, resolve)) = &timer {
                enc.resolve_query_set(set, 0..n_queries, resolve, 0);
            }
            gpu.queue().submit([enc.finish()]);
        });
        result?;
        if let Some((_, resolve)) = &timer {
            let ticks: Vec<u64> =
                bytemuck::pod_collect_to_vec(&gpu.read(resolve, 0, 8 * n_queries as u64)?);
            let period = gpu.queue().get_timestamp_period() as f64;
            let span = |j: usize| ticks[2 * j + 1].saturating_sub(ticks[2 * j]) as f64 * period;
            let names = gpu.inner.pipeline_names.lock().expect("pipeline names");
            if let Some(p) = gpu.inner.profile.lock().expect("profile").as_mut() {
                match p.per_kernel.as_mut().filter(|_| per_kernel) {
                    Some(map) => {
                        for (j, k) in kernels.iter().enumerate() {
                            let name = names.get(k).cloned().unwrap_or_else(|| "?".into());
                            let e = map.entry(name).or_default();
                            e.0 += 1;
                            e.1 += span(j);
                            p.total_ns += span(j);
                        }
                    }
                    None => p.total_ns += span(0),
                }
            }
        }
        Ok(())
    }
}

/// GPU timing state: the total, and per pipeline (dispatches, ns) when profiling kernels.
struct Profile {
    total_ns: f64,
    per_kernel: Option<HashMap<String, (usize, f64)>>,
}

/// What a bind group was made from.
#[derive(PartialEq, Eq, Hash)]
struct BindKey {
    pipeline: wgpu::ComputePipeline,
    params: (u64, u64),
    buffers: Vec<(u32, wgpu::Buffer)>,
}

/// Bind groups and a parameter buffer kept across submissions of the same dispatches (see
/// [`Recorder::submit_cached`]). One per decoding session.
#[derive(Default)]
pub struct DispatchCache {
    uniform: Option<wgpu::Buffer>,
    groups: HashMap<BindKey, wgpu::BindGroup>,
}

impl DispatchCache {
    /// A bound on cached bind groups, in case a caller's dispatches never repeat.
    const MAX_GROUPS: usize = 8192;

    /// Bind groups currently cached.
    pub fn len(&self) -> usize {
        self.groups.len()
    }
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}
