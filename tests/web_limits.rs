//! The published shapes fit every browser's WebGPU: paligemma-3b at 224 and 896 px and PaliGemma 2
//! 10B at 896 px (448 px and the 10B at 224 px have the same buffers, smaller), built and run
//! (encode, prefill of the image and a short prompt, two decode steps) on a device that asked for
//! WebGPU's default limits (128 MiB per storage binding, 256 MiB per buffer, 16 KiB of workgroup
//! memory, 8 storage buffers per stage). wgpu's noop backend runs no shader but allocates every
//! buffer and validates every buffer, binding, bind group and pipeline against those limits, as a
//! browser would; what does not fit one binding must be split (the embedding tables, the MLP's
//! rows) for the run to pass. Each model keeps one layer of each tower (every layer has the same
//! buffers as the first) and its full embedding table, so a 10B shape needs about 3 GB of host
//! memory.

use paligemma::config::PaliGemmaConfig;
use paligemma::{Gpu, ImageInput, PaliGemma, WeightFormat};

/// A device on wgpu's noop backend with WebGPU's default limits.
fn default_limits_gpu() -> Gpu {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::NOOP,
        backend_options: wgpu::BackendOptions {
            noop: wgpu::NoopBackendOptions {
                enable: true,
                ..Default::default()
            },
            ..Default::default()
        },
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .expect("wgpu's noop adapter");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: wgpu::Limits::default(),
        ..Default::default()
    }))
    .expect("a device with the default limits");
    Gpu::from_device(device, queue, Some(adapter.get_info()))
}

/// Builds `cfg` with one layer per tower and runs an image, a prompt and two steps through it.
fn runs_within_default_limits(name: &str, mut cfg: PaliGemmaConfig) {
    cfg.text.num_hidden_layers = 1;
    cfg.text.sliding_layers.truncate(1);
    cfg.vision.num_hidden_layers = 1;
    let gpu = default_limits_gpu();
    let limits = gpu.limits().clone();
    assert_eq!(limits.max_storage_buffer_binding_size, 128 << 20);
    let model = PaliGemma::random(gpu, cfg, 1, WeightFormat::Bf16, None)
        .unwrap_or_else(|e| panic!("{name}: building under the default limits: {e}"));
    let side = model.image_size();
    let pixels = vec![0f32; 3 * side * side];
    let image = model
        .block_on(model.encode(ImageInput::pixels(&pixels)))
        .unwrap_or_else(|e| panic!("{name}: encoding an image: {e}"));
    let mut ids = vec![model.config().image_token_index; model.num_image_tokens()];
    ids.extend([2, 100, 200, 108]);
    let mut state = model.new_state(ids.len(), 2).unwrap();
    let mut next = model
        .block_on(model.prefill(&mut state, &ids, &image))
        .unwrap_or_else(|e| panic!("{name}: prefill of {} tokens: {e}", ids.len()));
    let mut scratch = model.decode_scratch().unwrap();
    for _ in 0..2 {
        next = model
            .block_on(model.step(&mut scratch, &mut [&mut state], &[next]))
            .unwrap_or_else(|e| panic!("{name}: a decode step: {e}"))[0];
    }
    println!(
        "{name}: {} prompt tokens, {:.2} GB of weights (one layer per tower) within WebGPU's \
         default limits",
        ids.len(),
        model.weight_memory() as f64 / 1e9
    );
}

/// The test would prove nothing if the noop device did not check bindings: a 129 MiB one must
/// be refused, as a browser refuses it.
#[test]
fn the_noop_device_enforces_the_limits() {
    let gpu = default_limits_gpu();
    let device = gpu.device();
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 256 << 20,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: None,
        entries: &[wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: true },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }],
    });
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let _refused = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &layout,
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &buffer,
                offset: 0,
                size: wgpu::BufferSize::new(129 << 20),
            }),
        }],
    });
    let error = pollster::block_on(scope.pop());
    assert!(error.is_some(), "a 129 MiB storage binding was accepted");
}

/// A matrix over one binding that the library does not split (an f32 MLP matrix of the 10B
/// model, 14336 x 3584 x 4 bytes: f32 is for checking against references, not for browsers) is
/// refused by name before wgpu sees it.
#[test]
fn what_does_not_fit_is_named() {
    let mut cfg = PaliGemmaConfig::paligemma2_10b(224);
    cfg.text.num_hidden_layers = 1;
    cfg.text.sliding_layers.truncate(1);
    cfg.vision.num_hidden_layers = 1;
    let e = PaliGemma::random(
        default_limits_gpu(),
        cfg,
        1,
        WeightFormat::F32,
        Some(paligemma::Precision::F32),
    )
    .err()
    .expect("an f32 10B model under the default limits");
    assert!(e.to_string().contains("largest storage binding"), "{e}");
}

#[test]
fn paligemma_3b_fits_the_default_limits() {
    for res in [224, 896] {
        runs_within_default_limits(
            &format!("paligemma-3b-{res}"),
            PaliGemmaConfig::paligemma_3b(res),
        );
    }
}

#[test]
fn paligemma2_10b_fits_the_default_limits() {
    runs_within_default_limits("paligemma2-10b-896", PaliGemmaConfig::paligemma2_10b(896));
}
