//! What a model holds on the GPU, from its config alone: the figures a machine is sized by,
//! before any download (the README's sizing table, `bench --sizes`). They count what the
//! loader uploads, tensor by tensor, in the formats [`Precision::format_for`] gives; a test
//! holds them to the bytes a built model allocates.

use super::Precision;
use super::config::PaliGemmaConfig;
use crate::ops::WeightFormat;

/// GPU bytes of a model's parts, and of its KV cache per token of context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// SigLIP: patch and position embeddings, layers, final norm.
    pub vision: u64,
    pub projector: u64,
    /// The decoder: layers, embedding table (also the logits table when tied), norms and
    /// RoPE tables.
    pub decoder: u64,
    /// What a decode step reads of it: every layer's matrices and the logits table. With the
    /// bandwidth, the floor of the time per token.
    pub decode_reads: u64,
    /// Keys and values for one token (f32) of the layers that keep every position.
    pub kv_per_token: u64,
    /// The same for Gemma 3's sliding layers, whose caches stop growing at `window` rows.
    pub kv_sliding_per_token: u64,
    pub window: usize,
}

impl Footprint {
    /// All weights.
    pub fn weights(&self) -> u64 {
        self.vision + self.projector + self.decoder
    }

    /// The KV cache of a sequence of `tokens` positions.
    pub fn kv_bytes(&self, tokens: usize) -> u64 {
        let ring = match self.window {
            0 => tokens,
            w => tokens.min(w),
        };
        self.kv_per_token * tokens as u64 + self.kv_sliding_per_token * ring as u64
    }
}

impl PaliGemmaConfig {
    /// The GPU bytes of this model at `precision`, its checkpoint storing matrices as `stored`
    /// (bf16 for the published checkpoints).
    pub fn footprint(&self, precision: Precision, stored: WeightFormat) -> Footprint {
        let matrix = |rows: usize, cols: usize, quantizable: bool| {
            let f = precision.format_for(stored, cols, quantizable);
            (rows * (f.row_bytes(cols) + f.row_scale_bytes(cols))) as u64
        };
        let f32s = |n: usize| (n * 4) as u64;
        let (v, t) = (&self.vision, &self.text);
        let (d, i) = (v.hidden_size, v.intermediate_size);
        let linear = |rows, cols| matrix(rows, cols, false) + f32s(rows);
        let vision_layer = 4 * linear(d, d) + linear(i, d) + linear(d, i) + f32s(4 * d);
        let (p, c, n) = (v.patch_size, v.num_channels, v.num_patches());
        let vision = f32s(d * c * p * p + n * d + d)
            + v.num_hidden_layers as u64 * vision_layer
            + f32s(2 * d);
        let projector = match &self.image_tokens {
            None => linear(t.hidden_size, d),
            Some(_) => matrix(t.hidden_size, d, false) + f32s(d),
        };

        let (h, hd) = (t.hidden_size, t.head_dim);
        let (qd, kvd) = (t.num_attention_heads * hd, t.num_key_value_heads * hd);
        let norms = if t.decoder.post_norms() { 4 } else { 2 };
        let qk_norms = if t.qk_norm { f32s(2 * hd) } else { 0 };
        let text = |rows, cols| matrix(rows, cols, true);
        let layer_matrices = text(qd, h)
            + 2 * text(kvd, h)
            + text(h, qd)
            + 2 * text(t.intermediate_size, h)
            + text(h, t.intermediate_size);
        let layers = t.num_hidden_layers as u64;
        let table = text(t.vocab_size, h);
        let decode_reads = layers * layer_matrices + table;
        let untied = if t.tie_word_embeddings { 0 } else { table };
        let tables = if t.sliding_rope.is_some() { 2 } else { 1 };
        let rope = tables * f32s(2 * (t.max_position_embeddings + 1) * hd / 2);
        let norm_bytes = layers * (f32s(norms * h) + qk_norms);
        let decoder = decode_reads + untied + norm_bytes + f32s(h) + rope;
        // Gemma 3's sliding layers keep a ring of the window's rows (see `ring_slots`).
        let ring_window = t.ring_window().unwrap_or(0);
        let sliding = t.sliding_layers.iter().filter(|&&s| s).count();
        let growing = t.num_hidden_layers - if ring_window > 0 { sliding } else { 0 };
        Footprint {
            vision,
            projector,
            decoder,
            decode_reads,
            kv_per_token: f32s(growing * 2 * kvd),
            kv_sliding_per_token: f32s((t.num_hidden_layers - growing) * 2 * kvd),
            window: ring_window,
        }
    }
}
