//! PaliGemma's segmentation masks. `segment cat` answers, per object, with four `<loc>` tokens
//! (the box) and 16 `<segNNN>` codes; big_vision's VQ-VAE decoder (`vae-oid.npz`) turns the
//! codes into a 64 x 64 mask that is resized into the box and thresholded at 0. Everything
//! here follows big_vision's evaluator
//! (`big_vision/evaluators/proj/paligemma/transfers/segmentation.py`):
//!
//! ```text
//! codes [16] -> codebook rows -> [4, 4, D]        (code k at row k / 4, column k % 4)
//!   conv 1x1 D -> 128, ReLU
//!   2 x ResBlock: x + conv1x1(relu(conv3x3(relu(conv3x3(x)))))
//!   4 x (ConvTranspose 4x4 stride 2 padding 1, ReLU): 128 -> 128 -> 64 -> 32 -> 16, 4 -> 64 px
//!   conv 1x1 16 -> 1                              (> 0: inside)
//! ```
//!
//! On the GPU each layer is a `shaders/conv.wgsl` dispatch (the codebook lookup is the
//! embedding `gather`); [`decode_ref`] is the same decoder on the CPU from the kernels'
//! references.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::detection::Detection;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops::conv::{Conv, Then, conv_transpose2d_ref, conv2d_ref};
use crate::ops::gather::gather;
use crate::ops::{ChunkedTable, HostWeight, View, WeightFormat};

/// Codes in the codebook (`<seg000>` .. `<seg127>`), codes per mask, and the mask's side.
pub const CODEBOOK: usize = 128;
pub const CODES: usize = 16;
pub const MASK_SIZE: usize = 64;

/// One convolution of the decoder: its `vae-oid.npz` name, channels, kernel, and whether it is
/// transposed.
struct Layer {
    name: &'static str,
    c_in: usize,
    c_out: usize,
    k: usize,
    transposed: bool,
}

const fn layer(name: &'static str, c_in: usize, c_out: usize, k: usize, transposed: bool) -> Layer {
    Layer {
        name,
        c_in,
        c_out,
        k,
        transposed,
    }
}

/// The decoder after the input convolution (whose input width is the codebook's), in order.
const RES: [[Layer; 3]; 2] = [
    [
        layer("decoder.2.net.0", 128, 128, 3, false),
        layer("decoder.2.net.2", 128, 128, 3, false),
        layer("decoder.2.net.4", 128, 128, 1, false),
    ],
    [
        layer("decoder.3.net.0", 128, 128, 3, false),
        layer("decoder.3.net.2", 128, 128, 3, false),
        layer("decoder.3.net.4", 128, 128, 1, false),
    ],
];
const UP: [Layer; 4] = [
    layer("decoder.4", 128, 128, 4, true),
    layer("decoder.6", 128, 64, 4, true),
    layer("decoder.8", 64, 32, 4, true),
    layer("decoder.10", 32, 16, 4, true),
];
const OUTPUT: Layer = layer("decoder.12", 16, 1, 1, false);
const EMBEDDING: &str = "_vq_vae._embedding";

