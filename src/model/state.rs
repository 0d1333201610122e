//! The decoder's buffers: what one sequence keeps from its prefill to its last token
//! ([`DecoderState`]: KV cache, position, last logits), and the activations a forward pass works
//! in ([`Activations`], inside a [`DecodeScratch`] for decode steps or made for one prefill).

use super::config::TextConfig;
use crate::error::{Error, Result};
use crate::gpu::{DispatchCache, Gpu};
use crate::ops::View;
use crate::ops::attention::{Blocks, partial_len};
use crate::ops::linear::GEMV_BATCH;
use crate::sampling::SamplingOptions;

/// One layer's KV cache: `[capacity, kv_heads * hd]` each, row t written at position t; or,
/// for Gemma 3's sliding layers, a ring of `window` rows, position t in row t % window.
pub(crate) struct LayerCache {
    pub keys: wgpu::Buffer,
    pub values: wgpu::Buffer,
    /// The ring's rows (None: one row per position).
    pub ring: Option<usize>,
}

impl LayerCache {
    /// The row position `pos` is kept in.
    pub fn row_of(&self, pos: usize) -> usize {
        self.ring.map_or(pos, |w| pos % w)
    }
}

/// One sequence's decoder state on the GPU: the KV cache, how much of it is filled, and the
/// logits the last token was chosen from. A pass needs activations besides.
pub struct DecoderState {
    /// Tells states apart in a [`DecodeScratch`] (whose cached bind groups name their buffers).
    pub(crate) id: u64,
    pub(crate) cache: Vec<LayerCache>,
    pub(crate) capacity: usize,
    pub(crate) len: usize,
    /// Positions below this (PaliGemma's image + prompt) attend to each other both ways.
    pub(crate) prefix_len: usize,
    /// Gemma 3: each image's positions attend to each other both ways.
    pub(crate) blocks: Blocks,
    /// `[vocab]` f32: the logits the last token was chosen from.
    pub(crate) logits: wgpu::Buffer,
    /// The split decode attention's per-chunk results (sized by the capacity).
    pub(crate) partial: wgpu::Buffer,
    /// How the GPU chooses the next token from the logits: `None` greedy (argmax), else a
    /// draw (`ops::sample`), each the draw of its position in the seed's stream.
    pub(crate) sampling: Option<SamplingOptions>,
}

