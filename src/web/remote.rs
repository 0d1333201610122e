//! A safetensors file that a web page reads tensor by tensor (HTTP range requests, or its
//! cache): the library holds the header; each tensor's bytes are copied into wasm memory as
//! they arrive and dropped once uploaded, so memory peaks near the largest tensor, not the
//! checkpoint.
//!
//! The JS side (`web/paligemma.js`) describes a file as
//! `{ header: Uint8Array, size: number, read(start, end) }`: `header` the file's first bytes
//! (at least the 8-byte length and the JSON it counts), `size` its length, and `read` a
//! function returning (a promise of) a reader whose `next()` resolves to the next chunk of bytes
//! `start..end` (a `Uint8Array`) or `null` at the end.

use js_sys::{Function, Promise, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

/// One remote safetensors file (see the module's doc).
pub struct RemoteShard {
    header: Vec<u8>,
    len: usize,
    reader: JsValue,
    read: Function,
}

/// A JS exception's message (an `Error`'s, or the value as a string).
fn message(e: JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

/// `o[key]` as `T`, or an error naming `owner`'s key.
fn field<T: JsCast>(o: &JsValue, owner: &str, key: &str, what: &str) -> Result<T, String> {
    Reflect::get(o, &key.into())
        .ok()
        .and_then(|v| v.dyn_into::<T>().ok())
        .ok_or_else(|| format!("{owner}'s `{key}` is not {what}"))
}

impl RemoteShard {
    /// The shard described by the JS object `o` (see the module's doc).
    pub fn from_js(o: &JsValue) -> Result<RemoteShard, String> {
        let header: Uint8Array = field(o, "the shard", "header", "a Uint8Array")?;
        let size = Reflect::get(o, &"size".into())
            .ok()
            .and_then(|v| v.as_f64())
            .filter(|s| s.is_finite() && *s >= 0.0 && s.fract() == 0.0)
            .ok_or("the shard's `size` is not a byte count")?;
        if size > usize::MAX as f64 {
            return Err(format!(
                "{size} bytes: wasm32 addresses files of up to 4 GiB (split the checkpoint into \
                 smaller shards)"
            ));
        }
        Ok(RemoteShard {
            header: header.to_vec(),
            len: size as usize,
            read: field(o, "the shard", "read", "a function")?,
            reader: o.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes `start..end` of the header; an error past it (tensors are [`read`](Self::read)).
    pub fn header(&self, start: usize, end: usize) -> Result<&[u8], String> {
        self.header.get(start..end).ok_or_else(|| {
            format!(
                "bytes {start}..{end} are past the {} header bytes at hand (a remote file's \
                 tensors are read asynchronously)",
                self.header.len()
            )
        })
    }

    /// Bytes `start..end`, as the page's `read` delivers them.
    pub async fn read(&self, start: usize, end: usize) -> Result<Vec<u8>, String> {
        let n = end - start;
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(n)
            .map_err(|_| format!("bytes {start}..{end}: {n} bytes do not fit in wasm memory"))?;
        bytes.resize(n, 0);
        if n == 0 {
            return Ok(bytes);
        }
        let call = |f: &Function, this: &JsValue, args: &[JsValue]| {
            let r = f.apply(this, &args.iter().collect::<js_sys::Array>());
            async move {
                JsFuture::from(Promise::resolve(&r.map_err(message)?))
                    .await
                    .map_err(message)
            }
        };
        let reader = call(&self.read, &self.reader, &[start.into(), end.into()]).await?;
        let next: Function = field(&reader, "read()'s reader", "next", "a function")?;
        let mut at = 0;
        loop {
            let chunk = call(&next, &reader, &[]).await?;
            if chunk.is_null() || chunk.is_undefined() {
                break;
            }
            let chunk: Uint8Array = chunk
                .dyn_into()
                .map_err(|_| "the reader gave something other than a Uint8Array".to_string())?;
            let k = chunk.length() as usize;
            let Some(dst) = bytes.get_mut(at..at + k) else {
                return Err(format!("bytes {start}..{end}: more than {n} bytes arrived"));
            };
            chunk.copy_to(dst);
            at += k;
        }
        if at != n {
            return Err(format!("bytes {start}..{end}: {at} of {n} bytes arrived"));
        }
        Ok(bytes)
    }
}
