//! `shaders/embedding.wgsl`: token embedding gather times a scale, over a chunked table.

use super::{ChunkedTable, grid_256, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Recorder, bind};
use crate::shaders::EMBEDDING;

/// Mirrors `Params` in embedding.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_tokens: u32,
    hidden: u32,
    row_start: u32,
    row_count: u32,
    scale: f32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<Params>() == 32);

/// out `[n_tokens, hidden]` = `table[ids[t]`] * scale. `ids` is a u32 buffer; every id must be
/// below `table.rows` (the caller validates ids on the CPU, where they come from).
pub fn gather(
    rec: &mut Recorder,
    ids: &wgpu::Buffer,
    n_tokens: usize,
    table: &ChunkedTable,
    scale: f32,
    out: &wgpu::Buffer,
) -> Result<()> {
    if n_tokens == 0 {
        return Err(Error::invalid("embedding gather of zero tokens"));
    }
    let groups = grid_256(rec.gpu(), n_tokens * table.cols);
    for (start, chunk) in &table.chunks {
        let constants = [("W_DTYPE", chunk.format.shader_code())];
        let pipeline = rec.gpu().pipeline(&EMBEDDING, "gather", &constants)?;
        let params = Params {
            n_tokens: u32_of("tokens", n_tokens)?,
            hidden: u32_of("hidden", table.cols)?,
            row_start: u32_of("row", *start)?,
            row_count: u32_of("rows", chunk.rows)?,
            scale,
            _pad: [0; 3],
        };
        let binds = vec![bind(1, ids), bind(2, &chunk.buffer), bind(3, out)];
        rec.dispatch(pipeline, &params, binds, groups);
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
