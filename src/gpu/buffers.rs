//! Buffers: storage allocation (checked against the device's limits and counted), uploads
//! that are flushed as they go, and read-back.

use std::sync::atomic::Ordering;

use super::Gpu;
use crate::error::{Error, Result};

/// Uploaded bytes after which the queue is flushed while loading. wgpu sends the staging copy
/// of a buffer made `mapped_at_creation` only at the next submission and frees it once that
/// is done: without flushing, a whole checkpoint would sit twice in memory until the first
/// image (5.9 GB for a bf16 3B model).
const FLUSH_BYTES: u64 = 64 << 20;

impl Gpu {
    fn check_size(&self, label: &str, size: u64) -> Result<u64> {
        let max = self.inner.limits.max_buffer_size;
        if size > max {
            return Err(Error::invalid(format!(
                "buffer `{label}` needs {size} bytes, over this device's max_buffer_size {max}"
            )));
        }
        self.inner.allocated.fetch_add(size, Ordering::Relaxed);
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

    /// A storage buffer of at least `size` bytes shared by every user of `name` on this
    /// device, replaced by a larger one when a user needs more: scratch that a kernel writes
    /// and reads within one submission (argmax's parts between its passes, sampling's sorted
    /// slices). Users never overlap: wgpu orders dispatches on a buffer within a submission,
    /// and the queue runs submissions in order.
    pub(crate) fn shared_scratch(&self, name: &'static str, size: u64) -> Result<wgpu::Buffer> {
        let held = self
            .inner
            .scratch
            .lock()
            .ok()
            .and_then(|s| s.get(name).cloned());
        if let Some(b) = held.filter(|b| b.size() >= size) {
            return Ok(b);
        }
        let b = self.storage(name, size)?;
        if let Ok(mut s) = self.inner.scratch.lock() {
            s.insert(name, b.clone());
        }
        Ok(b)
    }

    /// A storage buffer holding `bytes` (padded with zeros to a multiple of 16).
    pub fn storage_init(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        let size = self.check_size(label, bytes.len() as u64)?;
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let buffer = self.buffer_with(label, bytes, size, usage)?;
        let pending = self.inner.unflushed.fetch_add(size, Ordering::Relaxed) + size;
        if pending >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(buffer)
    }

    /// A storage buffer holding `data` as f32.
    pub fn upload_f32(&self, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
        self.storage_init(label, bytemuck::cast_slice(data))
    }

    /// Creates a buffer mapped at creation and copies `bytes` in: one copy in this process (a
    /// 1 GiB embedding chunk is not duplicated on the heap). Unlike
    /// `DeviceExt::create_buffer_init`, which panics when the mapping fails (a lost device),
    /// this returns `Err`. On the web a mapped range is a copy in wasm memory (wgpu's web
    /// backend writes it back on unmap), which would double the memory a load peaks at; there
    /// the bytes go through `queue.write_buffer`, which the browser reads from wasm memory.
    pub(crate) fn buffer_with(
        &self,
        label: &str,
        bytes: &[u8],
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        let web = cfg!(target_arch = "wasm32");
        let op = format!("uploading `{label}` ({} bytes)", bytes.len());
        let buffer = self.scoped(&op, || {
            self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: match web {
                    true => usage | wgpu::BufferUsages::COPY_DST,
                    false => usage,
                },
                mapped_at_creation: !web,
            })
        })?;
        if web {
            self.write(&buffer, 0, bytes)?;
            return Ok(buffer);
        }
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

    /// Sends every pending upload and waits for it, so wgpu frees the staging copies.
    /// In a browser, which frees its staging memory itself, the uploads are submitted and not
    /// waited for.
    pub fn flush(&self) -> Result<()> {
        self.inner.unflushed.store(0, Ordering::Relaxed);
        self.scoped("flushing uploads", || self.inner.queue.submit([]))?;
        #[cfg(not(target_arch = "wasm32"))]
        self.wait()?;
        Ok(())
    }

    /// Writes `data` into `buf` at byte `offset` (queued; ordered before the next submission).
    pub fn write(&self, buf: &wgpu::Buffer, offset: u64, data: &[u8]) -> Result<()> {
        self.scoped("writing a buffer", || {
            // Whole words as they are; a ragged tail padded to one (writes are in words).
            let whole = data.len() / 4 * 4;
            if whole > 0 {
                self.inner.queue.write_buffer(buf, offset, &data[..whole]);
            }
            if whole < data.len() {
                let mut tail = [0u8; 4];
                tail[..data.len() - whole].copy_from_slice(&data[whole..]);
                self.inner
                    .queue
                    .write_buffer(buf, offset + whole as u64, &tail);
            }
        })
    }

    /// Copies `size` bytes from `buf` at `offset` back to the CPU, waiting for the GPU.
    pub fn read(&self, buf: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        self.block_on("read", self.read_async(buf, offset, size))
    }

