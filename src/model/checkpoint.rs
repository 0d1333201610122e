//! A PaliGemma checkpoint folder: `model.safetensors`, or the shards listed in
//! `model.safetensors.index.json`, memory-mapped; tensors found under either naming scheme.
//! The shards may also be bytes the caller holds ([`Checkpoint::from_shards`]): in a browser,
//! JS arrays outside wasm memory, of which only the tensor being uploaded is copied in.
//!
//! Published checkpoints name tensors `vision_tower.vision_model.*`,
//! `multi_modal_projector.linear.*`, `language_model.model.*`; newer transformers writes
//! `vision_tower.*` (no `vision_model.`) and `model.language_model.*`. Both map to one canonical
//! name: `vision.<rest>`, `projector.<rest>`, `text.<rest>`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::Dtype;
use safetensors::tensor::Metadata;

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::ops::{HostWeight, WeightFormat};

struct Shard {
    path: PathBuf,
    bytes: ShardBytes,
    /// Where the tensor data starts (8-byte length + JSON header).
    data_start: usize,
}

impl Shard {
    /// A tensor's bytes, from its offsets in the data section.
    fn data(&self, (start, end): (usize, usize)) -> Cow<'_, [u8]> {
        self.bytes
            .range(self.data_start + start, self.data_start + end)
    }
}

/// The largest header accepted: safetensors' own bound (`MAX_HEADER_SIZE`, private to it).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The bytes of one safetensors file.
pub enum ShardBytes {
    /// A file, memory-mapped.
    Mapped(Mmap),
    /// Bytes in memory.
    Owned(Vec<u8>),
    /// A JS array (a fetched file) outside wasm memory: each tensor is copied in only while
    /// it is uploaded, so wasm's 4 GiB never holds the checkpoint.
    #[cfg(all(target_arch = "wasm32", feature = "web"))]
    Js(js_sys::Uint8Array),
}

impl ShardBytes {
    fn len(&self) -> usize {
        match self {
            ShardBytes::Mapped(m) => m.len(),
            ShardBytes::Owned(v) => v.len(),
            #[cfg(all(target_arch = "wasm32", feature = "web"))]
            ShardBytes::Js(a) => a.length() as usize,
        }
    }

    /// Bytes `start..end` (in range: the header was checked against the length).
    fn range(&self, start: usize, end: usize) -> Cow<'_, [u8]> {
        match self {
            ShardBytes::Mapped(m) => Cow::Borrowed(&m[start..end]),
            ShardBytes::Owned(v) => Cow::Borrowed(&v[start..end]),
            #[cfg(all(target_arch = "wasm32", feature = "web"))]
            ShardBytes::Js(a) => Cow::Owned(a.subarray(start as u32, end as u32).to_vec()),
        }
    }

    /// The header's length and metadata, checked as `SafeTensors::read_metadata` checks them
    /// (the tensors tile the data exactly to the end of the file) without needing every byte in
    /// one slice.
    fn metadata(&self) -> std::result::Result<(usize, Metadata), String> {
        let len = self.len();
        if len < 8 {
            return Err("shorter than a safetensors header".into());
        }
        let n = u64::from_le_bytes(self.range(0, 8).as_ref().try_into().expect("8 bytes"));
        if n > MAX_HEADER_BYTES || 8 + n as usize > len {
            return Err(format!(
                "header length {n} does not fit the file's {len} bytes"
            ));
        }
        let n = n as usize;
        let metadata: Metadata =
            serde_json::from_slice(&self.range(8, 8 + n)).map_err(|e| format!("header: {e}"))?;
        let end = metadata
            .tensors()
            .values()
            .map(|t| t.data_offsets.1)
            .max()
            .unwrap_or(0);
        if 8 + n + end != len {
            return Err(format!(
                "the header describes {} bytes, the file holds {len}",
                8 + n + end
            ));
        }
        Ok((n, metadata))
    }
}

/// Where one tensor lives.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    range: (usize, usize),
}

/// A tensor's bytes as stored, with its dtype and shape.
pub struct TensorData<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub bytes: Cow<'a, [u8]>,
}

impl<'a> TensorData<'a> {
    /// The stored format, if it is one the kernels read directly.
    pub fn format(&self) -> Result<WeightFormat> {
        match self.dtype {
            Dtype::F32 => Ok(WeightFormat::F32),
            Dtype::F16 => Ok(WeightFormat::F16),
            Dtype::BF16 => Ok(WeightFormat::Bf16),
            other => Err(Error::Tensor {
                name: self.name.to_string(),
                message: format!("dtype {other:?} is not supported (f32, f16, bf16)"),
            }),
        }
    }

