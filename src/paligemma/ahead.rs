//! Decoding with the GPU running ahead of the host: a step's input is the previous step's
//! choice (argmax or draw), still on the GPU, so step n + 1 is submitted before step n is read
//! back and the GPU never idles while the host maps a buffer, detokenises and records. The
//! host learns of an `<eos>` one step late and discards that step.

use super::PaliGemma;
use crate::error::Result;
use crate::generation::Token;
use crate::model::decoder::StepInput;
use crate::model::state::{DecodeScratch, DecoderState};
use crate::sequence::Sequence;

impl PaliGemma {
    /// Submits a decode step for `states` without waiting for it: on `input`'s tokens, or on
    /// the last step's choices for the same states ([`StepInput::Chosen`]). At most two
    /// steps may be in flight; [`finish_step`](Self::finish_step) reads the oldest. On an error
    /// no state has advanced.
    pub async fn submit_step(
        &self,
        scratch: &mut DecodeScratch,
        states: &mut [&mut DecoderState],
        input: StepInput<'_>,
    ) -> Result<()> {
        self.text
            .submit_step(&self.gpu, scratch, states, input)
            .await
    }

    /// The choices of the oldest step in flight, one per state, once it has run.
    pub async fn finish_step(&self, scratch: &mut DecodeScratch) -> Result<Vec<u32>> {
        self.text.finish_step(&self.gpu, scratch).await
    }

    /// Decodes `seq` to its end from `token` (its first), calling `on_token` for each, with
    /// one step always in flight beyond the one being read: the path of
    /// [`generate_with`](Self::generate_with) when no logits are read back, the same tokens
    /// as [`advance`](Self::advance) one step at a time.
    pub(crate) async fn decode_ahead(
        &self,
        seq: &mut Sequence,
        mut token: Option<Token>,
        mut on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<()> {
        let mut scratch = self.decode_scratch()?;
        let chooser = self.chooser()?;
        let mut in_flight = 0;
        while let Some(Token { id, piece, .. }) = token.take() {
            if !on_token(id, &piece) {
                seq.cancel();
            }
            let Some(input) = seq.next_input() else {
                break;
            };
            let state = seq.state_mut();
            if in_flight == 0 {
                let tokens = StepInput::Tokens(&[input]);
                self.submit_step(&mut scratch, &mut [state], tokens).await?;
                in_flight = 1;
            }
            if seq.wants_two_more() {
                let chained = StepInput::Chosen;
                let state = seq.state_mut();
                self.submit_step(&mut scratch, &mut [state], chained)
                    .await?;
                in_flight += 1;
            }
            let chosen = self.finish_step(&mut scratch).await?[0];
            in_flight -= 1;
            seq.set_chosen(chosen);
            token = seq.choose_or_fail(&chooser).await;
        }
        // The step past the end: run, but its token is not part of the answer.
        for _ in 0..in_flight {
            self.finish_step(&mut scratch).await?;
            seq.state_mut().len -= 1;
        }
        Ok(())
    }
}
