//! The JS API (feature `web`, target `wasm32-unknown-unknown`): the same model, shaders and
//! forward pass as native, driven from a web page or Node through wasm-bindgen.
//!
//! ```js
//! import init, { Model } from "./pkg/paligemma.js";
//! await init();
//! const model = await Model.load(origin, configText, tokenizerBytes, [shard], ["model.safetensors"],
//!                                null, (done, total) => bar.value = done / total);
//! // shard: the file's bytes (a Uint8Array), or { header, size, read } read tensor by tensor
//! const out = await model.generate(imageFileBytes, "detect cat", 32, (id, piece) => { text += piece; },
//!                                  { temperature: 0.7, topP: 0.9, seed: 1 }); // sampling: optional
//! // out = { promptIds, generatedIds, text, detections: [{label, x_min, ...}], timings }
//! ```
//!
//! `web/paligemma.js` fetches a model folder by URL and calls [`Model::load`] with each shard
//! as a [`RemoteShard`]: its header, and a function that reads bytes by HTTP range requests or
//! from the page's cache. Each tensor is copied into wasm memory as it arrives and dropped once
//! uploaded, so JS and wasm memory peak near the largest tensor. Every wait is awaited (the
//! browser's event loop delivers the GPU's answers and the network's bytes): the page repaints
//! while weights load and between tokens.

use std::path::PathBuf;

use js_sys::{Function, Uint8Array};
use wasm_bindgen::prelude::*;

mod remote;

pub use remote::RemoteShard;

use crate::segmentation::{SegDecoder, SegWeights};
use crate::{
    GenerateOptions, Gpu, GpuOptions, LoadOptions, LoadProgress, ModelFiles, PaliGemma, Precision,
    ShardBytes, detection,
};

/// A JS callback the library may hold in its `Send + Sync` callback types. Sound because a
/// wasm32 build without the `atomics` target feature has one thread: nothing can reach it from
/// another.
struct JsCallback(Function);
// SAFETY: see above; the module does not build with `atomics` (checked below).
unsafe impl Send for JsCallback {}
// SAFETY: as for `Send`.
unsafe impl Sync for JsCallback {}
#[cfg(target_feature = "atomics")]
compile_error!("the web API assumes single-threaded wasm (no `atomics` target feature)");

/// A loaded PaliGemma in a web page (or Node).
#[wasm_bindgen]
pub struct Model {
    model: PaliGemma,
    /// big_vision's mask decoder, once the page gave one: `segment` answers then get masks.
    seg: Option<SegDecoder>,
}

fn js_error(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}

/// The number `o[key]`, `None` when absent; an error naming the key when it is not a finite,
/// non-negative number.
fn number(o: &js_sys::Object, key: &str) -> Result<Option<f64>, JsError> {
    let v = js_sys::Reflect::get(o, &key.into()).unwrap_or(JsValue::UNDEFINED);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    match v.as_f64() {
        Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
        _ => Err(JsError::new(&format!(
            "sampling.{key} must be a non-negative number"
        ))),
    }
}

