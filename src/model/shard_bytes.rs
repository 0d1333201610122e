//! The bytes of one safetensors file, wherever they are: memory-mapped, in memory, or (in a
//! browser) a JS array or a remote file read tensor by tensor.

use std::borrow::Cow;

use memmap2::Mmap;
use safetensors::tensor::Metadata;

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
    /// A file of which only the header is held: each tensor is read when it is uploaded (a
    /// web page's range requests or cache), so neither JS nor wasm memory ever holds the file.
    #[cfg(all(target_arch = "wasm32", feature = "web"))]
    Remote(crate::web::RemoteShard),
}

impl ShardBytes {
    pub(crate) fn len(&self) -> usize {
        match self {
            ShardBytes::Mapped(m) => m.len(),
            ShardBytes::Owned(v) => v.len(),
            #[cfg(all(target_arch = "wasm32", feature = "web"))]
            ShardBytes::Js(a) => a.length() as usize,
            #[cfg(all(target_arch = "wasm32", feature = "web"))]
            ShardBytes::Remote(r) => r.len(),
        }
    }

    /// Bytes `start..end` (in range: the header was checked against the length) where they
    /// are at hand: all of them but a remote file's tensors.
    pub(crate) fn range(
        &self,
        start: usize,
        end: usize,
    ) -> std::result::Result<Cow<'_, [u8]>, String> {
        Ok(match self {
            ShardBytes::Mapped(m) => Cow::Borrowed(&m[start..end]),
            ShardBytes::Owned(v) => Cow::Borrowed(&v[start..end]),
            #[cfg(all(target_arch = "wasm32", feature = "web"))]
            ShardBytes::Js(a) => Cow::Owned(a.subarray(start as u32, end as u32).to_vec()),
            #[cfg(all(target_arch = "wasm32", feature = "web"))]
            ShardBytes::Remote(r) => Cow::Borrowed(r.header(start, end)?),
        })
    }

    /// Bytes `start..end`, wherever they are.
    pub(crate) async fn read(
        &self,
        start: usize,
        end: usize,
    ) -> std::result::Result<Cow<'_, [u8]>, String> {
        match self {
            #[cfg(all(target_arch = "wasm32", feature = "web"))]
            ShardBytes::Remote(r) => r.read(start, end).await.map(Cow::Owned),
            _ => self.range(start, end),
        }
    }

    /// The header's length and metadata, checked as `SafeTensors::read_metadata` checks them
    /// (the tensors tile the data exactly to the end of the file) without needing every byte in
    /// one slice.
    pub(crate) fn metadata(&self) -> std::result::Result<(usize, Metadata), String> {
        let len = self.len();
        if len < 8 {
            return Err("shorter than a safetensors header".into());
        }
        let n = u64::from_le_bytes(self.range(0, 8)?.as_ref().try_into().expect("8 bytes"));
        if n > MAX_HEADER_BYTES || 8 + n as usize > len {
            return Err(format!(
                "header length {n} does not fit the file's {len} bytes"
            ));
        }
        let n = n as usize;
        let metadata: Metadata =
            serde_json::from_slice(&self.range(8, 8 + n)?).map_err(|e| format!("header: {e}"))?;
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