static NEXT_STATE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl DecoderState {
    /// An empty state able to hold `capacity` positions of `model`.
    pub(crate) fn new(gpu: &Gpu, c: &TextConfig, capacity: usize) -> Result<DecoderState> {
        if capacity > c.max_position_embeddings {
            return Err(Error::invalid(format!(
                "{capacity} positions exceed the model's max_position_embeddings {}",
                c.max_position_embeddings
            )));
        }
        let row = (c.num_key_value_heads * c.head_dim * 4) as u64;
        let cache = (0..c.num_hidden_layers)
            .map(|li| {
                let ring = c.ring_slots(li, capacity);
                let bytes = ring.unwrap_or(capacity) as u64 * row;
                Ok(LayerCache {
                    keys: gpu.storage(&format!("k cache {li}"), bytes)?,
                    values: gpu.storage(&format!("v cache {li}"), bytes)?,
                    ring,
                })
            })
            .collect::<Result<_>>()?;
        let partial = partial_len(c.num_attention_heads, c.head_dim, capacity);
        Ok(DecoderState {
            id: NEXT_STATE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            cache,
            capacity,
            len: 0,
            prefix_len: 0,
            blocks: Blocks::default(),
            logits: gpu.storage("logits", (c.vocab_size * 4) as u64)?,
            partial: gpu.storage("attention partials", (partial * 4) as u64)?,
            sampling: None,
        })
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Positions the state can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// GPU memory the state holds: KV cache, logits and attention partials.
    pub fn gpu_bytes(&self) -> u64 {
        let cache: u64 = self
            .cache
            .iter()
            .map(|c| c.keys.size() + c.values.size())
            .sum();
        cache + self.logits.size() + self.partial.size()
    }

    /// How the next tokens are chosen on the GPU (greedy by default): the token
    /// [`prefill`](crate::PaliGemma::prefill) and [`step`](crate::PaliGemma::step) return, and
    /// what a chained step ([`StepInput::Chosen`](crate::StepInput)) reads, is the argmax of
    /// the logits, or with a temperature above 0 a draw from softmax(logits / T) restricted to
    /// top-k and top-p. A draw depends on the seed and the position alone, so a sequence
    /// samples the same tokens alone, batched, or chained.
    pub fn set_sampling(&mut self, opts: &SamplingOptions) -> Result<()> {
        opts.check().map_err(|e| Error::invalid(e.to_string()))?;
        self.sampling = (!opts.is_greedy()).then(|| opts.clone());
        Ok(())
    }

    /// Checks that `rows` more positions fit.
    pub(crate) fn check_room(&self, rows: usize) -> Result<()> {
        if self.len + rows > self.capacity {
            return Err(Error::invalid(format!(
                "the sequence would reach {} positions, over its capacity {}",
                self.len + rows,
                self.capacity
            )));
        }
        Ok(())
    }
}

/// The activations of a forward pass over up to `rows` rows, named as the layers use them.
pub(crate) struct Activations {
    pub rows: usize,
    /// Rows per MLP block: `[mlp_rows, I]` must fit one binding.
    pub mlp_rows: usize,
    /// `[rows, H]` the residual stream x.
    pub residual: wgpu::Buffer,
    /// `[rows, H]` norm(x): a block's input.
    pub normed: wgpu::Buffer,
    /// `[rows, heads * hd]`.
    pub queries: wgpu::Buffer,
    /// `[rows, heads * hd]` the attention's output.
    pub attended: wgpu::Buffer,
    /// `[rows, H]` a block's output before Gemma 2's post-norm.
    pub branch: wgpu::Buffer,
    /// `[mlp_rows, I]` the MLP's gate and up activations.
    pub gate: wgpu::Buffer,
    pub up: wgpu::Buffer,
    /// `[rows, kv_heads * hd]` each: a prompt's keys and values for a ring layer it
    /// overflows (Gemma 3, prompts longer than the window), attended over before the window's
    /// last rows go to the ring.
    pub overflow: Option<(wgpu::Buffer, wgpu::Buffer)>,
}

impl Activations {
    pub fn new(gpu: &Gpu, c: &TextConfig, rows: usize) -> Result<Activations> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let qd = c.num_attention_heads * c.head_dim;
        let mlp_rows = ((gpu.max_binding_bytes() / (i as u64 * 4)) as usize).clamp(1, rows);
        let f = |label: &str, n: usize| gpu.storage(label, (n * 4) as u64);
        Ok(Activations {
            rows,
            mlp_rows,
            residual: f("residual", rows * h)?,
            normed: f("normed", rows * h)?,
            queries: f("queries", rows * qd)?,
            attended: f("attended", rows * qd)?,
            branch: f("branch", rows * h)?,
            gate: f("gate", mlp_rows * i)?,
            up: f("up", mlp_rows * i)?,
            overflow: match (0..c.num_hidden_layers).any(|li| c.ring_slots(li, rows).is_some()) {
                true => {
                    let kvd = c.num_key_value_heads * c.head_dim;
                    Some((
                        f("prompt keys", rows * kvd)?,
                        f("prompt values", rows * kvd)?,
                    ))
                }
                false => None,
            },
        })
    }

    pub fn bytes(&self) -> u64 {
        let all = [
            &self.residual,
            &self.normed,
            &self.queries,
            &self.attended,
            &self.branch,
            &self.gate,
            &self.up,
        ];
        all.iter().map(|b| b.size()).sum()
    }
}

/// The buffers decode steps work in, for up to 16 sequences a submission: the
/// activations, each row's token and position, the new keys and values before they go to each
/// sequence's cache, the logits and the chosen tokens. Made once per caller that steps
/// (`PaliGemma::decode_scratch`), grown to the rows asked for.
pub struct DecodeScratch {
    pub(crate) activations: Option<Activations>,
    /// `u32 [rows]`: each row's token id, then its RoPE position.
    pub(crate) ids: wgpu::Buffer,
    pub(crate) positions: wgpu::Buffer,
    /// `[rows, kv_heads * hd]`: the new keys and values of rows of several sequences.
    pub(crate) new_keys: wgpu::Buffer,
    pub(crate) new_values: wgpu::Buffer,
    /// `[GEMV_BATCH, vocab]`: the logits of rows of several sequences (a single row's go
    /// straight to its state), made on the first step of several.
    pub(crate) logits: Option<wgpu::Buffer>,
    /// `u32`: the greedy choices of every group of a step; regrown with the batch.
    pub(crate) tokens: wgpu::Buffer,
    /// MAP_READ copies of `tokens`, used in turn: a step may be read while the next runs.
    pub(crate) readback: [wgpu::Buffer; 2],
    /// Submitted steps not yet read, oldest first: (read-back slot, states, last submission).
    pub(crate) pending: std::collections::VecDeque<(usize, usize, Option<wgpu::SubmissionIndex>)>,
    /// The read-back slot of the next step.
    pub(crate) next_slot: usize,
    /// The states of the last submitted step, in order: the ones a chained step must name.
    pub(crate) last_members: Vec<u64>,
    /// Per group of GEMV_BATCH states: its cached bind groups, and whose they are.
    groups: Vec<(Vec<u64>, DispatchCache)>,
    /// Microseconds the last step spent recording and submitting (its wait for the GPU
    /// excluded).
    pub(crate) host_us: f64,
}