    /// The values widened to f32 (exact for f16 and bf16).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let format = self.format()?;
        let cols = self.bytes.len() / format.row_bytes(1);
        Ok(unscaled(format, 1, cols, Cow::Borrowed(&self.bytes)).decode())
    }

    /// The `[rows, cols]` matrix in `format`: the stored bytes themselves when the formats
    /// agree (a bf16 checkpoint's bytes are used as they are), otherwise converted.
    pub fn into_host(
        self,
        format: WeightFormat,
        rows: usize,
        cols: usize,
    ) -> Result<HostWeight<'a>> {
        if self.format()? == format {
            return Ok(unscaled(format, rows, cols, self.bytes));
        }
        Ok(HostWeight::encode(&self.to_f32()?, format, rows, cols))
    }
}

/// Bytes stored as `format` (a format without block scales), read as a `[rows, cols]` matrix.
fn unscaled(format: WeightFormat, rows: usize, cols: usize, data: Cow<'_, [u8]>) -> HostWeight<'_> {
    HostWeight {
        format,
        rows,
        cols,
        data,
        scales: Cow::Borrowed(&[]),
    }
}

/// One tensor of a checkpoint as stored.
pub struct StoredTensor<'a> {
    /// Its name in the file, and the canonical one.
    pub name: &'a str,
    pub canon: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub bytes: Cow<'a, [u8]>,
}

/// Maps a checkpoint tensor name to the canonical one, or `None` for tensors the engine does
/// not know. A separate `lm_head` (root or under `language_model.`) becomes `text.lm_head.*`.
pub fn canonical_name(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("lm_head.") {
        return Some(format!("text.lm_head.{rest}"));
    }
    if let Some(i) = name.find("vision_tower.") {
        let rest = &name[i + "vision_tower.".len()..];
        let rest = rest.strip_prefix("vision_model.").unwrap_or(rest);
        return Some(format!("vision.{rest}"));
    }
    if let Some(i) = name.find("multi_modal_projector.") {
        return Some(format!(
            "projector.{}",
            &name[i + "multi_modal_projector.".len()..]
        ));
    }
    if let Some(i) = name.find("language_model.") {
        let rest = &name[i + "language_model.".len()..];
        let rest = rest.strip_prefix("model.").unwrap_or(rest);
        return Some(format!("text.{rest}"));
    }
    None
}

/// The safetensors files of a checkpoint, memory-mapped, indexed by canonical name.
pub struct Checkpoint {
    /// The folder, or what the caller called the shards' source.
    dir: PathBuf,
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
    /// Bytes of the tensors handed out so far: the loading progress.
    read: std::cell::Cell<u64>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors.index.json`'s shards, or `dir/model.safetensors`, or every
    /// `*.safetensors` in `dir`.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|source| Error::Io {
                path: index.clone(),
                source,
            })?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
                path: index.clone(),
                message: format!("not valid JSON: {e}"),
            })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Config {
                    path: index.clone(),
                    message: "has no `weight_map` object".into(),
                })?;
            let mut names: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|f| dir.join(f)).collect()
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|source| Error::Io {
                    path: dir.into(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            v.sort();
            v
        };
        if files.is_empty() {
            return Err(Error::Io {
                path: dir.into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors, model.safetensors.index.json or *.safetensors here",
                ),
            });
        }
        let mut shards = Vec::new();
        for path in files {
            let file = File::open(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the file is opened read-only and mapped privately; like every
            // safetensors loader we assume nobody truncates it while the model is loading.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            shards.push((path, ShardBytes::Mapped(mmap)));
        }
        Self::from_shards(dir, shards)
    }

    /// A checkpoint from safetensors files the caller holds (named for errors, e.g. by their
    /// URL; `source` names them all). The web loader's entry point.
    pub fn from_shards(
        source: impl Into<PathBuf>,
        files: Vec<(PathBuf, ShardBytes)>,
    ) -> Result<Checkpoint> {
        let mut shards = Vec::new();
        let mut entries: HashMap<String, Entry> = HashMap::new();
        for (path, bytes) in files {
            let (header_len, metadata) =
                bytes.metadata().map_err(|message| Error::Safetensors {
                    path: path.clone(),
                    message,
                })?;
            let shard = shards.len();
            for (name, info) in metadata.tensors() {
                let Some(canon) = canonical_name(&name) else {
                    log::debug!("ignoring tensor {name}");
                    continue;
                };
                if let Some(old) = entries.get(&canon) {
                    log::warn!(
                        "tensors {} and {name} are both {canon}; using {name}",
                        old.name
                    );
                }
                entries.insert(
                    canon,
                    Entry {
                        name,
                        shard,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        range: info.data_offsets,
                    },
                );
            }
            shards.push(Shard {
                path,
                bytes,
                data_start: 8 + header_len,
            });
        }
        Ok(Checkpoint {
            dir: source.into(),
            shards,
            entries,
            read: Default::default(),
        })
    }

    /// The pre-quantized form of matrix `canon` `[rows, cols]` (written by `paligemma
    /// quantize`: `{name}.q8` or `{name}.q4` codes and `{name}.q8_scales` / `.q4_scales`), if
    /// the checkpoint holds one.
    pub fn quantized(
        &self,
        canon: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<HostWeight<'_>>> {
        for (format, suffix, dtype) in [
            (WeightFormat::Q8, "q8", Dtype::I8),
            (WeightFormat::Q4, "q4", Dtype::U8),
        ] {
            let codes = format!("{canon}.{suffix}");
            if !self.contains(&codes) {
                continue;
            }
            let code_cols = format.row_bytes(cols) * 8 / dtype.bitsize();
            let data = self.raw(&codes, dtype, &[rows, code_cols])?;
            let scales = self.raw(
                &format!("{codes}_scales"),
                Dtype::F16,
                &[rows, cols / crate::ops::weights::BLOCK, 2],
            )?;
            let host = HostWeight {
                format,
                rows,
                cols,
                data,
                scales,
            };
            host.check(&codes)?;
            return Ok(Some(host));
        }
        Ok(None)
    }