/// The decoder's weights on the host, by their `vae-oid.npz` names (f32).
pub struct SegWeights {
    path: PathBuf,
    arrays: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl SegWeights {
    /// Reads a `vae-oid.npz` (big_vision's PyTorch state dict of the VQ-VAE).
    pub fn open(path: &Path) -> Result<SegWeights> {
        let npz = npyz::npz::NpzArchive::open(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Self::read(npz, path)
    }

    /// The same from the file's bytes (a web page's download), named `name` in errors.
    pub fn from_bytes(bytes: Vec<u8>, name: &Path) -> Result<SegWeights> {
        let npz = npyz::npz::NpzArchive::new(std::io::Cursor::new(bytes)).map_err(|source| {
            Error::Io {
                path: name.into(),
                source,
            }
        })?;
        Self::read(npz, name)
    }

    fn read<R: std::io::Read + std::io::Seek>(
        mut npz: npyz::npz::NpzArchive<R>,
        path: &Path,
    ) -> Result<SegWeights> {
        let err = |message: String| Error::Safetensors {
            path: path.into(),
            message,
        };
        let names: Vec<String> = npz.array_names().map(str::to_string).collect();
        let mut arrays = HashMap::new();
        for name in names {
            if !(name == EMBEDDING || name.starts_with("decoder.")) {
                continue; // the encoder is not needed to decode
            }
            let array = npz
                .by_name(&name)
                .map_err(|e| err(format!("{name}: {e}")))?
                .ok_or_else(|| err(format!("{name}: listed but absent")))?;
            let shape: Vec<usize> = array.shape().iter().map(|&d| d as usize).collect();
            let values: Vec<f32> = array
                .into_vec()
                .map_err(|e| err(format!("{name}: {e} (f32 arrays expected)")))?;
            arrays.insert(name, (shape, values));
        }
        Ok(SegWeights {
            path: path.into(),
            arrays,
        })
    }

    /// Array `name`, checked to have `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<&[f32]> {
        let (have, values) = self.arrays.get(name).ok_or_else(|| Error::Tensor {
            name: name.into(),
            message: format!("missing from {}", self.path.display()),
        })?;
        if have != shape {
            return Err(Error::Tensor {
                name: name.into(),
                message: format!(
                    "shape {have:?} in {}, expected {shape:?}",
                    self.path.display()
                ),
            });
        }
        Ok(values)
    }

    /// The codebook's width D (512 in the published file).
    pub fn embed_dim(&self) -> Result<usize> {
        match self.arrays.get(EMBEDDING) {
            Some((shape, _)) if shape.len() == 2 && shape[0] == CODEBOOK => Ok(shape[1]),
            _ => Err(Error::Tensor {
                name: EMBEDDING.into(),
                message: format!(
                    "missing from {} or not [{CODEBOOK}, D]",
                    self.path.display()
                ),
            }),
        }
    }

    /// A layer's weight (in PyTorch's layout) and bias.
    fn conv(&self, l: &Layer) -> Result<(&[f32], &[f32])> {
        let shape = if l.transposed {
            [l.c_in, l.c_out, l.k, l.k]
        } else {
            [l.c_out, l.c_in, l.k, l.k]
        };
        Ok((
            self.get(&format!("{}.weight", l.name), &shape)?,
            self.get(&format!("{}.bias", l.name), &[l.c_out])?,
        ))
    }
}

fn check_codes(codes: &[u32; CODES]) -> Result<()> {
    match codes.iter().find(|&&c| c as usize >= CODEBOOK) {
        Some(c) => Err(Error::invalid(format!(
            "segmentation code {c} is outside the codebook of {CODEBOOK}"
        ))),
        None => Ok(()),
    }
}

/// The VQ-VAE decoder on the GPU.
pub struct SegDecoder {
    gpu: Gpu,
    codebook: ChunkedTable,
    input: Conv,
    res: Vec<[Conv; 3]>,
    up: Vec<Conv>,
    output: Conv,
}

impl std::fmt::Debug for SegDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegDecoder")
            .field("residual_blocks", &self.res.len())
            .field("upsamplings", &self.up.len())
            .finish_non_exhaustive()
    }
}

impl SegDecoder {
    /// Loads `vae-oid.npz` onto `gpu`.
    pub fn load(gpu: &Gpu, path: &Path) -> Result<SegDecoder> {
        Self::upload(gpu, &SegWeights::open(path)?)
    }

    /// Uploads weights already read.
    pub fn upload(gpu: &Gpu, w: &SegWeights) -> Result<SegDecoder> {
        let d = w.embed_dim()?;
        let conv = |l: &Layer| -> Result<Conv> {
            let (weight, bias) = w.conv(l)?;
            Ok(Conv {
                weight: gpu.upload_f32(l.name, weight)?,
                bias: gpu.upload_f32(l.name, bias)?,
                c_in: l.c_in,
                c_out: l.c_out,
                k: l.k,
            })
        };
        let table = w.get(EMBEDDING, &[CODEBOOK, d])?;
        let host = HostWeight::encode(table, WeightFormat::F32, CODEBOOK, d);
        Ok(SegDecoder {
            gpu: gpu.clone(),
            codebook: ChunkedTable::upload(gpu, EMBEDDING, &host, CODEBOOK)?,
            input: conv(&layer("decoder.0", d, 128, 1, false))?,
            res: RES
                .iter()
                .map(|b| Ok([conv(&b[0])?, conv(&b[1])?, conv(&b[2])?]))
                .collect::<Result<_>>()?,
            up: UP.iter().map(conv).collect::<Result<_>>()?,
            output: conv(&OUTPUT)?,
        })
    }

