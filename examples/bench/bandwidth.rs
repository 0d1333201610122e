//! The device memory bandwidth a decode step is held to, measured on the adapter in the same
//! run: a copy kernel (16-byte loads, four in flight per invocation, a grid that fills the GPU)
//! and the API's own `copy_buffer_to_buffer`, each in bytes read + written per second. Decode
//! is a stream over the weights, so `weight bytes / best` is its floor.

use std::time::Instant;

use paligemma::Gpu;

const COPY_WGSL: &str = r#"
@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = arrayLength(&src);
    let stride = nwg.x * 256u;
    var i = gid.x;
    for (; i + 3u * stride < n; i += 4u * stride) {
        let a = src[i];
        let b = src[i + stride];
        let c = src[i + 2u * stride];
        let d = src[i + 3u * stride];
        dst[i] = a;
        dst[i + stride] = b;
        dst[i + 2u * stride] = c;
        dst[i + 3u * stride] = d;
    }
    for (; i < n; i += stride) {
        dst[i] = src[i];
    }
}
"#;

/// Workgroups of the copy kernel: 16 per multiprocessor of the largest GPUs (132 on an H200).
const COPY_GROUPS: u32 = 2048;
/// Copies per timed submission, and timed submissions (the median is kept).
const COPIES: u64 = 8;
const REPS: usize = 5;

/// Bytes read + written per second.
pub struct Copy {
    pub kernel: f64,
    pub engine: f64,
}

impl Copy {
    /// Copies `bytes` (capped by the adapter's binding and buffer limits) both ways.
    pub fn measure(gpu: &Gpu, bytes: u64) -> anyhow::Result<Copy> {
        let limits = gpu.limits();
        let cap = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let size = bytes.min(cap) & !255;
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let buffer = || {
            gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("bench copy"),
                size,
                usage,
                mapped_at_creation: false,
            })
        };
        let (src, dst) = (buffer(), buffer());
        // Not zeros: a memory system may compress them.
        let pattern: Vec<u32> = (0..size / 4)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761))
            .collect();
        gpu.queue()
            .write_buffer(&src, 0, bytemuck::cast_slice(&pattern));
        let kernel = copy_kernel(gpu, &src, &dst)?;
        // The kernel copied every word: check a few far apart.
        for at in [0, pattern.len() / 3, pattern.len() - 4] {
            let got = gpu.read_u32(&dst, at, 4)?;
            anyhow::ensure!(
                got == pattern[at..at + 4],
                "the copy kernel copied wrongly at {at}"
            );
        }
        let engine = timed(gpu, |encoder| {
            encoder.copy_buffer_to_buffer(&src, 0, &dst, 0, size)
        })?;
        Ok(Copy {
            kernel: 2.0 * (size * COPIES) as f64 / kernel,
            engine: 2.0 * (size * COPIES) as f64 / engine,
        })
    }

    pub fn best(&self) -> f64 {
        self.kernel.max(self.engine)
    }
}

/// Seconds per submission of COPIES runs of the kernel.
fn copy_kernel(gpu: &Gpu, src: &wgpu::Buffer, dst: &wgpu::Buffer) -> anyhow::Result<f64> {
    let device = gpu.device();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("bench copy"),
        source: wgpu::ShaderSource::Wgsl(COPY_WGSL.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("bench copy"),
        layout: None,
        module: &module,
        entry_point: Some("copy"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("bench copy"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: src.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: dst.as_entire_binding(),
            },
        ],
    });
    let groups = COPY_GROUPS.min(gpu.limits().max_compute_workgroups_per_dimension);
    timed(gpu, |encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(groups, 1, 1);
    })
}

/// The median wall time of REPS submissions of COPIES recordings of `record`, after a warm-up,
/// each waited for.
fn timed(gpu: &Gpu, record: impl Fn(&mut wgpu::CommandEncoder)) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for rep in 0..=REPS {
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        for _ in 0..COPIES {
            record(&mut encoder);
        }
        let t = Instant::now();
        gpu.queue().submit([encoder.finish()]);
        gpu.wait()?;
        if rep > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(super::median(times))
}
