//! The decoder's forward pass, in one place: the layer loop, and the three ways it is run.
//!
//! - [`prefill`](TextModel::prefill): the prompt (image rows first) as one span of many rows,
//!   one bidirectional block, into an empty [`DecoderState`].
//! - [`step`](TextModel::step): one new token for each of any number of states, a span of one
//!   row each, [`GEMV_BATCH`] rows a submission (decoding one sequence is a batch of one).
//! - [`all_logits`](TextModel::all_logits): a whole sequence in one pass, the oracle that
//!   KV-cache decoding must reproduce.

use super::gemma::TextModel;
use super::pass::{Gathered, Pass, Span};
use super::state::{Activations, DecodeScratch, DecoderState};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recorder};
use crate::ops::View;
use crate::ops::activation::softcap;
use crate::ops::argmax::argmax;
use crate::ops::attention::Blocks;
use crate::ops::gather::gather;
use crate::ops::linear::{GEMV_BATCH, logits};
use crate::ops::sample::sample;
use crate::sampling::SamplingOptions;

/// What a decode step's rows read as their input token.
#[derive(Clone, Copy, Debug)]
pub enum StepInput<'a> {
    /// One token per state, from the host.
    Tokens(&'a [u32]),
    /// The choices of the previous step over the same states (argmax or draw, as each state's
    /// sampling says), read on the GPU: the step can be submitted before that one is read
    /// back, so the GPU never waits for the host between steps (the host learns of an `<eos>`
    /// a step late and discards that step).
    Chosen,
}

/// An image's rows entering the decoder: `rows` rows of `features` (`[rows, H]`) replace the
/// embeddings of the prompt from row `at` on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ImageRows<'a> {
    pub features: &'a wgpu::Buffer,
    pub rows: usize,
    pub at: usize,
}

/// How one row's next token is chosen: its state's sampling, and the position the token will
/// hold (a draw's counter in the seed's stream).
struct Choice<'a> {
    sampling: Option<&'a SamplingOptions>,
    position: u32,
}

impl Choice<'_> {
    /// The choice of state `s`'s token after its first `len` positions.
    fn of(s: &DecoderState, len: usize) -> Choice<'_> {
        Choice {
            sampling: s.sampling.as_ref(),
            position: len as u32,
        }
    }
}

/// What happens between two layers of a pass: the caller's choice, not the math's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BetweenLayers {
    /// Nothing: the pass is one submission (a decode step: short, and cached whole).
    Nothing,
    /// Submit what is recorded and return to a caller's frame loop once (a prefill: no
    /// watchdog fires on a long prompt, and a game's frames go to the queue between layers).
    FlushAndYield,
}

