//! A PaliGemma checkpoint folder: `model.safetensors`, or the shards listed in
//! `model.safetensors.index.json`, memory-mapped; tensors found under either naming scheme.
//! The shards may also be bytes the caller holds ([`Checkpoint::from_shards`]), or, in a
//! browser, files of which only the header is held and each tensor is read (HTTP range
//! requests, the page's cache) while it is uploaded: [`Checkpoint::read`] is async for them.
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

use std::borrow::Cow;

pub use super::shard_bytes::ShardBytes;

use crate::error::{Error, Result};
use crate::ops::{HostWeight, WeightFormat};

struct Shard {
    path: PathBuf,
    bytes: ShardBytes,
    /// Where the tensor data starts (8-byte length + JSON header).
    data_start: usize,
}

impl Shard {
    /// A tensor's bytes, from its offsets in the data section, where they are at hand.
    fn data(&self, (start, end): (usize, usize)) -> Result<Cow<'_, [u8]>> {
        self.bytes
            .range(self.data_start + start, self.data_start + end)
            .map_err(|message| self.error(message))
    }

    /// A tensor's bytes, read from wherever the shard is.
    async fn read(&self, (start, end): (usize, usize)) -> Result<Cow<'_, [u8]>> {
        self.bytes
            .read(self.data_start + start, self.data_start + end)
            .await
            .map_err(|message| self.error(message))
    }

    fn error(&self, message: String) -> Error {
        Error::Safetensors {
            path: self.path.clone(),
            message,
        }
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

impl Entry {
    /// The tensor with `bytes` as its data.
    fn tensor<'a>(&'a self, bytes: Cow<'a, [u8]>) -> TensorData<'a> {
        TensorData {
            name: &self.name,
            dtype: self.dtype,
            bytes,
        }
    }
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
    pub async fn quantized(
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
            let data = self.raw(&codes, dtype, &[rows, code_cols]).await?;
            let scales = self
                .raw(
                    &format!("{codes}_scales"),
                    Dtype::F16,
                    &[rows, cols / crate::ops::weights::BLOCK, 2],
                )
                .await?;
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

    /// Every tensor, ordered by its name in the file (a checkpoint whose bytes are at hand:
    /// not a web page's remote files).
    pub fn tensors(&self) -> Result<Vec<StoredTensor<'_>>> {
        let mut v = Vec::with_capacity(self.entries.len());
        for (canon, e) in &self.entries {
            v.push(StoredTensor {
                name: &e.name,
                canon,
                dtype: e.dtype,
                shape: &e.shape,
                bytes: self.shards[e.shard].data(e.range)?,
            });
        }
        v.sort_by_key(|t| t.name);
        Ok(v)
    }

    /// The entry of tensor `canon`; errors name the checkpoint's folder.
    fn entry(&self, canon: &str) -> Result<&Entry> {
        self.entries.get(canon).ok_or_else(|| Error::Tensor {
            name: canon.to_string(),
            message: format!("missing from the checkpoint in {}", self.dir.display()),
        })
    }

    /// The bytes of tensor `canon`, checked to have `dtype` and `shape`.
    async fn raw(&self, canon: &str, dtype: Dtype, shape: &[usize]) -> Result<Cow<'_, [u8]>> {
        let e = self.entry(canon)?;
        if e.dtype != dtype || e.shape != shape {
            return Err(Error::Tensor {
                name: e.name.clone(),
                message: format!(
                    "{:?} {:?} where {dtype:?} {shape:?} was expected",
                    e.dtype, e.shape
                ),
            });
        }
        let bytes = self.shards[e.shard].read(e.range).await?;
        self.read.set(self.read.get() + bytes.len() as u64);
        Ok(bytes)
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

    /// Tensor `canon`'s entry, checked to have `shape` and a dtype the kernels read, with that
    /// format. Errors name the checkpoint's own tensor name and file.
    fn lookup(&self, canon: &str, shape: &[usize]) -> Result<(&Entry, WeightFormat)> {
        let e = self.entry(canon)?;
        if e.shape != shape {
            return Err(Error::Tensor {
                name: e.name.clone(),
                message: format!(
                    "shape {:?} in {} does not match the config's {:?}",
                    e.shape,
                    self.shards[e.shard].path.display(),
                    shape
                ),
            });
        }
        let format = e.tensor(Cow::Borrowed(&[])).format()?;
        Ok((e, format))
    }

    /// How tensor `canon` of `shape` is stored, from the header alone.
    pub fn stored_format(&self, canon: &str, shape: &[usize]) -> Result<WeightFormat> {
        Ok(self.lookup(canon, shape)?.1)
    }

    /// The tensor with canonical name `canon`, checked to have `shape`, from a checkpoint
    /// whose bytes are at hand ([`read`](Self::read) reads any).
    pub fn get(&self, canon: &str, shape: &[usize]) -> Result<TensorData<'_>> {
        let (e, _) = self.lookup(canon, shape)?;
        let bytes = self.shards[e.shard].data(e.range)?;
        self.read.set(self.read.get() + bytes.len() as u64);
        Ok(e.tensor(bytes))
    }

    /// The tensor with canonical name `canon`, checked to have `shape`, read from wherever
    /// its shard is (at once for a file or bytes in memory; a web page's remote file only
    /// while this awaits).
    pub async fn read(&self, canon: &str, shape: &[usize]) -> Result<TensorData<'_>> {
        let (e, _) = self.lookup(canon, shape)?;
        let bytes = self.shards[e.shard].read(e.range).await?;
        self.read.set(self.read.get() + bytes.len() as u64);
        Ok(e.tensor(bytes))
    }
}
