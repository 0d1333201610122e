//! PaliGemma inside a program that already owns a `wgpu::Device` (a game or graphics engine):
//! the library borrows the device and queue, streams tokens through a callback, and reports
//! detected boxes in image pixels.
//!
//!   cargo run --example embed -- tests/fixtures/mqa/model tests/fixtures/mqa/photo.jpg "detect cat"

use anyhow::Context;
use paligemma::detection::parse_detections;
use paligemma::{GenerateOptions, Gpu, PaliGemma};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(model_dir), Some(image_path), Some(prompt)) = (args.next(), args.next(), args.next())
    else {
        anyhow::bail!("usage: embed MODEL_DIR IMAGE PROMPT");
    };

    // The engine's own device, created the usual wgpu way.
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

    // The library uses it as it is; the engine keeps its handles (they are reference-counted).
    let gpu = Gpu::from_device(device.clone(), queue.clone(), Some(adapter.get_info()));
    let model = PaliGemma::load_on(
        gpu,
        model_dir.as_ref(),
        &paligemma::LoadOptions::in_precision(None),
    )?;
    let image = paligemma::preprocess::load_image(image_path.as_ref())?;

    let opts = GenerateOptions {
        max_new_tokens: 16,
        ..Default::default()
    };
    let out = model.block_on(model.generate(&image, &prompt, &opts, |_, piece| {
        print!("{piece}");
        true
    }))?;
    println!();
    for d in parse_detections(&out.text, image.width(), image.height()) {
        println!(
            "{}: ({:.0}, {:.0}) - ({:.0}, {:.0})",
            d.label, d.x_min, d.y_min, d.x_max, d.y_max
        );
    }
    println!(
        "{} tokens, first after {:.1} ms, then {:.1} tokens/s on {}",
        out.generated_ids.len(),
        out.timings.time_to_first_token_ms,
        out.timings.decode_tokens_per_s,
        model.gpu().adapter_name()
    );
    Ok(())
}