    /// [`read`](Self::read), awaitable.
    pub async fn read_async(&self, buf: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let padded = size.max(4).div_ceil(4) * 4;
        let staging = self
            .scoped_async("allocating a read-back buffer", || {
                self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("read-back"),
                    size: padded,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .await?;
        self.scoped_async("reading a buffer back", || {
            let mut enc = self
                .inner
                .device
                .create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(buf, offset, &staging, 0, padded);
            self.inner.queue.submit([enc.finish()]);
        })
        .await?;
        let mut out = self.read_mapped_bytes(&staging, None).await?;
        out.truncate(size as usize);
        Ok(out)
    }

    /// A small buffer to read results back through, kept across steps: a decode loop copies
    /// its token into it inside the step's own submission, then maps it
    /// ([`read_mapped`](Self::read_mapped)), with no buffer, encoder or submission per token.
    pub(crate) fn read_back_buffer(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        self.scoped("allocating a read-back buffer", || {
            self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.max(4).div_ceil(4) * 4,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// The first `count` u32 values of a [`read_back_buffer`](Self::read_back_buffer) once the
    /// submitted work that fills it is done: the submission `after` (natively, waiting for it
    /// alone, so later submissions run on: a decode step read while the next one runs), or all
    /// of them.
    pub(crate) async fn read_mapped(
        &self,
        staging: &wgpu::Buffer,
        count: usize,
        after: Option<wgpu::SubmissionIndex>,
    ) -> Result<Vec<u32>> {
        let bytes = self.read_mapped_bytes(staging, after).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes[..count * 4]))
    }

    /// Maps `staging` (MAP_READ), copies it out and unmaps it.
    async fn read_mapped_bytes(
        &self,
        staging: &wgpu::Buffer,
        after: Option<wgpu::SubmissionIndex>,
    ) -> Result<Vec<u8>> {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.scoped_async("mapping a read-back buffer", || {
            staging.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            })
        })
        .await?;
        self.poll_until(after)?;
        let map_err = |message: String| Error::Gpu {
            op: "mapping a read-back buffer".into(),
            message,
        };
        rx.await
            .map_err(|_| Error::DeviceLost("map callback never ran".into()))?
            .map_err(|e| map_err(e.to_string()))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| map_err(e.to_string()))?;
        let out = view.to_vec();
        drop(view);
        self.scoped_async("unmapping a read-back buffer", || staging.unmap())
            .await?;
        Ok(out)
    }

    /// Reads `count` f32 values starting at element `offset`.
    pub fn read_f32(&self, buf: &wgpu::Buffer, offset: usize, count: usize) -> Result<Vec<f32>> {
        self.block_on("read_f32", self.read_f32_async(buf, offset, count))
    }

    /// [`read_f32`](Self::read_f32), awaitable.
    pub async fn read_f32_async(
        &self,
        buf: &wgpu::Buffer,
        offset: usize,
        count: usize,
    ) -> Result<Vec<f32>> {
        let bytes = self
            .read_async(buf, offset as u64 * 4, count as u64 * 4)
            .await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Reads `count` u32 values starting at element `offset`.
    pub fn read_u32(&self, buf: &wgpu::Buffer, offset: usize, count: usize) -> Result<Vec<u32>> {
        let bytes = self.read(buf, offset as u64 * 4, count as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Blocks until all submitted work is done.
    pub fn wait(&self) -> Result<()> {
        self.block_on("wait", self.wait_async())
    }

    /// [`wait`](Self::wait), awaitable: resolves when the queue's submitted work is done.
    pub async fn wait_async(&self) -> Result<()> {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.inner.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        self.poll_native()?;
        rx.await
            .map_err(|_| Error::DeviceLost("the queue never finished its work".into()))?;
        self.check_lost()
    }

    /// On native backends callbacks run only inside `device.poll`, so drive the device: until
    /// the queue is idle, or only what is ready when the caller polls the device itself
    /// ([`set_polled_by_caller`](Self::set_polled_by_caller)). In a browser the event loop
    /// runs them and this does nothing.
    fn poll_native(&self) -> Result<()> {
        self.poll_until(None)
    }

    /// [`poll_native`](Self::poll_native) until submission `index` is done, not the queue.
    #[cfg_attr(target_arch = "wasm32", allow(unused_variables))]
    fn poll_until(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.poll_device(if self.inner.polled_by_caller.load(Ordering::Relaxed) {
            wgpu::PollType::Poll
        } else {
            wgpu::PollType::Wait {
                submission_index: index,
                timeout: None,
            }
        })?;
        Ok(())
    }

    /// `device.poll(how)`, its error named.
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn poll_device(&self, how: wgpu::PollType) -> Result<()> {
        match self.inner.device.poll(how) {
            // A submission that failed (as every one does on a lost device) has no index to
            // wait for: wait for the queue, as then the map callback and the device-lost
            // check say what happened.
            Err(wgpu::PollError::WrongSubmissionIndex(..)) => {
                self.poll_device(wgpu::PollType::wait_indefinitely())
            }
            Err(e) => Err(Error::Gpu {
                op: "waiting for the GPU".into(),
                message: e.to_string(),
            }),
            Ok(_) => Ok(()),
        }
    }
}
