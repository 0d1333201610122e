//! A renderer and PaliGemma on one device: a scene is drawn offscreen with an ordinary wgpu
//! render pipeline, and the model answers about the rendered texture without the frame ever
//! visiting the CPU (`PaliGemma::generate` of a texture). The engine owns the device; the library
//! borrows it.
//!
//!   cargo run --example engine -- [MODEL_DIR] [PROMPT] [--check] [--save frame.png]
//!
//! `--check` (CI) also reads the frame back, answers it through the CPU preprocessor, and
//! fails unless both answers are the same tokens.

use anyhow::{Context, bail};
use paligemma::{GenerateOptions, Gpu, PaliGemma};

const SIZE: (u32, u32) = (320, 240);
const FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8UnormSrgb;

/// A sky, a ground and two "objects": coloured triangles from the vertex index alone.
const SCENE: &str = r#"
struct Out { @builtin(position) pos: vec4<f32>, @location(0) color: vec3<f32> }

const QUADS = array<vec4<f32>, 4>(   // x0, y0, x1, y1 in clip space
    vec4<f32>(-1.0, -0.1, 1.0, 1.0),    // sky
    vec4<f32>(-1.0, -1.0, 1.0, -0.1),   // ground
    vec4<f32>(-0.7, -0.6, -0.2, 0.1),   // a red box
    vec4<f32>(0.2, -0.5, 0.6, -0.1),    // a blue box
);
const COLORS = array<vec3<f32>, 4>(
    vec3<f32>(0.45, 0.65, 0.95), vec3<f32>(0.25, 0.55, 0.2),
    vec3<f32>(0.85, 0.15, 0.1), vec3<f32>(0.15, 0.2, 0.8),
);
const CORNERS = array<vec2<f32>, 6>(
    vec2<f32>(0.0, 0.0), vec2<f32>(1.0, 0.0), vec2<f32>(0.0, 1.0),
    vec2<f32>(0.0, 1.0), vec2<f32>(1.0, 0.0), vec2<f32>(1.0, 1.0),
);

@vertex
fn vs(@builtin(vertex_index) i: u32) -> Out {
    let q = QUADS[i / 6u];
    let c = CORNERS[i % 6u];
    var o: Out;
    o.pos = vec4<f32>(mix(q.xy, q.zw, c), 0.0, 1.0);
    // A vertical shade, so the picture is not flat colour.
    o.color = COLORS[i / 6u] * (0.75 + 0.25 * c.y);
    return o;
}

@fragment
fn fs(v: Out) -> @location(0) vec4<f32> {
    return vec4<f32>(v.color, 1.0);
}
"#;

/// Renders the scene into a new texture the model can read (`COPY_SRC`).
fn render(device: &wgpu::Device, queue: &wgpu::Queue) -> wgpu::Texture {
    let texture = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("frame"),
        size: wgpu::Extent3d {
            width: SIZE.0,
            height: SIZE.1,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: FORMAT,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("scene"),
        source: wgpu::ShaderSource::Wgsl(SCENE.into()),
    });
    let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
        label: Some("scene"),
        layout: None,
        vertex: wgpu::VertexState {
            module: &module,
            entry_point: Some("vs"),
            compilation_options: Default::default(),
            buffers: &[],
        },
        fragment: Some(wgpu::FragmentState {
            module: &module,
            entry_point: Some("fs"),
            compilation_options: Default::default(),
            targets: &[Some(FORMAT.into())],
        }),
        primitive: Default::default(),
        depth_stencil: None,
        multisample: Default::default(),
        multiview_mask: None,
        cache: None,
    });
    let view = texture.create_view(&Default::default());
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("scene"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: &view,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                    store: wgpu::StoreOp::Store,
                },
            })],
            ..Default::default()
        });
        pass.set_pipeline(&pipeline);
        pass.draw(0..24, 0..1);
    }
    queue.submit([enc.finish()]);
    texture
}

/// The frame's bytes, read back (only for `--check` and `--save`).
fn read_back(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    texture: &wgpu::Texture,
) -> image::RgbaImage {
    let (w, h) = SIZE;
    let row = (4 * w).next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT);
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("frame read-back"),
        size: (row * h) as u64,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    enc.copy_texture_to_buffer(
        texture.as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: &buffer,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(row),
                rows_per_image: Some(h),
            },
        },
        texture.size(),
    );
    queue.submit([enc.finish()]);
    buffer
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.expect("mapping the frame"));
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("waiting for the frame");
    let data = buffer
        .slice(..)
        .get_mapped_range()
        .expect("the mapped frame");
    let bytes: Vec<u8> = data
        .chunks(row as usize)
        .flat_map(|r| r[..(4 * w) as usize].to_vec())
        .collect();
    image::RgbaImage::from_raw(w, h, bytes).expect("w x h pixels")
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.iter().any(|a| a == "--check");
    let save = args
        .iter()
        .position(|a| a == "--save")
        .map(|i| args.get(i + 1).cloned().context("--save needs a path"))
        .transpose()?;
    let positional: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--save"))
        .map(|(_, a)| a)
        .collect();
    let model_dir = positional
        .first()
        .map_or("tests/fixtures/mqa/model", |s| s.as_str());
    let prompt = positional.get(1).map_or("detect box", |s| s.as_str());

    // The engine's device, made the usual way.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .context("no GPU adapter")?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("engine"),
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;

    let frame = render(&device, &queue);
    // The library borrows the device and queue; its work is queued after the render.
    let gpu = Gpu::from_device(device.clone(), queue.clone(), Some(adapter.get_info()));
    let model = PaliGemma::load_on(
        gpu,
        model_dir.as_ref(),
        &paligemma::LoadOptions::in_precision(None),
    )?;
    let opts = GenerateOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    let out = model.block_on(model.generate(&frame, prompt, &opts, |_, _| true))?;
    println!(
        "{prompt:?} about the rendered frame ({}x{}, {:?}) on {}: {:?}",
        SIZE.0,
        SIZE.1,
        FORMAT,
        model.gpu().adapter_name(),
        out.text
    );
    println!("ids {:?}", out.generated_ids);
    for d in paligemma::detection::parse_answer(&out.text, SIZE.0, SIZE.1).detections {
        println!(
            "  {:?}: ({:.0}, {:.0}) - ({:.0}, {:.0})",
            d.label, d.x_min, d.y_min, d.x_max, d.y_max
        );
    }
    if check || save.is_some() {
        let pixels = read_back(&device, &queue, &frame);
        if let Some(path) = &save {
            pixels
                .save(path)
                .with_context(|| format!("writing {path}"))?;
        }
        if check {
            let image = image::DynamicImage::ImageRgba8(pixels);
            let cpu = model.block_on(model.generate(&image, prompt, &opts, |_, _| true))?;
            if cpu.generated_ids != out.generated_ids {
                bail!(
                    "the texture path chose {:?}, the CPU path {:?}",
                    out.generated_ids,
                    cpu.generated_ids
                );
            }
            println!(
                "check: the texture path and the CPU path chose the same {} tokens",
                cpu.generated_ids.len()
            );
        }
    }
    Ok(())
}