impl DecodeScratch {
    /// Microseconds the last [`step`](crate::PaliGemma::step) spent on the host recording and
    /// submitting its work, the wait for the GPU excluded: the part a faster GPU cannot hide.
    pub fn last_host_us(&self) -> f64 {
        self.host_us
    }

    pub(crate) fn new(gpu: &Gpu, c: &TextConfig) -> Result<DecodeScratch> {
        let kv = (GEMV_BATCH * c.num_key_value_heads * c.head_dim * 4) as u64;
        let u32s = |label: &str| gpu.storage(label, (GEMV_BATCH * 4) as u64);
        Ok(DecodeScratch {
            activations: None,
            ids: u32s("step ids")?,
            positions: u32s("step positions")?,
            new_keys: gpu.storage("new keys", kv)?,
            new_values: gpu.storage("new values", kv)?,
            logits: None,
            tokens: u32s("step tokens")?,
            readback: read_backs(gpu, (GEMV_BATCH * 4) as u64)?,
            pending: Default::default(),
            next_slot: 0,
            last_members: Vec::new(),
            groups: Vec::new(),
            host_us: 0.0,
        })
    }

    /// GPU memory the scratch holds, in bytes.
    pub fn gpu_bytes(&self) -> u64 {
        let own = [
            &self.ids,
            &self.positions,
            &self.new_keys,
            &self.new_values,
            &self.tokens,
        ];
        let acts = self.activations.as_ref().map_or(0, Activations::bytes);
        let logits = self.logits.as_ref().map_or(0, wgpu::Buffer::size);
        acts + logits + own.iter().map(|b| b.size()).sum::<u64>()
    }

    /// Drops the cached bind groups, and with them the buffers of the last step's states they
    /// name: call when no step will come for a while (the scheduler does when it goes idle).
    pub fn release(&mut self) {
        self.groups.clear();
    }

    /// Makes room for a step of `n` states: activations for `min(n, GEMV_BATCH)` rows and a
    /// token slot per state.
    pub(crate) fn reserve(&mut self, gpu: &Gpu, c: &TextConfig, n: usize) -> Result<()> {
        let rows = n.min(GEMV_BATCH);
        if self.activations.as_ref().is_none_or(|a| a.rows < rows) {
            // Grown to a power of two so a batch that fills up regrows a few times only.
            let rows = rows.next_power_of_two().min(GEMV_BATCH);
            self.activations = Some(Activations::new(gpu, c, rows)?);
            self.release(); // the cached bind groups name the old buffers
        }
        if n > 1 && self.logits.is_none() {
            let bytes = (GEMV_BATCH * c.vocab_size * 4) as u64;
            self.logits = Some(gpu.storage("step logits", bytes)?);
        }
        if self.tokens.size() < (n * 4) as u64 {
            if !self.pending.is_empty() {
                return Err(Error::invalid(
                    "a step of more states than the one in flight: read that one first",
                ));
            }
            let bytes = (n.next_power_of_two() * 4) as u64;
            self.tokens = gpu.storage("step tokens", bytes)?;
            self.readback = read_backs(gpu, bytes)?;
            self.last_members.clear(); // the old choices are gone
            self.release();
        }
        // Groups past this step's last one would keep their states alive.
        self.groups.truncate(n.div_ceil(GEMV_BATCH));
        Ok(())
    }

    /// The cached bind groups of group `g`, whose members are the states `members`.
    pub(crate) fn group(&mut self, g: usize, members: Vec<u64>) -> &mut DispatchCache {
        if self.groups.len() <= g {
            self.groups.resize_with(g + 1, Default::default);
        }
        let (who, cache) = &mut self.groups[g];
        if *who != members {
            // Other states: the cached bind groups would keep the old ones' caches alive.
            (*who, *cache) = (members, DispatchCache::default());
        }
        cache
    }
}

/// The two read-back buffers of a [`DecodeScratch`].
fn read_backs(gpu: &Gpu, bytes: u64) -> Result<[wgpu::Buffer; 2]> {
    Ok([
        gpu.read_back_buffer("step tokens read-back", bytes)?,
        gpu.read_back_buffer("step tokens read-back", bytes)?,
    ])
}

/// A view of rows `start..start + rows` of a `[.., width]` buffer.
pub(crate) fn rows_of(buffer: &wgpu::Buffer, start: usize, rows: usize, width: usize) -> View<'_> {
    View::new(buffer, start + rows, width).rows(start, rows)
}
