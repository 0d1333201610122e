//! What a decoder forward pass works on: its rows, described as [`Span`]s (consecutive rows of
//! one sequence over that sequence's KV cache), and its [`Activations`] as views.
//!
//! A prefill is one span of many rows; a decode step of one sequence one span of one row; a
//! batched step one span of one row per sequence. The layers are written once against this
//! description: where the new keys go, how RoPE finds each row's position and which attention
//! kernel runs all follow from the spans.

use super::config::TextConfig;
use super::state::{Activations, LayerCache, rows_of};
use crate::error::Result;
use crate::gpu::Recorder;
use crate::ops::View;
use crate::ops::attention::{AttentionKernel, AttentionParams, Blocks, attention};
use crate::ops::rope::{RopeTables, rope_at, rope_qk};

/// Consecutive rows of a pass that belong to one sequence.
pub(crate) struct Span<'a> {
    /// The pass's row where the span begins.
    pub first_row: usize,
    pub rows: usize,
    pub cache: &'a [LayerCache],
    /// The cache position of the span's first row.
    pub start: usize,
    /// Positions below this form the bidirectional block (PaliGemma's image + prompt).
    pub prefix_len: usize,
    /// Gemma 3's image blocks, each bidirectional.
    pub blocks: Blocks,
    /// Scratch of the split decode attention.
    pub partial: &'a wgpu::Buffer,
}

/// Where the new keys and values of a pass are computed when its rows are of several
/// sequences (each row is then copied into its own cache), and each row's RoPE position.
pub(crate) struct Gathered<'a> {
    pub keys: &'a wgpu::Buffer,
    pub values: &'a wgpu::Buffer,
    /// `u32 [rows]`: each row's position, 1-based as transformers numbers them.
    pub positions: &'a wgpu::Buffer,
}

/// One forward pass over `rows` new positions.
pub(crate) struct Pass<'a> {
    pub cfg: &'a TextConfig,
    pub rope: &'a RopeTables,
    /// Gemma 3: the sliding layers' RoPE.
    pub sliding_rope: Option<&'a RopeTables>,
    pub rows: usize,
    pub spans: Vec<Span<'a>>,
    /// Set when there are several spans.
    pub gathered: Option<Gathered<'a>>,
    pub acts: &'a Activations,
}

