//! The [`Recorder`]: kernel dispatches and copies batched into one command buffer. Every kernel
//! reads its sizes from `@group(0) @binding(0) var<uniform> p: Params`; the parameters of all
//! dispatches share one uniform buffer, each at an aligned offset.

use std::collections::HashMap;

use super::profile::Timer;
use super::{Gpu, Kernel};
use crate::error::Result;

struct Dispatch {
    kernel: Kernel,
    pipeline: wgpu::ComputePipeline,
    /// Whole buffers for the entry's declared bindings, in their order.
    buffers: Vec<wgpu::Buffer>,
    /// Byte offset and size of this dispatch's parameters in the shared uniform buffer.
    params: (u64, u64),
    groups: [u32; 3],
}

enum Cmd {
    Dispatch(Dispatch),
    Copy {
        src: wgpu::Buffer,
        src_offset: u64,
        dst: wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    },
    /// Mip level 0 of a 2D texture into a buffer, rows `bytes_per_row` apart.
    CopyTexture {
        texture: wgpu::Texture,
        dst: wgpu::Buffer,
        bytes_per_row: u32,
    },
}

/// Records kernel dispatches and copies, then submits them as one command buffer.
pub(crate) struct Recorder<'g> {
    gpu: &'g Gpu,
    cmds: Vec<Cmd>,
    params: Vec<u8>,
}

impl Gpu {
    /// Starts recording a batch of dispatches.
    pub(crate) fn recorder(&self) -> Recorder<'_> {
        Recorder {
            gpu: self,
            cmds: Vec::new(),
            params: Vec::new(),
        }
    }
}

impl Recorder<'_> {
    pub fn gpu(&self) -> &Gpu {
        self.gpu
    }

    /// Queues one dispatch of `kernel` (a declared [`Entry`](crate::shaders::Entry), or one
    /// with override constants) with `params` at binding 0 and `buffers`, whole, at the
    /// entry's declared bindings in their order. A count or a params size other than the
    /// declaration's is an error.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        kernel: impl Into<Kernel>,
        params: &P,
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) -> Result<()> {
        let kernel = kernel.into();
        kernel.entry.check(size_of::<P>(), buffers.len())?;
        self.gpu.count_dispatch();
        let pipeline = self.gpu.pipeline(kernel)?;
        let align = self.gpu.limits().min_uniform_buffer_offset_alignment as usize;
        let offset = self.params.len().div_ceil(align) * align;
        let bytes = bytemuck::bytes_of(params);
        self.params.resize(offset, 0);
        self.params.extend_from_slice(bytes);
        self.cmds.push(Cmd::Dispatch(Dispatch {
            kernel,
            pipeline,
            buffers: buffers.iter().map(|&b| b.clone()).collect(),
            params: (offset as u64, bytes.len() as u64),
            groups,
        }));
        Ok(())
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

    /// Queues a copy of `texture` (mip level 0, layer 0) into `dst`, rows `bytes_per_row`
    /// apart (a multiple of 256).
    pub fn copy_texture(
        &mut self,
        texture: &wgpu::Texture,
        dst: &wgpu::Buffer,
        bytes_per_row: u32,
    ) {
        self.cmds.push(Cmd::CopyTexture {
            texture: texture.clone(),
            dst: dst.clone(),
            bytes_per_row,
        });
    }

    /// Submits what is recorded so far and goes on recording: long work (a vision tower, a
    /// prefill) is cut into submissions of one layer, so no single command buffer runs long
    /// enough for a driver watchdog (Windows' 2 s TDR, macOS, amdgpu) to kill it. Never
    /// between the passes of one op that share a [`Gpu::shared_scratch`] (argmax's, a
    /// sample's): another thread's submission could come between them and overwrite it.
    pub fn flush(&mut self, op: &str) -> Result<()> {
        let cmds = std::mem::take(&mut self.cmds);
        let params = std::mem::take(&mut self.params);
        submit(self.gpu, op, &cmds, &params, None).map(drop)
    }

    /// Builds bind groups, encodes everything and submits it. `op` names the work in errors.
    pub fn submit(self, op: &str) -> Result<()> {
        submit(self.gpu, op, &self.cmds, &self.params, None).map(drop)
    }

    /// Like [`submit`](Self::submit), but the parameters go to the cache's persistent uniform
    /// buffer and bind groups are reused when a dispatch repeats (same pipeline, parameter slot
    /// and buffers), as it does at every decode step: steady-state decoding then creates no
    /// GPU objects at all. Returns the submission's index (to wait for it alone); `None` when
    /// nothing was recorded.
    pub fn submit_cached(
        self,
        op: &str,
        cache: &mut DispatchCache,
    ) -> Result<Option<wgpu::SubmissionIndex>> {
        submit(self.gpu, op, &self.cmds, &self.params, Some(cache))
    }
}