    /// The 64 x 64 mask (row-major, > 0 inside) of 16 codes.
    pub fn decode(&self, codes: &[u32; CODES]) -> Result<Vec<f32>> {
        self.gpu.block_on("decode", self.decode_async(codes))
    }

    /// [`decode`](Self::decode), awaitable (how a web page reads the mask back).
    pub async fn decode_async(&self, codes: &[u32; CODES]) -> Result<Vec<f32>> {
        check_codes(codes)?;
        let gpu = &self.gpu;
        let d = self.codebook.cols;
        let f = |label: &str, n: usize| gpu.storage(label, n as u64 * 4);
        let ids = gpu.storage_init("seg codes", bytemuck::cast_slice(codes))?;
        let (x0, a, t1, t2) = (
            f("seg x", 16 * d)?,
            f("seg a", 16 * 128)?,
            f("seg t1", 16 * 128)?,
            f("seg t2", 16 * 128)?,
        );
        let mut rec = gpu.recorder();
        gather(&mut rec, &ids, &self.codebook, 1.0, View::new(&x0, 16, d))?;
        let g = (4, 4);
        self.input.forward(
            &mut rec,
            View::new(&x0, 16, d),
            g,
            View::new(&a, 16, 128),
            Then::Relu,
        )?;
        for [c1, c2, c3] in &self.res {
            c1.forward(
                &mut rec,
                View::new(&a, 16, 128),
                g,
                View::new(&t1, 16, 128),
                Then::Relu,
            )?;
            c2.forward(
                &mut rec,
                View::new(&t1, 16, 128),
                g,
                View::new(&t2, 16, 128),
                Then::Relu,
            )?;
            c3.forward(
                &mut rec,
                View::new(&t2, 16, 128),
                g,
                View::new(&a, 16, 128),
                Then::Add,
            )?;
        }
        let mut x = a;
        let mut side = 4;
        for up in &self.up {
            let y = f("seg up", 4 * side * side * up.c_out)?;
            let xv = View::new(&x, side * side, up.c_in);
            up.forward_transposed(
                &mut rec,
                xv,
                (side, side),
                View::new(&y, 4 * side * side, up.c_out),
                Then::Relu,
            )?;
            (x, side) = (y, 2 * side);
        }
        let out = f("seg mask", side * side)?;
        let xv = View::new(&x, side * side, 16);
        self.output.forward(
            &mut rec,
            xv,
            (side, side),
            View::new(&out, side * side, 1),
            Then::Nothing,
        )?;
        rec.submit("the segmentation decoder")?;
        gpu.read_f32_async(&out, 0, MASK_SIZE * MASK_SIZE).await
    }
}

/// The decoder on the CPU from the kernels' references (f64 accumulation): the oracle of
/// [`SegDecoder::decode`].
pub fn decode_ref(w: &SegWeights, codes: &[u32; CODES]) -> Result<Vec<f32>> {
    check_codes(codes)?;
    let d = w.embed_dim()?;
    let table = w.get(EMBEDDING, &[CODEBOOK, d])?;
    let x0: Vec<f32> = codes
        .iter()
        .flat_map(|&c| table[c as usize * d..][..d].to_vec())
        .collect();
    let conv = |l: &Layer, x: &[f32], side: usize, y: &mut Vec<f32>, then: Then| -> Result<()> {
        let (wt, b) = w.conv(l)?;
        if l.transposed {
            y.resize(4 * side * side * l.c_out, 0.0);
            conv_transpose2d_ref(x, (side, side), wt, b, (l.c_in, l.c_out), y, then);
        } else {
            y.resize(side * side * l.c_out, 0.0);
            conv2d_ref(x, (side, side), wt, b, (l.c_in, l.c_out, l.k), y, then);
        }
        Ok(())
    };
    let mut a = Vec::new();
    conv(
        &layer("decoder.0", d, 128, 1, false),
        &x0,
        4,
        &mut a,
        Then::Relu,
    )?;
    for [c1, c2, c3] in &RES {
        let (mut t1, mut t2) = (Vec::new(), Vec::new());
        conv(c1, &a, 4, &mut t1, Then::Relu)?;
        conv(c2, &t1, 4, &mut t2, Then::Relu)?;
        conv(c3, &t2, 4, &mut a, Then::Add)?;
    }
    let mut side = 4;
    for l in &UP {
        let mut y = Vec::new();
        conv(l, &a, side, &mut y, Then::Relu)?;
        (a, side) = (y, 2 * side);
    }
    let mut out = Vec::new();
    conv(&OUTPUT, &a, side, &mut out, Then::Nothing)?;
    Ok(out)
}