impl<'a> Pass<'a> {
    fn packed(&self, buffer: &'a wgpu::Buffer, width: usize) -> View<'a> {
        View::new(buffer, self.rows, width)
    }
    fn heads_width(&self) -> usize {
        self.cfg.num_attention_heads * self.cfg.head_dim
    }
    fn kv_width(&self) -> usize {
        self.cfg.num_key_value_heads * self.cfg.head_dim
    }
    /// The residual stream x, `[rows, H]`.
    pub fn residual(&self) -> View<'a> {
        self.packed(&self.acts.residual, self.cfg.hidden_size)
    }
    /// norm(x), a block's input, `[rows, H]`.
    pub fn normed(&self) -> View<'a> {
        self.packed(&self.acts.normed, self.cfg.hidden_size)
    }
    /// `[rows, heads * hd]`.
    pub fn queries(&self) -> View<'a> {
        self.packed(&self.acts.queries, self.heads_width())
    }
    /// The attention's output, `[rows, heads * hd]`.
    pub fn attended(&self) -> View<'a> {
        self.packed(&self.acts.attended, self.heads_width())
    }
    /// A block's output before Gemma 2's post-norm, `[rows, H]`.
    pub fn branch(&self) -> View<'a> {
        self.packed(&self.acts.branch, self.cfg.hidden_size)
    }
    /// The MLP's gate activations for a block of `n` rows, `[n, I]`.
    pub fn gate(&self, n: usize) -> View<'a> {
        View::new(&self.acts.gate, n, self.cfg.intermediate_size)
    }
    /// The MLP's up activations (then the gated product) for a block of `n` rows, `[n, I]`.
    pub fn up(&self, n: usize) -> View<'a> {
        View::new(&self.acts.up, n, self.cfg.intermediate_size)
    }
    /// The MLP's blocks of rows, each small enough for `[n, I]` to fit a binding: (first, n).
    pub fn mlp_blocks(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (rows, step) = (self.rows, self.acts.mlp_rows);
        (0..rows)
            .step_by(step)
            .map(move |r0| (r0, step.min(rows - r0)))
    }

    /// Where layer `li`'s projections write the new keys and values: straight into the cache
    /// rows of a single span (a ring layer's rows for their positions), gathered for several,
    /// or, for a prompt longer than a ring layer's window, a scratch of the whole prompt.
    pub fn new_keys_values(&self, li: usize) -> (View<'a>, View<'a>) {
        let w = self.kv_width();
        match (&self.gathered, &self.spans[..]) {
            (Some(g), _) => (self.packed(g.keys, w), self.packed(g.values, w)),
            (None, [s]) => match self.overflow(s, li) {
                Some((k, v)) => (self.packed(k, w), self.packed(v, w)),
                None => {
                    let (c, row) = (&s.cache[li], s.cache[li].row_of(s.start));
                    (
                        rows_of(&c.keys, row, s.rows, w),
                        rows_of(&c.values, row, s.rows, w),
                    )
                }
            },
            (None, _) => unreachable!("a pass of several spans gathers its keys"),
        }
    }

    /// The scratch holding a span's keys and values when they overflow layer `li`'s ring (a
    /// prompt longer than the window).
    fn overflow(&self, s: &Span<'a>, li: usize) -> Option<(&'a wgpu::Buffer, &'a wgpu::Buffer)> {
        let ring = s.cache[li].ring?;
        if s.rows == 1 || s.start + s.rows <= ring {
            return None;
        }
        let (k, v) = self.acts.overflow.as_ref()?;
        Some((k, v))
    }

    /// RoPE on the queries and the new keys, at each row's position (a sliding layer's own
    /// RoPE where it has one): in one dispatch from the span's start for a single span, from
    /// the positions buffer for several.
    pub fn rotate(&self, rec: &mut Recorder, keys: View, sliding: bool) -> Result<()> {
        let (nh, nkv) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads);
        let rope = match (sliding, self.sliding_rope) {
            (true, Some(r)) => r,
            _ => self.rope,
        };
        let base = self.cfg.first_position();
        match (&self.gathered, &self.spans[..]) {
            (Some(g), spans) => {
                let last = spans.iter().map(|s| s.start + s.rows).max().unwrap_or(0);
                rope_at(rec, self.queries(), rope, nh, g.positions, last)?;
                rope_at(rec, keys, rope, nkv, g.positions, last)
            }
            (None, [s]) => rope_qk(rec, self.queries(), keys, rope, nh, nkv, s.start + base),
            (None, _) => unreachable!("a pass of several spans has positions"),
        }
    }

    /// Copies gathered keys and values into each span's cache, and an overflowed prompt's last
    /// window of them into the ring (nothing for a single span written in place).
    pub fn store_keys_values(&self, rec: &mut Recorder, li: usize, keys: View, values: View) {
        let row_bytes = (self.kv_width() * 4) as u64;
        for s in &self.spans {
            let c = &s.cache[li];
            // (first row of the span to copy, rows)
            let copy = match (&self.gathered, self.overflow(s, li)) {
                (Some(_), _) => (0, s.rows),
                (None, Some(_)) => {
                    let kept = c.ring.unwrap_or(s.rows).min(s.rows);
                    (s.rows - kept, kept)
                }
                (None, None) => continue,
            };
            // Position by position run, split where the ring wraps.
            let (mut r, end) = (copy.0, copy.0 + copy.1);
            while r < end {
                let slot = c.row_of(s.start + r);
                let n = (end - r).min(c.ring.map_or(usize::MAX, |w| w - slot));
                let at = (s.first_row + r) as u64 * row_bytes;
                let (dst, bytes) = (slot as u64 * row_bytes, n as u64 * row_bytes);
                rec.copy(keys.buffer, at, &c.keys, dst, bytes);
                rec.copy(values.buffer, at, &c.values, dst, bytes);
                r += n;
            }
        }
    }

    /// Each span's queries attend over its own cache (`sliding`: the windowed layers): the
    /// blocked kernel for many rows, the split one for a single row. A ring layer's row past
    /// the window attends to the whole ring: it holds exactly the window's keys.
    pub fn attend(&self, rec: &mut Recorder, li: usize, sliding: bool) -> Result<()> {
        let w = self.kv_width();
        for s in &self.spans {
            let c = &s.cache[li];
            let mut params = self
                .cfg
                .attention(sliding, s.rows, s.start, s.prefix_len, s.blocks);
            let (keys, values) = match (self.overflow(s, li), c.ring) {
                (Some((k, v)), _) if s.start == 0 => (k, v),
                (Some(_), _) => {
                    return Err(crate::Error::invalid(
                        "rows past a ring cache's window come one at a time after a prompt",
                    ));
                }
                (None, Some(ring)) if s.start + s.rows > ring => {
                    params = AttentionParams {
                        kv_len: ring as u32,
                        ..self.cfg.attention(false, 1, s.start, 0, Blocks::default())
                    };
                    (&c.keys, &c.values)
                }
                _ => (&c.keys, &c.values),
            };
            let kernel = AttentionKernel::for_rows(params.q_rows, s.partial);
            // The span's queries and output rows, over its cache up to its last new row.
            let rows = |v: View<'a>| v.rows(s.first_row, s.rows);
            let (q, out) = (rows(self.queries()), rows(self.attended()));
            let n = params.kv_len as usize;
            let (k, v) = (rows_of(keys, 0, n, w), rows_of(values, 0, n, w));
            attention(rec, kernel, q, k, v, out, &params)?;
        }
        Ok(())
    }
}
