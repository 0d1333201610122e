//! `paligemma quantize`: a checkpoint rewritten with its decoder in 8- or 4-bit blocks, so a
//! user downloads and loads the quantized size (1.7 GB instead of 5.9 GB for a 3B model in
//! q4) and loading does no quantization.
//!
//! Every matrix the loader would quantize (see `Precision::format_for`: the decoder's
//! projections and its embedding table, rows of whole blocks) is written as
//! `{name}.q8` (int8 `[rows, cols]`) or `{name}.q4` (uint8 `[rows, cols / 2]`, two codes a
//! byte) with `{name}.q8_scales` / `{name}.q4_scales` (f16 `[rows, cols / 32, 2]`: scale, min),
//! exactly the bytes the GPU buffers hold; every other tensor is copied as stored. The other
//! files of the folder (config, tokenizer) are copied.

use std::path::Path;

use safetensors::Dtype;
use safetensors::tensor::TensorView;

use super::Precision;
use super::checkpoint::Checkpoint;
use super::config::PaliGemmaConfig;
use crate::error::{Error, Result};
use crate::ops::HostWeight;
use crate::ops::weights::BLOCK;

/// A tensor to write.
struct OutTensor<'a> {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: std::borrow::Cow<'a, [u8]>,
}

/// What [`quantize_checkpoint`] wrote.
#[derive(Clone, Debug, Default)]
pub struct QuantizeReport {
    /// Matrices written quantized, and tensors copied as stored.
    pub quantized: usize,
    pub copied: usize,
    /// Tensor bytes read and written.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// An I/O error's mapping, naming `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io { path, source }
}

/// The checkpoint's tensors as they will be written: the decoder's matrices quantized as
/// `format` (codes `{name}.{suffix}` and `{name}.{suffix}_scales`), the rest as stored.
/// Quantized tensors own their bytes; the others borrow the checkpoint's.
fn quantized_tensors<'c>(
    ckpt: &'c Checkpoint,
    format: crate::WeightFormat,
    suffix: &str,
    code_dtype: Dtype,
    report: &mut QuantizeReport,
) -> Result<Vec<OutTensor<'c>>> {
    let mut tensors = Vec::new();
    for t in ckpt.tensors()? {
        report.bytes_in += t.bytes.len() as u64;
        let (name, shape) = (t.name, t.shape);
        let matrix =
            super::quantizable(t.canon) && t.canon.ends_with(".weight") && shape.len() == 2;
        if !(matrix && format.holds(shape[1])) {
            tensors.push(OutTensor {
                name: name.to_string(),
                dtype: t.dtype,
                shape: shape.to_vec(),
                bytes: t.bytes,
            });
            report.copied += 1;
            continue;
        }
        let (rows, cols) = (shape[0], shape[1]);
        let values = ckpt.get(t.canon, shape)?.to_f32()?;
        let host = HostWeight::encode(&values, format, rows, cols);
        let code_cols = format.row_bytes(cols) * 8 / code_dtype.bitsize();
        let codes = format!("{name}.{suffix}");
        tensors.push(OutTensor {
            name: format!("{codes}_scales"),
            dtype: Dtype::F16,
            shape: vec![rows, cols / BLOCK, 2],
            bytes: host.scales,
        });
        tensors.push(OutTensor {
            name: codes,
            dtype: code_dtype,
            shape: vec![rows, code_cols],
            bytes: host.data,
        });
        report.quantized += 1;
    }
    Ok(tensors)
}

/// Writes `tensors` to `file`, the quantization named in the metadata.
fn write_safetensors(
    tensors: &[OutTensor],
    file: &Path,
    suffix: &str,
    report: &mut QuantizeReport,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            report.bytes_out += t.bytes.len() as u64;
            TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| Error::Tensor {
                    name: t.name.clone(),
                    message: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = [
        ("format".to_string(), "pt".to_string()),
        ("quantization".to_string(), suffix.to_string()),
    ];
    let failed = |message: String| Error::Safetensors {
        path: file.to_path_buf(),
        message,
    };
    safetensors::serialize_to_file(views, Some(metadata.into()), file)
        .map_err(|e| failed(e.to_string()))?;
    // safetensors writes through a private temporary file (mode 0600): give the checkpoint the
    // mode of the config and tokenizer copied beside it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| failed(e.to_string()))?;
    }
    Ok(())
}

/// Writes `dir`'s checkpoint to `out` with the decoder quantized at `precision` (Q8 or Q4).
pub fn quantize_checkpoint(dir: &Path, out: &Path, precision: Precision) -> Result<QuantizeReport> {
    let (format, suffix, code_dtype) = match precision {
        Precision::Q8 => (crate::WeightFormat::Q8, "q8", Dtype::I8),
        Precision::Q4 => (crate::WeightFormat::Q4, "q4", Dtype::U8),
        other => {
            return Err(Error::invalid(format!(
                "quantize writes q8 or q4, not {other:?}"
            )));
        }
    };
    // The config is checked now so that a broken folder fails before anything is written.
    PaliGemmaConfig::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open(dir)?;
    if let Some(q) = ckpt.quantized_format() {
        return Err(Error::invalid(format!(
            "{} is already quantized ({q:?})",
            dir.display()
        )));
    }
    if out.exists() && std::fs::canonicalize(out).ok() == std::fs::canonicalize(dir).ok() {
        return Err(Error::invalid("--out must not be the model's own folder"));
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut report = QuantizeReport::default();
    let tensors = quantized_tensors(&ckpt, format, suffix, code_dtype, &mut report)?;
    write_safetensors(
        &tensors,
        &out.join("model.safetensors"),
        suffix,
        &mut report,
    )?;
    // Everything else in the folder (config, tokenizer, processor files).
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let weights = name.ends_with(".safetensors") || name == "model.safetensors.index.json";
        if path.is_file() && !weights {
            std::fs::copy(&path, out.join(name)).map_err(io(&path))?;
        }
    }
    Ok(report)
}