fn submit(
    gpu: &Gpu,
    op: &str,
    cmds: &[Cmd],
    params: &[u8],
    mut cache: Option<&mut DispatchCache>,
) -> Result<Option<wgpu::SubmissionIndex>> {
    if cmds.is_empty() {
        return Ok(None);
    }
    let uniform = match cache.as_deref_mut() {
        Some(c) => c.uniform(gpu, params)?,
        None => {
            let size = params.len().max(4).div_ceil(16) as u64 * 16;
            gpu.buffer_with("params", params, size, wgpu::BufferUsages::UNIFORM)?
        }
    };
    let kernels: Vec<Kernel> = cmds
        .iter()
        .filter_map(|c| match c {
            Cmd::Dispatch(d) => Some(d.kernel),
            Cmd::Copy { .. } | Cmd::CopyTexture { .. } => None,
        })
        .collect();
    let timer = Timer::new(gpu, kernels.len())?;
    let index = gpu.scoped(op, || {
        let mut enc = gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(op) });
        encode(gpu, &mut enc, op, cmds, &uniform, cache, timer.as_ref());
        if let Some(t) = &timer {
            t.resolve(&mut enc);
        }
        gpu.queue().submit([enc.finish()])
    })?;
    if let Some(t) = timer {
        t.finish(gpu, &kernels)?;
    }
    Ok(Some(index))
}

/// Encodes the commands: one compute pass for each run of dispatches between copies (wgpu
/// orders storage accesses between dispatches inside a pass), or one pass per dispatch when
/// each is timed.
fn encode(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    op: &str,
    cmds: &[Cmd],
    uniform: &wgpu::Buffer,
    mut cache: Option<&mut DispatchCache>,
    timer: Option<&Timer>,
) {
    let per_kernel = timer.is_some_and(|t| t.per_kernel);
    let mut dispatched = 0;
    let mut i = 0;
    while i < cmds.len() {
        let run: Vec<&Dispatch> = cmds[i..]
            .iter()
            .map_while(|c| match c {
                Cmd::Dispatch(d) => Some(d),
                Cmd::Copy { .. } | Cmd::CopyTexture { .. } => None,
            })
            .take(if per_kernel { 1 } else { usize::MAX })
            .collect();
        if run.is_empty() {
            match &cmds[i] {
                Cmd::Copy {
                    src,
                    src_offset,
                    dst,
                    dst_offset,
                    size,
                } => enc.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size),
                Cmd::CopyTexture {
                    texture,
                    dst,
                    bytes_per_row,
                } => enc.copy_texture_to_buffer(
                    texture.as_image_copy(),
                    wgpu::TexelCopyBufferInfo {
                        buffer: dst,
                        layout: wgpu::TexelCopyBufferLayout {
                            offset: 0,
                            bytes_per_row: Some(*bytes_per_row),
                            rows_per_image: Some(texture.height()),
                        },
                    },
                    wgpu::Extent3d {
                        width: texture.width(),
                        height: texture.height(),
                        depth_or_array_layers: 1,
                    },
                ),
                Cmd::Dispatch(_) => unreachable!("a run of dispatches is never empty"),
            }
            i += 1;
            continue;
        }
        let end = dispatched + run.len();
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(op),
            timestamp_writes: timer.and_then(|t| t.pass_writes(dispatched, end)),
        });
        for d in &run {
            let group = match cache.as_deref_mut() {
                Some(c) => c.bind_group(gpu, d, uniform),
                None => make_bind_group(gpu, d, uniform),
            };
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
        }
        i += run.len();
        dispatched = end;
    }
}

fn make_bind_group(gpu: &Gpu, d: &Dispatch, uniform: &wgpu::Buffer) -> wgpu::BindGroup {
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: uniform,
            offset: d.params.0,
            size: wgpu::BufferSize::new(d.params.1),
        }),
    }];
    let declared = d.kernel.entry.bindings;
    entries.extend(
        declared
            .iter()
            .zip(&d.buffers)
            .map(|(b, buffer)| wgpu::BindGroupEntry {
                binding: b.index,
                resource: buffer.as_entire_binding(),
            }),
    );
    gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &d.pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}

/// What a bind group was made from (the pipeline fixes the entry, hence the bindings the
/// buffers go to).
#[derive(PartialEq, Eq, Hash)]
struct BindKey {
    pipeline: wgpu::ComputePipeline,
    params: (u64, u64),
    buffers: Vec<wgpu::Buffer>,
}

/// Bind groups and a parameter buffer kept across submissions of the same dispatches (see
/// [`Recorder::submit_cached`]). One per decoding session.
#[derive(Default)]
pub(crate) struct DispatchCache {
    uniform: Option<wgpu::Buffer>,
    groups: HashMap<BindKey, wgpu::BindGroup>,
}

impl DispatchCache {
    /// A bound on cached bind groups, in case a caller's dispatches never repeat.
    const MAX_GROUPS: usize = 8192;

    /// The persistent parameter buffer with `params` written in, regrown (and the bind groups
    /// that point into the old one dropped) when too small.
    fn uniform(&mut self, gpu: &Gpu, params: &[u8]) -> Result<wgpu::Buffer> {
        let size = params.len().max(4).div_ceil(16) as u64 * 16;
        if self.uniform.as_ref().is_none_or(|u| u.size() < size) {
            self.groups.clear();
            self.uniform = Some(gpu.scoped("allocating the parameter buffer", || {
                gpu.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params (cached)"),
                    size: size.next_power_of_two(),
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })?);
        }
        if self.groups.len() > Self::MAX_GROUPS {
            self.groups.clear();
        }
        let u = self.uniform.clone().expect("just set");
        gpu.write(&u, 0, params)?;
        Ok(u)
    }

    fn bind_group(&mut self, gpu: &Gpu, d: &Dispatch, uniform: &wgpu::Buffer) -> wgpu::BindGroup {
        let key = BindKey {
            pipeline: d.pipeline.clone(),
            params: d.params,
            buffers: d.buffers.clone(),
        };
        self.groups
            .entry(key)
            .or_insert_with(|| make_bind_group(gpu, d, uniform))
            .clone()
    }
}