    /// The format of the checkpoint's pre-quantized matrices, if it has any.
    pub fn quantized_format(&self) -> Option<WeightFormat> {
        let has = |suffix: &str| self.entries.keys().any(|k| k.ends_with(suffix));
        if has(".q4") {
            Some(WeightFormat::Q4)
        } else if has(".q8") {
            Some(WeightFormat::Q8)
        } else {
            None
        }
    }

    /// Every tensor, ordered by its name in the file.
    pub fn tensors(&self) -> Vec<StoredTensor<'_>> {
        let mut v: Vec<_> = self
            .entries
            .iter()
            .map(|(canon, e)| StoredTensor {
                name: &e.name,
                canon,
                dtype: e.dtype,
                shape: &e.shape,
                bytes: self.shards[e.shard].data(e.range),
            })
            .collect();
        v.sort_by_key(|t| t.name);
        v
    }

    /// The bytes of tensor `canon`, checked to have `dtype` and `shape`.
    fn raw(&self, canon: &str, dtype: Dtype, shape: &[usize]) -> Result<Cow<'_, [u8]>> {
        let e = self.entries.get(canon).ok_or_else(|| Error::Tensor {
            name: canon.to_string(),
            message: format!("missing from the checkpoint in {}", self.dir.display()),
        })?;
        if e.dtype != dtype || e.shape != shape {
            return Err(Error::Tensor {
                name: e.name.clone(),
                message: format!(
                    "{:?} {:?} where {dtype:?} {shape:?} was expected",
                    e.dtype, e.shape
                ),
            });
        }
        self.read
            .set(self.read.get() + (e.range.1 - e.range.0) as u64);
        Ok(self.shards[e.shard].data(e.range))
    }

    /// Bytes of tensor data read so far, and in all.
    pub fn progress(&self) -> (u64, u64) {
        let total = self
            .entries
            .values()
            .map(|e| (e.range.1 - e.range.0) as u64);
        (self.read.get(), total.sum())
    }

    /// Whether a tensor with canonical name `canon` exists.
    pub fn contains(&self, canon: &str) -> bool {
        self.entries.contains_key(canon)
    }

    /// The tensor with canonical name `canon`, checked to have `shape`. Errors name the
    /// checkpoint's own tensor name and file.
    pub fn get(&self, canon: &str, shape: &[usize]) -> Result<TensorData<'_>> {
        let e = self.entries.get(canon).ok_or_else(|| Error::Tensor {
            name: canon.to_string(),
            message: format!("missing from the checkpoint in {}", self.dir.display()),
        })?;
        let shard = &self.shards[e.shard];
        if e.shape != shape {
            return Err(Error::Tensor {
                name: e.name.clone(),
                message: format!(
                    "shape {:?} in {} does not match the config's {:?}",
                    e.shape,
                    shard.path.display(),
                    shape
                ),
            });
        }
        let t = TensorData {
            name: &e.name,
            dtype: e.dtype,
            bytes: shard.data(e.range),
        };
        t.format()?;
        self.read.set(self.read.get() + t.bytes.len() as u64);
        Ok(t)
    }
}