#[wasm_bindgen]
impl Model {
    /// Creates a WebGPU device and loads a model from its files: `config` (config.json's
    /// text), `tokenizer` (tokenizer.json's bytes), the safetensors `shards` with their
    /// `names` (each shard a file's bytes, a `Uint8Array`, or a remote file
    /// `{header, size, read}`, see [`RemoteShard`]), and an optional `precision` ("f32", "f16", "q8", "q4"; by default 16-bit, or
    /// what a quantized checkpoint holds). `on_progress(done, total)` is called with bytes of
    /// tensors uploaded. `options` (optional): `{defaultLimits: true}` requests WebGPU's
    /// default limits rather than the adapter's (what every browser grants; the tests use it). `origin` (the folder's URL) names the files in errors.
    pub async fn load(
        origin: String,
        config: String,
        tokenizer: Vec<u8>,
        shards: Vec<JsValue>,
        names: Vec<String>,
        precision: Option<String>,
        on_progress: Option<Function>,
        options: Option<js_sys::Object>,
    ) -> Result<Model, JsError> {
        console_error_panic_hook::set_once();
        if shards.len() != names.len() {
            return Err(JsError::new(&format!(
                "{} shards but {} names",
                shards.len(),
                names.len()
            )));
        }
        let precision = match precision.as_deref() {
            None => None,
            Some("f32") => Some(Precision::F32),
            Some("f16") => Some(Precision::F16),
            Some("q8") => Some(Precision::Q8),
            Some("q4") => Some(Precision::Q4),
            Some(other) => {
                return Err(JsError::new(&format!(
                    "precision {other:?}: expected \"f32\", \"f16\", \"q8\" or \"q4\""
                )));
            }
        };
        let progress = on_progress.map(|f| {
            let f = JsCallback(f);
            LoadProgress(std::sync::Arc::new(move |done, total| {
                let _ = f.0.call2(&JsValue::NULL, &done.into(), &total.into());
            }))
        });
        let mut files = ModelFiles {
            config,
            tokenizer,
            shards: Vec::with_capacity(shards.len()),
        };
        for (name, shard) in names.into_iter().zip(shards) {
            let bytes = match shard.dyn_into::<Uint8Array>() {
                Ok(bytes) => ShardBytes::Js(bytes),
                Err(o) => ShardBytes::Remote(
                    RemoteShard::from_js(&o).map_err(|e| JsError::new(&format!("{name}: {e}")))?,
                ),
            };
            files.shards.push((PathBuf::from(name), bytes));
        }
        let opts = LoadOptions {
            precision,
            progress,
            ..Default::default()
        };
        let flag = |key: &str| {
            options
                .as_ref()
                .is_some_and(|o| js_sys::Reflect::get(o, &key.into()).is_ok_and(|v| v.is_truthy()))
        };
        let gpu_options = GpuOptions {
            default_limits: flag("defaultLimits"),
            ..Default::default()
        };
        let gpu = Gpu::new_async(&gpu_options).await.map_err(js_error)?;
        let model = PaliGemma::load_files_async(gpu, files, &origin, &opts)
            .await
            .map_err(js_error)?;
        // The uploads were submitted as they went; wait for the last so the first image's
        // timings do not include them.
        model.gpu().wait_async().await.map_err(js_error)?;
        Ok(Model { model, seg: None })
    }

    /// The adapter's name as the runtime reports it: Dawn in Node names it ("SwiftShader
    /// driver 5.0.0"); browsers usually keep it empty (the page can show `adapter.info`'s
    /// vendor and architecture instead).
    pub fn adapter(&self) -> String {
        let info = self.model.gpu().info();
        info.map(|i| i.name.clone()).unwrap_or_default()
    }

    /// The device's limits that decide how the model is split across buffers and bindings:
    /// `{maxBufferSize, maxStorageBufferBindingSize, maxComputeWorkgroupStorageSize,
    /// maxStorageBuffersPerShaderStage}`.
    pub fn limits(&self) -> Result<JsValue, JsError> {
        let l = self.model.gpu().limits();
        let out = serde_json::json!({
            "maxBufferSize": l.max_buffer_size,
            "maxStorageBufferBindingSize": l.max_storage_buffer_binding_size,
            "maxComputeWorkgroupStorageSize": l.max_compute_workgroup_storage_size,
            "maxStorageBuffersPerShaderStage": l.max_storage_buffers_per_shader_stage,
        });
        js_sys::JSON::parse(&out.to_string()).map_err(|_| JsError::new("serialising the limits"))
    }

    /// Why the GPU device was lost (a driver reset, the browser reclaiming it, ...), or
    /// `undefined` while it works. Once lost, every call rejects with this reason; the page has
    /// to load the model again.
    #[wasm_bindgen(js_name = deviceLost)]
    pub fn device_lost(&self) -> Option<String> {
        self.model.gpu().check_lost().err().map(|e| e.to_string())
    }

    /// Destroys the GPU device, as a driver reset would: how the tests check that a lost
    /// device is reported and rejects calls (browsers offer no other way to lose one).
    #[wasm_bindgen(js_name = loseDevice)]
    pub fn lose_device(&self) {
        self.model.gpu().device().destroy();
    }

    /// Whether the adapter is a CPU fallback (SwiftShader, lavapipe).
    #[wasm_bindgen(js_name = isFallback)]
    pub fn is_fallback(&self) -> bool {
        let info = self.model.gpu().info();
        info.is_some_and(|i| i.device_type == wgpu::DeviceType::Cpu)
    }

    /// Whether the device has `shader-f16` (informational: the kernels need no feature).
    #[wasm_bindgen(js_name = hasShaderF16)]
    pub fn has_shader_f16(&self) -> bool {
        self.model
            .gpu()
            .features()
            .contains(wgpu::Features::SHADER_F16)
    }

    /// Bytes of GPU memory the weights hold.
    #[wasm_bindgen(js_name = weightBytes)]
    pub fn weight_bytes(&self) -> f64 {
        self.model.weight_memory() as f64
    }

