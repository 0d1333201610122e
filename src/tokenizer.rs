//! PaliGemma's prompt tokenization and output parsing, mirroring transformers'
//! `PaliGemmaProcessor`: the model input is the single string
//! `"<image>" * N + "<bos>" + prompt + "\n"`, tokenized without any extra special tokens; outputs
//! use `<locYYYY>` tokens for boxes, parsed here into [`Detection`]s.

use std::path::Path;

use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

/// Placeholder token whose embedding rows are replaced by the projected image features.
pub const IMAGE_TOKEN: &str = "<image>";
/// Gemma's beginning-of-sequence token; PaliGemma puts it between image and text.
pub const BOS_TOKEN: &str = "<bos>";
/// Gemma's end-of-sequence token; generation stops on it.
pub const EOS_TOKEN: &str = "<eos>";

/// A Hugging Face tokenizer plus the ids PaliGemma prompts need, looked up once so that a
/// tokenizer lacking them is rejected when loaded rather than mid-generation.
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    image_id: u32,
    bos_id: u32,
    eos_id: u32,
}

impl PromptTokenizer {
    /// Loads a `tokenizer.json` (as shipped with PaliGemma checkpoints).
    pub fn from_file(path: &Path) -> Result<Self> {
        let err = |message: String| Error::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let tokenizer = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        Self::new(tokenizer).map_err(|e| match e {
            Error::Invalid(message) => err(message),
            other => other,
        })
    }

    /// Wraps an already built tokenizer (e.g. Gemma's after [`extend_gemma_vocabulary`]).
    /// Fails with a message naming the token if `<image>`, `<bos>` or `<eos>` is missing.
    pub fn new(tokenizer: Tokenizer) -> Result<Self> {
        let id = |token: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| {
                Error::Invalid(format!(
                    "tokenizer has no `{token}` token (a PaliGemma tokenizer has `<bos>`, \
                     `<eos>` and `<image>`; Gemma's can be extended with extend_gemma_vocabulary)"
                ))
            })
        };
        Ok(Self {
            image_id: id(IMAGE_TOKEN)?,
            bos_id: id(BOS_TOKEN)?,
            eos_id: id(EOS_TOKEN)?,
            tokenizer,
        })
    }

    /// Token ids of the full PaliGemma prompt: `num_image_tokens` `<image>` ids, `<bos>`, then
    /// `prompt` followed by `"\n"` (the separator the model was trained with). Checks that the
    /// tokenizer really produced that prefix, i.e. that `<image>` and `<bos>` are registered as
    /// added tokens and are not split into pieces.
    pub fn prompt_ids(&self, prompt: &str, num_image_tokens: usize) -> Result<Vec<u32>> {
        let text = format!(
            "{}{BOS_TOKEN}{prompt}\n",
            IMAGE_TOKEN.repeat(num_image_tokens)
        );
        let ids = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Invalid(format!("cannot tokenize prompt {prompt:?}: {e}")))?
            .get_ids()
            .to_vec();
        let images = ids.iter().take_while(|&&id| id == self.image_id).count();
        if images != num_image_tokens || ids.get(images) != Some(&self.bos_id) {
            return Err(Error::Invalid(format!(
                "prompt tokenized to {images} `<image>` ids (id {}) then {:?}, expected \
                 {num_image_tokens} then `<bos>` (id {}): the tokenizer must treat `<image>` and \
                 `<bos>` as added tokens",
                self.image_id,
                ids.get(images),
                self.bos_id
            )));
        }
        Ok(ids)
    }

    /// Text of `ids`. PaliGemma's `<loc>`/`<seg>` tokens are ordinary added tokens, so they stay
    /// in the text either way; `skip_special` drops `<bos>`, `<eos>`, `<pad>`, `<image>`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special)
            .map_err(|e| Error::Invalid(format!("cannot decode token ids: {e}")))
    }

    /// Id of a token given its text, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Text of one token id (as stored in the vocabulary, e.g. `▁en`), if it exists.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// Id of `<image>`, the placeholder replaced by image features.
    pub fn image_token_id(&self) -> u32 {
        self.image_id
    }

    /// Id of `<bos>`.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// Id of `<eos>`, where generation stops.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The wrapped tokenizer, for anything not covered here.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// Extends Gemma's 256000-token vocabulary the way PaliGemma's tokenizer is: `<loc0000>` ..
