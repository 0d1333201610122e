//! Log-probabilities of chosen tokens and their likeliest alternatives (OpenAI's `logprobs` and
//! `top_logprobs`): the log-softmax of the logits the token was chosen from, before temperature,
//! top-p and top-k (the model's own distribution, as vLLM and llama.cpp's server report it).

use crate::tokenizer::PromptTokenizer;

/// One token under the model's distribution.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TokenLogprob {
    pub id: u32,
    /// The vocabulary's text of the token (`▁` as a space, a byte token as its byte, lossily).
    pub token: String,
    /// The token's bytes (a byte token's one byte; several make one character).
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// A chosen token and the `top` likeliest tokens at its step, most likely first.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Logprobs {
    #[serde(flatten)]
    pub chosen: TokenLogprob,
    #[serde(rename = "top_logprobs")]
    pub top: Vec<TokenLogprob>,
}

/// `chosen`'s log-probability under `logits` and the `top` likeliest ids'. The log-sum-exp is
/// summed in f64, so a 262144-token vocabulary loses nothing.
pub(crate) fn logprobs(
    logits: &[f32],
    chosen: u32,
    top: usize,
    tokenizer: &PromptTokenizer,
) -> Logprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
    let log_z = f64::from(max) + sum.ln();
    let entry = |id: u32| {
        let bytes = token_bytes(tokenizer, id);
        TokenLogprob {
            id,
            token: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
            logprob: (f64::from(logits[id as usize]) - log_z) as f32,
        }
    };
    let top = top.min(logits.len());
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let likelier = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    if top > 0 && top < ids.len() {
        ids.select_nth_unstable_by(top - 1, likelier);
    }
    ids.truncate(top);
    ids.sort_by(likelier);
    Logprobs {
        chosen: entry(chosen),
        top: ids.into_iter().map(entry).collect(),
    }
}

/// A token's bytes as SentencePiece means them: `▁` is a space, `<0xNN>` the byte NN.
fn token_bytes(tokenizer: &PromptTokenizer, id: u32) -> Vec<u8> {
    let text = tokenizer.token_text(id).unwrap_or_default();
    let byte = text
        .strip_prefix("<0x")
        .and_then(|t| t.strip_suffix('>'))
        .filter(|h| h.len() == 2)
        .and_then(|h| u8::from_str_radix(h, 16).ok());
    match byte {
        Some(b) => vec![b],
        None => text.replace('▁', " ").into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn tokenizer() -> PromptTokenizer {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/mqa/model/tokenizer.json");
        PromptTokenizer::from_file(&path).unwrap()
    }

    /// Against a plain f64 log-softmax and a full sort, on seeded random logits of awkward and
    /// real vocabulary sizes.
    #[test]
    fn logprobs_equal_a_sorted_f64_log_softmax() {
        let tok = tokenizer();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (vocab, top) in [(1, 0), (5, 5), (1600, 3), (1600, 20), (257_216, 20)] {
            let logits: Vec<f32> = (0..vocab).map(|_| rng.random_range(-30.0..30.0)).collect();
            let chosen = rng.random_range(0..vocab as u32);
            let got = logprobs(&logits, chosen, top, &tok);
            let log_z = logits.iter().map(|&x| f64::from(x).exp()).sum::<f64>().ln();
            let want = |id: u32| (f64::from(logits[id as usize]) - log_z) as f32;
            // Stated tolerance: 1e-5 absolute (f32 rounding of values up to ~60).
            assert!((got.chosen.logprob - want(chosen)).abs() < 1e-5, "{vocab}");
            let mut sorted: Vec<u32> = (0..vocab as u32).collect();
            sorted.sort_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]));
            let ids: Vec<u32> = got.top.iter().map(|t| t.id).collect();
            assert_eq!(ids, sorted[..top.min(vocab)], "{vocab}");
            for t in &got.top {
                assert!((t.logprob - want(t.id)).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn token_text_is_the_vocabulary_entry_with_spaces_and_bytes() {
        let tok = tokenizer();
        let logits = vec![0.0; tok.inner().get_vocab_size(true)];
        for id in 0..logits.len() as u32 {
            let text = tok.token_text(id).unwrap();
            let got = logprobs(&logits, id, 0, &tok).chosen;
            if text.starts_with("<0x") && text.len() == 6 {
                assert_eq!(got.bytes.len(), 1, "{text}");
            } else {
                assert_eq!(got.token, text.replace('▁', " "));
            }
        }
    }
}
