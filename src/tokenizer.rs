//! PaliGemma's prompt tokenization, mirroring transformers' `PaliGemmaProcessor`: the model
//! input is the single string `"<image>" * N + "<bos>" + prompt + "\n"`, tokenized without any
//! extra special tokens. Answers with `<locYYYY>` boxes are parsed by [`crate::detection`].

use std::path::Path;

use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

/// Placeholder token whose embedding rows are replaced by the projected image features.
pub const IMAGE_TOKEN: &str = "<image>";
/// Gemma 3's placeholder of an image row (its `<start_of_image>` marks where an image goes).
pub const SOFT_IMAGE_TOKEN: &str = "<image_soft_token>";
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
        Self::parsed(Tokenizer::from_file(path), path)
    }

    /// [`from_file`](Self::from_file) on the file's bytes (fetched by a web page, say);
    /// `origin` names them in errors.
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Self> {
        Self::parsed(Tokenizer::from_bytes(bytes), origin)
    }

    /// [`new`](Self::new) on a parsed file, every error naming `origin`.
    fn parsed(parsed: tokenizers::Result<Tokenizer>, origin: &Path) -> Result<Self> {
        let err = |message: String| Error::Tokenizer {
            path: origin.to_path_buf(),
            message,
        };
        let tokenizer = parsed.map_err(|e| err(e.to_string()))?;
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

    /// The same tokenizer with `token` as the image placeholder (Gemma 3's
    /// [`SOFT_IMAGE_TOKEN`]); fails naming it when the tokenizer lacks it.
    pub fn with_image_token(self, token: &str) -> Result<Self> {
        let image_id = self
            .tokenizer
            .token_to_id(token)
            .ok_or_else(|| Error::Invalid(format!("tokenizer has no `{token}` token")))?;
        Ok(Self { image_id, ..self })
    }

    /// Token ids of the full PaliGemma prompt: `num_image_tokens` `<image>` ids, `<bos>`, then
    /// `prompt` followed by `"\n"` (the separator the model was trained with). Checks that the
    /// tokenizer really produced that prefix, i.e. that `<image>` and `<bos>` are registered as
    /// added tokens and are not split into pieces. An empty (or blank) prompt is refused.
    pub fn prompt_ids(&self, prompt: &str, num_image_tokens: usize) -> Result<Vec<u32>> {
        check_not_blank(prompt)?;
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
        // And no `<image>` in the prompt's own text.
        check_image_prefix(&ids, num_image_tokens, self.image_id)?;
        Ok(ids)
    }

    /// The ids of `text` as it is, special tokens written in it included and none added (what
    /// a chat template's output is tokenized with).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, false);
        let enc = enc.map_err(|e| Error::Invalid(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
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

/// One rule for every front end (the server, the command line, Python, the web): a blank
/// prompt is refused.
pub(crate) fn check_not_blank(prompt: &str) -> Result<()> {
    if prompt.trim().is_empty() {
        return Err(Error::Invalid(
            "the prompt is empty: give a task such as \"caption en\" or \"detect cat\"".into(),
        ));
    }
    Ok(())
}

/// The one check of a prompt's image tokens: `ids` must start with exactly `n` image tokens
/// (`image_id`), the rows the image's features replace, and hold no other.
pub(crate) fn check_image_prefix(ids: &[u32], n: usize, image_id: u32) -> Result<()> {
    let leading = ids.iter().take_while(|&&t| t == image_id).count();
    let total = ids.iter().filter(|&&t| t == image_id).count();
    if leading != n || total != n {
        return Err(Error::Invalid(format!(
            "the prompt must start with exactly the {n} image tokens (id {image_id}) its image \
             replaces, and hold no other; it has {leading} at its start and {total} in all"
        )));
    }
    Ok(())
}