/// The mask of each detection that has `<seg>` codes (`None` for the others, and for all
/// without a decoder), decoded by `decoder` and fitted into its box: what the command line,
/// `batch`, `serve` and the Python package attach to a `segment` answer's objects.
pub fn masks(detections: &[Detection], decoder: Option<&SegDecoder>) -> Result<Vec<Option<Mask>>> {
    detections
        .iter()
        .map(|d| match (d.codes, decoder) {
            (Some(codes), Some(decoder)) => Ok(Mask::in_box(&decoder.decode(&codes)?, d.bounds())),
            _ => Ok(None),
        })
        .collect()
}

/// [`masks`], awaitable.
pub async fn masks_async(
    detections: &[Detection],
    decoder: Option<&SegDecoder>,
) -> Result<Vec<Option<Mask>>> {
    let mut masks = Vec::with_capacity(detections.len());
    for d in detections {
        masks.push(match (d.codes, decoder) {
            (Some(codes), Some(decoder)) => {
                Mask::in_box(&decoder.decode_async(&codes).await?, d.bounds())
            }
            _ => None,
        });
    }
    Ok(masks)
}

/// Objects as JSON, one shape for every front end (the command line's `--json`, the Python
/// package): label, box in pixels, and the mask (or `null`) as the box it fills plus run lengths
/// over it ([`Mask::rle`]: row-major, alternating outside and inside, outside first).
pub fn objects_json(detections: &[Detection], masks: &[Option<Mask>]) -> serde_json::Value {
    let objects = detections.iter().zip(masks).map(|(d, m)| {
        serde_json::json!({
            "label": d.label, "x_min": d.x_min, "y_min": d.y_min, "x_max": d.x_max, "y_max": d.y_max,
            "mask": m.as_ref().map(|m| serde_json::json!({
                "x": m.x, "y": m.y, "width": m.width, "height": m.height, "rle": m.rle(),
            })),
        })
    });
    serde_json::Value::Array(objects.collect())
}

/// A mask in image pixels: the box `[x, x + width) x [y, y + height)` and which of its pixels
/// are inside, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    pub inside: Vec<bool>,
}

impl Mask {
    /// Fits a 64 x 64 decoder output into the box `(y_min, x_min, y_max, x_max)` (image
    /// pixels, as [`crate::detection::Detection`] gives them; truncated to whole pixels, end
    /// exclusive, as big_vision's evaluator does), by Pillow's bilinear resize, then
    /// thresholds at 0. `None` for an empty box.
    pub fn in_box(m64: &[f32], (y_min, x_min, y_max, x_max): (f32, f32, f32, f32)) -> Option<Mask> {
        let (y0, x0, y1, x1) = (y_min as u32, x_min as u32, y_max as u32, x_max as u32);
        if y1 <= y0 || x1 <= x0 || m64.len() != MASK_SIZE * MASK_SIZE {
            return None;
        }
        let (w, h) = ((x1 - x0) as usize, (y1 - y0) as usize);
        let soft = crate::preprocess::resize_bilinear_f32(m64, (MASK_SIZE, MASK_SIZE), (w, h));
        Some(Mask {
            x: x0,
            y: y0,
            width: w as u32,
            height: h as u32,
            inside: soft.iter().map(|&v| v > 0.0).collect(),
        })
    }

    /// Run lengths over the box, row-major, alternating outside and inside and starting with
    /// outside (so the first run may be 0): compact for JSON.
    pub fn rle(&self) -> Vec<u32> {
        let mut runs = vec![0u32];
        let mut current = false;
        for &v in &self.inside {
            if v != current {
                runs.push(0);
                current = v;
            }
            *runs.last_mut().expect("never empty") += 1;
        }
        runs
    }

    /// Pixels inside.
    pub fn area(&self) -> usize {
        self.inside.iter().filter(|&&v| v).count()
    }
}