/// `<loc1023>` (box coordinates) and `<seg000>` .. `<seg127>` (mask codes) as ordinary added
/// tokens, then `<image>` as a special token, so they get consecutive ids after the base
/// vocabulary (256000, 257024 and 257152 for Gemma). All of them are added tokens, so each is
/// split out of the input as one piece; `<image>` is special so decoding can skip it.
/// Fails if the ids do not come out consecutive (e.g. some of the tokens already existed).
pub fn extend_gemma_vocabulary(tokenizer: &mut Tokenizer) -> Result<()> {
    let base = tokenizer.get_vocab_size(true) as u32;
    let locs = (0..1024).map(|i| format!("<loc{i:04}>"));
    let segs = (0..128).map(|i| format!("<seg{i:03}>"));
    let added = locs.chain(segs).map(|t| AddedToken::from(t, false));
    let fail = |e: tokenizers::Error| Error::Invalid(format!("cannot extend vocabulary: {e}"));
    tokenizer.add_tokens(added).map_err(fail)?;
    tokenizer
        .add_special_tokens([AddedToken::from(IMAGE_TOKEN, true)])
        .map_err(fail)?;
    for (token, want) in [("<loc0000>", 0), ("<seg000>", 1024), (IMAGE_TOKEN, 1152)] {
        let got = tokenizer.token_to_id(token);
        if got != Some(base + want) {
            return Err(Error::Invalid(format!(
                "`{token}` got id {got:?}, expected {} (base vocabulary {base} + {want})",
                base + want
            )));
        }
    }
    Ok(())
}

/// One box from PaliGemma's `detect` output, in pixels of the original image.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub label: String,
    pub y_min: f32,
    pub x_min: f32,
    pub y_max: f32,
    pub x_max: f32,
}

/// Parses decoded detection text such as
/// `<loc0100><loc0200><loc0300><loc0400> cat ; <loc0010><loc0020><loc0500><loc0600> dog`.
/// Each `;`-separated entry starts with four `<locYYYY>` tokens (y_min, x_min, y_max, x_max on a
/// 0..1024 grid over the model's square input), scaled here by `height`/`width`; any `<segNNN>`
/// tokens (segmentation output) before the label are skipped. Entries that do not start with
/// four location tokens are ignored, so stray text never panics.
pub fn parse_detections(text: &str, width: u32, height: u32) -> Vec<Detection> {
    text.split(';')
        .filter_map(|entry| {
            let mut rest = entry.trim_start();
            let mut loc = [0.0f32; 4];
            for v in &mut loc {
                let (n, tail) = take_token(rest, "<loc", 4)?;
                *v = n as f32 / 1024.0;
                rest = tail;
            }
            while let Some((_, tail)) = take_token(rest, "<seg", 3) {
                rest = tail;
            }
            let (w, h) = (width as f32, height as f32);
            Some(Detection {
                label: rest.trim().to_string(),
                y_min: loc[0] * h,
                x_min: loc[1] * w,
                y_max: loc[2] * h,
                x_max: loc[3] * w,
            })
        })
        .collect()
}

/// Parses `{prefix}` + `digits` decimal digits + `>` at the start of `s`.
fn take_token<'a>(s: &'a str, prefix: &str, digits: usize) -> Option<(u32, &'a str)> {
    let rest = s.strip_prefix(prefix)?;
    let num = rest
        .get(..digits)
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))?;
    Some((num.parse().ok()?, rest[digits..].strip_prefix('>')?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_boxes_and_labels() {
        let d = parse_detections(
            "<loc0100><loc0200><loc0300><loc0400> cat ; <loc0000><loc0512><loc1023><loc1024>hot dog",
            2048,
            1024,
        );
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[0],
            Detection {
                label: "cat".into(),
                y_min: 100.0,
                x_min: 400.0,
                y_max: 300.0,
                x_max: 800.0
            }
        );
        assert_eq!(d[1].label, "hot dog");
        assert_eq!(
            (d[1].y_min, d[1].x_min, d[1].y_max, d[1].x_max),
            (0.0, 1024.0, 1023.0, 2048.0)
        );
    }

    #[test]
    fn skips_segmentation_tokens_and_junk() {
        let d = parse_detections(
            "<loc0010><loc0020><loc0030><loc0040><seg001><seg127> car; no box; <loc12><loc0001>; \
             <loc0001><loc0002><loc0003>",
            1024,
            1024,
        );
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].label, "car");
        assert_eq!(d[0].x_max, 40.0);
        assert!(parse_detections("", 10, 10).is_empty());
        assert!(parse_detections("<loc+001><loc0001><loc0001><loc0001>x", 10, 10).is_empty());
        assert!(parse_detections("<locé001>", 10, 10).is_empty());
    }

    #[test]
    fn empty_label_is_kept() {
        let d = parse_detections("<loc0000><loc0000><loc1024><loc1024>", 7, 5);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].label.as_str(), d[0].y_max, d[0].x_max),
            ("", 5.0, 7.0)
        );
    }
}