impl TextModel {
    /// Records the pass `p` over the token ids in `ids` (`u32 [rows]`), the `images`' rows
    /// replacing their embeddings; leaves the final normed rows in `p.normed()` and each row's
    /// K and V in its cache.
    async fn forward(
        &self,
        rec: &mut Recorder<'_>,
        p: &Pass<'_>,
        ids: &wgpu::Buffer,
        images: &[ImageRows<'_>],
        between: BetweenLayers,
    ) -> Result<()> {
        gather(rec, ids, &self.embed_tokens, self.embed_scale, p.residual())?;
        let row_bytes = (self.cfg.hidden_size * 4) as u64;
        for im in images {
            // The image features enter as they are (PaliGemma's transformers divides them by
            // sqrt(H) and the embedding scale multiplies them back; Gemma 3 scales neither).
            let (at, bytes) = (im.at as u64 * row_bytes, im.rows as u64 * row_bytes);
            rec.copy(im.features, 0, p.residual().buffer, at, bytes);
        }
        for (li, layer) in self.layers.iter().enumerate() {
            layer.forward(rec, p, li)?;
            if between == BetweenLayers::FlushAndYield {
                rec.flush(&format!("decoder layer {li}"))?;
                rec.gpu().between_layers().await;
            }
        }
        self.norm.forward(rec, p.residual(), p.normed())
    }

    /// Records the logits of the rows `h` into `out` (soft-capped for Gemma 2) and each row's
    /// next token, chosen as `choices[r]` says, into `tokens[first + r]`.
    fn record_logits(
        &self,
        rec: &mut Recorder,
        h: View,
        out: View,
        choices: &[Choice],
        tokens: &wgpu::Buffer,
        first: usize,
    ) -> Result<()> {
        logits(rec, h, self.output_table(), out)?;
        if let Some(cap) = self.cfg.final_logit_softcapping {
            softcap(rec, out, cap)?;
        }
        for (r, c) in choices.iter().enumerate() {
            match c.sampling {
                None => argmax(rec, out.row(r), tokens, first + r)?,
                Some(o) => sample(rec, out.row(r), o, c.position, tokens, first + r)?,
            }
        }
        Ok(())
    }

    pub(crate) fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::invalid("no tokens to process"));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// A pass over one span: `rows` new positions of `s` from its current length.
    fn span_pass<'a>(&'a self, s: &'a DecoderState, acts: &'a Activations) -> Pass<'a> {
        let span = Span {
            first_row: 0,
            rows: acts.rows,
            cache: &s.cache,
            start: s.len,
            prefix_len: s.prefix_len,
            blocks: s.blocks,
            partial: &s.partial,
        };
        Pass {
            cfg: &self.cfg,
            rope: &self.rope,
            sliding_rope: self.sliding_rope.as_ref(),
            rows: acts.rows,
            spans: vec![span],
            gathered: None,
            acts,
        }
    }

    /// The mask of a prompt of `t` rows holding `images`.
    fn prompt_mask(&self, t: usize, images: &[ImageRows]) -> Result<(usize, Blocks)> {
        let ranges: Vec<_> = images.iter().map(|im| im.at..im.at + im.rows).collect();
        self.cfg.prompt_mask(t, &ranges)
    }

    /// Runs the prompt `ids` (its image placeholders replaced by the `images`' rows) into the
    /// empty state `s`. Leaves the last position's logits in the state and returns the next
    /// token, chosen as the state's sampling says (greedy by default). The prompt's
    /// activations live for this call only.
    pub(crate) async fn prefill(
        &self,
        gpu: &Gpu,
        s: &mut DecoderState,
        ids: &[u32],
        images: &[ImageRows<'_>],
    ) -> Result<u32> {
        self.check_ids(ids)?;
        if s.len != 0 {
            return Err(Error::invalid(
                "prefill on a state that already holds tokens",
            ));
        }
        let t = ids.len();
        let (prefix_len, blocks) = self.prompt_mask(t, images)?;
        s.check_room(t)?;
        let id_buffer = gpu.storage_init("prompt ids", bytemuck::cast_slice(ids))?;
        let token = gpu.storage("next token", 4)?;
        let readback = gpu.read_back_buffer("next token read-back", 4)?;
        let acts = Activations::new(gpu, &self.cfg, t)?;
        (s.prefix_len, s.blocks) = (prefix_len, blocks);
        let mut rec = gpu.recorder();
        let p = self.span_pass(s, &acts);
        let pass = self.forward(
            &mut rec,
            &p,
            &id_buffer,
            images,
            BetweenLayers::FlushAndYield,
        );
        let recorded = pass.await.and_then(|()| {
            let out = View::new(&s.logits, 1, self.cfg.vocab_size);
            let choice = [Choice::of(s, t)];
            self.record_logits(&mut rec, p.normed().row(t - 1), out, &choice, &token, 0)?;
            rec.copy(&token, 0, &readback, 0, 4);
            rec.submit("the prefill")
        });
        if let Err(e) = recorded {
            (s.prefix_len, s.blocks) = (0, Blocks::default());
            return Err(e);
        }
        s.len = t;
        Ok(gpu.read_mapped(&readback, 1, None).await?[0])
    }

    /// One decode step for any number of states: `tokens[i]` is appended to `states[i]`;
    /// returns each one's next token (as its sampling says) and leaves its logits in it. Every
    /// [`GEMV_BATCH`] states read the weights once. A row's sums are formed the same way
    /// whatever the batch, so the logits are bit-identical alone or batched on lavapipe
    /// (tested); a driver that contracts multiply-adds differently in the one-row and many-row
    /// pipelines could differ in the last bit.
    ///
    /// On an error no state's length has advanced. (With more than 16 states, groups submitted
    /// before the failure have written their cache row and logits; the next step writes the
    /// same row again.)
    pub(crate) async fn step(
        &self,
        gpu: &Gpu,
        b: &mut DecodeScratch,
        states: &mut [&mut DecoderState],
        tokens: &[u32],
    ) -> Result<Vec<u32>> {
        if states.is_empty() && tokens.is_empty() {
            return Ok(Vec::new());
        }
        if !b.pending.is_empty() {
            return Err(Error::invalid(
                "a step while others are in flight: read them first (finish_step)",
            ));
        }
        self.submit_step(gpu, b, states, StepInput::Tokens(tokens))
            .await?;
        self.finish_step(gpu, b).await
    }

    /// Records and submits a decode step without waiting for it (see [`StepInput`]); at most
    /// two may be in flight. On an error no state's length has advanced.
    pub(crate) async fn submit_step(
        &self,
        gpu: &Gpu,
        b: &mut DecodeScratch,
        states: &mut [&mut DecoderState],
        input: StepInput<'_>,
    ) -> Result<()> {
        let members: Vec<u64> = states.iter().map(|s| s.id).collect();
        match input {
            StepInput::Tokens(tokens) => self.check_step(states, tokens)?,
            StepInput::Chosen => {
                if members.is_empty() || members != b.last_members {
                    return Err(Error::invalid(
                        "a chained step continues the last step's states, in its order",
                    ));
                }
                self.check_room(states)?;
            }
        }
        if b.pending.len() >= b.readback.len() {
            return Err(Error::invalid(
                "two decode steps are in flight already: read one first (finish_step)",
            ));
        }
        let recording = web_time::Instant::now();
        let n = states.len();
        b.reserve(gpu, &self.cfg, n)?;
        let slot = b.next_slot;
        let mut last = None;
        for (g, group) in states.chunks(GEMV_BATCH).enumerate() {
            let ids = match input {
                StepInput::Tokens(tokens) => Some(&tokens[g * GEMV_BATCH..][..group.len()]),
                StepInput::Chosen => None,
            };
            last = self.step_group(gpu, b, g, group, ids, slot).await?;
        }
        b.host_us = recording.elapsed().as_secs_f64() * 1e6;
        // Its read waits for its last submission alone, not for a step submitted after it.
        b.pending.push_back((slot, n, last));
        b.next_slot = (slot + 1) % b.readback.len();
        b.last_members = members;
        for s in states.iter_mut() {
            s.len += 1;
        }
        Ok(())
    }

    /// Waits for the oldest step in flight and returns its choices, one per state.
    pub(crate) async fn finish_step(&self, gpu: &Gpu, b: &mut DecodeScratch) -> Result<Vec<u32>> {
        let (slot, n, index) = b
            .pending
            .pop_front()
            .ok_or_else(|| Error::invalid("no decode step is in flight"))?;
        gpu.read_mapped(&b.readback[slot], n, index).await
    }

    fn check_step(&self, states: &[&mut DecoderState], tokens: &[u32]) -> Result<()> {
        if states.len() != tokens.len() {
            return Err(Error::invalid(format!(
                "a step takes a token per state: {} states but {} tokens",
                states.len(),
                tokens.len()
            )));
        }
        self.check_ids(tokens)?;
        self.check_room(states)
    }

    fn check_room(&self, states: &[&mut DecoderState]) -> Result<()> {
        for s in states {
            if s.len == 0 || s.len >= s.capacity {
                return Err(Error::invalid(format!(
                    "a decode step needs prefilled states with room for a token; one holds \
                     {} of {} positions",
                    s.len, s.capacity
                )));
            }
        }
        Ok(())
    }

    /// Records and submits the step of group `g` (at most GEMV_BATCH states) on `ids`, or on
    /// the group's last choices (`None`), its choices into
    /// `b.tokens[g * GEMV_BATCH..]` and their copy into read-back slot `slot`.
    async fn step_group(
        &self,
        gpu: &Gpu,
        b: &mut DecodeScratch,
        g: usize,
        group: &[&mut DecoderState],
        ids: Option<&[u32]>,
        slot: usize,
    ) -> Result<Option<wgpu::SubmissionIndex>> {
        let (rows, vocab) = (group.len(), self.cfg.vocab_size);
        let base = self.cfg.first_position();
        let first = g * GEMV_BATCH;
        let positions: Vec<u32> = group.iter().map(|s| (s.len + base) as u32).collect();
        gpu.write(&b.positions, 0, bytemuck::cast_slice(&positions))?;
        let mut rec = gpu.recorder();
        match ids {
            Some(ids) => gpu.write(&b.ids, 0, bytemuck::cast_slice(ids))?,
            // The GPU's own choices, never seen by the host: the step can run ahead.
            None => rec.copy(&b.tokens, (first * 4) as u64, &b.ids, 0, (rows * 4) as u64),
        }
        let acts = b.activations.as_ref().expect("reserved");
        let spans = group.iter().enumerate().map(|(i, s)| Span {
            first_row: i,
            rows: 1,
            cache: &s.cache,
            start: s.len,
            prefix_len: s.prefix_len,
            blocks: s.blocks,
            partial: &s.partial,
        });
        let p = Pass {
            cfg: &self.cfg,
            rope: &self.rope,
            sliding_rope: self.sliding_rope.as_ref(),
            rows,
            spans: spans.collect(),
            gathered: (rows > 1).then_some(Gathered {
                keys: &b.new_keys,
                values: &b.new_values,
                positions: &b.positions,
            }),
            acts,
        };
        self.forward(&mut rec, &p, &b.ids, &[], BetweenLayers::Nothing)
            .await?;
        let choices: Vec<_> = group.iter().map(|s| Choice::of(s, s.len + 1)).collect();
        if let [s] = group {
            // One row: its logits straight into the state.
            let out = View::new(&s.logits, 1, vocab);
            self.record_logits(&mut rec, p.normed(), out, &choices, &b.tokens, first)?;
        } else {
            let logits = b.logits.as_ref().expect("reserved");
            let out = View::new(logits, rows, vocab);
            self.record_logits(&mut rec, p.normed(), out, &choices, &b.tokens, first)?;
            // Each state keeps the logits its token was chosen from, as alone.
            for (i, s) in group.iter().enumerate() {
                let bytes = (vocab * 4) as u64;
                rec.copy(logits, i as u64 * bytes, &s.logits, 0, bytes);
            }
        }
        let at = (first * 4) as u64;
        rec.copy(&b.tokens, at, &b.readback[slot], at, (rows * 4) as u64);
        let members = group.iter().map(|s| s.id).collect();
        rec.submit_cached("a decode step", b.group(g, members))
    }

    /// Logits at every row of a whole sequence computed in one pass, the mask that of a prompt
    /// of `prompt_len` rows holding `images` followed by causal rows: the reference that
    /// KV-cache decoding must reproduce, and transformers' prefill logits when `prompt_len ==
    /// ids.len()`. `[ids.len(), vocab]`.
    pub(crate) async fn all_logits(
        &self,
        gpu: &Gpu,
        ids: &[u32],
        images: &[ImageRows<'_>],
        prompt_len: usize,
    ) -> Result<Vec<f32>> {
        self.check_ids(ids)?;
        let t = ids.len();
        let mut s = DecoderState::new(gpu, &self.cfg, t)?;
        (s.prefix_len, s.blocks) = self.prompt_mask(prompt_len.min(t), images)?;
        let acts = Activations::new(gpu, &self.cfg, t)?;
        let id_buffer = gpu.storage_init("ids", bytemuck::cast_slice(ids))?;
        let mut rec = gpu.recorder();
        let p = self.span_pass(&s, &acts);
        self.forward(
            &mut rec,
            &p,
            &id_buffer,
            images,
            BetweenLayers::FlushAndYield,
        )
        .await?;
        rec.submit("a full forward pass")?;
        let (h, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        // In blocks of rows whose logits fit one binding.
        let block = ((gpu.max_binding_bytes() / (v as u64 * 4)) as usize).clamp(1, t);
        let out = gpu.storage("all logits", (block * v * 4) as u64)?;
        let hidden = View::new(&acts.normed, t, h);
        let mut all = Vec::with_capacity(t * v);
        for r0 in (0..t).step_by(block) {
            let n = block.min(t - r0);
            let y = View::new(&out, n, v);
            let mut rec = gpu.recorder();
            logits(&mut rec, hidden.rows(r0, n), self.output_table(), y)?;
            if let Some(cap) = self.cfg.final_logit_softcapping {
                softcap(&mut rec, y, cap)?;
            }
            rec.submit("logits of every row")?;
            all.extend(gpu.read_f32_async(&out, 0, n * v).await?);
        }
        Ok(all)
    }
}