    /// Answers `prompt` about `image` (a PNG, JPEG, GIF, BMP or WebP file's bytes), up to
    /// `max_new_tokens` tokens. `on_token(id, piece)` is called as each token is chosen
    /// (return `false` to stop). `sampling` (optional) is `{temperature, topP, topK, seed}`,
    /// greedy when absent or when `temperature` is 0. Resolves to `{promptIds, generatedIds,
    /// text, detections, timings}`; `detections` (boxes in the image's pixels) is filled for
    /// `detect` and `segment` prompts.
    pub async fn generate(
        &self,
        image: Vec<u8>,
        prompt: String,
        max_new_tokens: u32,
        on_token: Option<Function>,
        sampling: Option<js_sys::Object>,
    ) -> Result<JsValue, JsError> {
        let image = image::load_from_memory(&image)
            .map_err(|e| JsError::new(&format!("the image: {e}")))?;
        let mut opts = GenerateOptions {
            max_new_tokens: max_new_tokens as usize,
            ..Default::default()
        };
        if let Some(o) = &sampling {
            let s = &mut opts.sampling;
            s.temperature = number(o, "temperature")?.map_or(s.temperature, |v| v as f32);
            s.top_p = number(o, "topP")?.map_or(s.top_p, |v| v as f32);
            s.top_k = number(o, "topK")?.map_or(s.top_k, |v| v as usize);
            s.seed = number(o, "seed")?.map_or(s.seed, |v| v as u64);
        }
        if let Err(e) = opts.sampling.check() {
            let option = if e.option == "top_p" {
                "topP"
            } else {
                e.option
            };
            return Err(JsError::new(&format!("sampling.{option} {}", e.message)));
        }
        let callback = |id: u32, piece: &str| match &on_token {
            None => true,
            Some(f) => f
                .call2(&JsValue::NULL, &id.into(), &piece.into())
                .map(|v| v.as_bool() != Some(false))
                .unwrap_or(false),
        };
        let g = self
            .model
            .generate(&image, prompt.as_str(), &opts, callback)
            .await
            .map_err(js_error)?;
        let detections = if detection::answers_with_boxes(&prompt) {
            detection::parse_answer(&g.text, image.width(), image.height()).detections
        } else {
            Vec::new()
        };
        let out = serde_json::json!({
            "promptIds": g.prompt_ids,
            "generatedIds": g.generated_ids,
            "text": g.text,
            "detections": detections,
            "timings": g.timings,
        });
        js_sys::JSON::parse(&out.to_string()).map_err(|_| JsError::new("serialising the answer"))
    }

    /// Uploads big_vision's mask decoder (`vae-oid.npz`'s bytes; `name` names it in errors),
    /// as the command line's `--seg-decoder`: [`draw_answer`](Self::draw_answer) then gives
    /// `segment` answers their masks.
    #[wasm_bindgen(js_name = setSegDecoder)]
    pub fn set_seg_decoder(&mut self, npz: Vec<u8>, name: String) -> Result<(), JsError> {
        let weights = SegWeights::from_bytes(npz, name.as_ref()).map_err(js_error)?;
        self.seg = Some(SegDecoder::upload(self.model.gpu(), &weights).map_err(js_error)?);
        Ok(())
    }

    /// The picture the command line's `--draw` writes for answer `text` about `image` (a
    /// file's bytes): boxes, labels and, with a mask decoder, masks, as a PNG file's bytes.
    /// Resolves to `{png, objects}`, `objects` as the command line's `--json` gives them (each
    /// mask as its box and run lengths).
    #[wasm_bindgen(js_name = drawAnswer)]
    pub async fn draw_answer(&self, image: Vec<u8>, text: String) -> Result<JsValue, JsError> {
        let image = image::load_from_memory(&image)
            .map_err(|e| JsError::new(&format!("the image: {e}")))?;
        let answer = detection::parse_answer(&text, image.width(), image.height());
        let masks = crate::segmentation::masks_async(&answer.detections, self.seg.as_ref())
            .await
            .map_err(js_error)?;
        let mut picture = image.to_rgb8();
        crate::draw::draw(&mut picture, &answer.detections, &masks);
        let mut png = Vec::new();
        picture
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| JsError::new(&format!("encoding the drawing: {e}")))?;
        let objects = crate::segmentation::objects_json(&answer.detections, &masks);
        let out = js_sys::Object::new();
        let set = |k: &str, v: &JsValue| js_sys::Reflect::set(&out, &k.into(), v);
        set("png", &Uint8Array::from(&png[..]).into())
            .and_then(|_| set("objects", &js_sys::JSON::parse(&objects.to_string())?))
            .map_err(|_| JsError::new("building the drawing's result"))?;
        Ok(out.into())
    }
}
