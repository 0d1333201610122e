//! `shaders/gather.wgsl`: the token embedding, rows of a chunked table gathered by id and
//! scaled.

use super::{ChunkedTable, View, grid_for, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Kernel, Recorder};
use crate::shaders::{Binding, Elem, Entry, Shader, shader};

/// Invocations per workgroup.
pub const WG: u32 = 256;

pub(crate) const SHADER: Shader = shader!("gather", ["grid", "weight_format"], &[("WG", WG)]);

/// Mirrors `Params` in gather.wgsl (the size is checked against it by `tests/interfaces.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_tokens: u32,
    hidden: u32,
    row_start: u32,
    row_count: u32,
    scale: f32,
    /// A quantized chunk's scale words, after its codes.
    w_scales: u32,
    _pad: [u32; 2],
}

/// Rows of one table chunk (in `W_DTYPE`, an override) gathered by id and scaled.
pub(crate) const GATHER: Entry = Entry {
    shader: &SHADER,
    name: "gather",
    params: size_of::<Params>(),
    bindings: &[
        Binding::read(1, "ids", Elem::U32),
        Binding::read(2, "w", Elem::U32x4),
        Binding::read_write(3, "out", Elem::F32),
    ],
};

pub(crate) const ENTRIES: &[&Entry] = &[&GATHER];

/// out `[n, hidden]` = `table[ids[t]]` * scale for the n = out.rows ids in `ids` (u32). Every
/// id must be below `table.rows` (the caller validates ids on the CPU, where they come from).
pub fn gather(
    rec: &mut Recorder,
    ids: &wgpu::Buffer,
    table: &ChunkedTable,
    scale: f32,
    out: View,
) -> Result<()> {
    let n_tokens = out.rows;
    if n_tokens == 0 {
        return Err(Error::invalid("embedding gather of zero tokens"));
    }
    out.expect_packed("embeddings", n_tokens, table.cols)?;
    let groups = grid_for(rec.gpu(), n_tokens * table.cols, WG);
    for (start, chunk) in &table.chunks {
        let params = Params {
            n_tokens: u32_of("tokens", n_tokens)?,
            hidden: u32_of("hidden", table.cols)?,
            row_start: u32_of("row", *start)?,
            row_count: u32_of("rows", chunk.rows)?,
            scale,
            w_scales: chunk.scale_offset,
            _pad: [0; 2],
        };
        let k = Kernel::new(&GATHER).with(chunk.format.overrides());
        rec.dispatch(k, &params, &[ids, &chunk.buffer, out.buffer], groups)?;
    }
    Ok(())
}

/// CPU reference for [`gather`]: table [rows, hidden] -> [ids.len(), hidden].
pub fn gather_ref(ids: &[u32], table: &[f32], hidden: usize, scale: f32) -> Vec<f32> {
    ids.iter()
        .flat_map(|&id| {
            table[id as usize * hidden..(id as usize + 1) * hidden]
                .iter()
                .map(move |&v| v * scale)
        })
        .collect()
}
