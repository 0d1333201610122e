//! Prompts built by the checkpoint's own chat template (Gemma 3), rendered with minijinja as
//! transformers renders them with Jinja, then each image's `<start_of_image>` expanded into its
//! block of soft tokens exactly as `Gemma3Processor` does:
//!
//! ```text
//! <start_of_image>  ->  "\n\n" <start_of_image> <image_soft_token> x tokens_per_image <end_of_image> "\n\n"
//! ```
//!
//! The template comes from the model folder (`chat_template.jinja`, else `tokenizer_config.json`'s
//! `chat_template`); without one, Gemma 3's published template is used.

use std::path::Path;

use serde::Serialize;

use crate::PaliGemma;
use crate::error::{Error, Result};

/// One turn of a conversation, as the OpenAI and transformers chat formats give it.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: Vec<Part>,
}

/// A piece of a turn: text, or where an image goes.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Part {
    Image,
    Text { text: String },
}

impl Message {
    /// A user turn: the images first, then the text (as Gemma 3's examples and the command line
    /// lay them out).
    pub fn user(images: usize, text: &str) -> Message {
        let mut content = vec![Part::Image; images];
        content.push(Part::Text { text: text.into() });
        Message {
            role: "user".into(),
            content,
        }
    }
}

/// A chat template ready to render.
pub struct ChatTemplate {
    source: String,
}

/// How Gemma 3 marks an image in the rendered text, and what it becomes.
#[derive(Clone, Debug)]
pub struct ImageMarkers {
    pub boi: String,
    pub soft: String,
    pub eoi: String,
    pub tokens_per_image: usize,
}

impl ChatTemplate {
    /// The template of the model folder `dir`, or Gemma 3's published one when it ships none.
    pub fn for_folder(dir: &Path) -> Result<ChatTemplate> {
        let file = dir.join("chat_template.jinja");
        if let Ok(source) = std::fs::read_to_string(&file) {
            return Ok(ChatTemplate { source });
        }
        let config = dir.join("tokenizer_config.json");
        let Ok(text) = std::fs::read_to_string(&config) else {
            return Ok(Self::gemma3());
        };
        let bad = |message: String| Error::Config {
            path: config.clone(),
            message,
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let source = match &json["chat_template"] {
            serde_json::Value::Null => return Ok(Self::gemma3()),
            serde_json::Value::String(s) => s.clone(),
            // A list of named templates: the default one.
            serde_json::Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .ok_or_else(|| bad("chat_template lists no `default` template".into()))?
                .into(),
            _ => return Err(bad("chat_template must be a string or a list".into())),
        };
        Ok(ChatTemplate { source })
    }

    /// Gemma 3's template as google/gemma-3-4b-it publishes it.
    pub fn gemma3() -> ChatTemplate {
        ChatTemplate {
            source: include_str!("chat/gemma3.jinja").into(),
        }
    }

    /// The template's text for `messages`, `bos` as its `bos_token`, ending with the turn the
    /// model answers in.
    pub fn render(&self, messages: &[Message], bos: &str) -> Result<String> {
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, _> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        let bad = |e: minijinja::Error| Error::invalid(format!("the chat template: {e:#}"));
        env.add_template("chat", &self.source).map_err(bad)?;
        let ctx = minijinja::Value::from_serialize(serde_json::json!({
            "messages": messages,
            "bos_token": bos,
            "add_generation_prompt": true,
        }));
        env.get_template("chat")
            .map_err(bad)?
            .render(ctx)
            .map_err(bad)
    }
}

impl PaliGemma {
    /// The ids of `prompt` about one image: PaliGemma's `<image>` * N + `<bos>` + prompt +
    /// "\n"; for Gemma 3 the chat template's user turn of the image and the prompt.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        self.text_ids(prompt, 1)
    }

    /// The ids of `prompt` about `images` images: PaliGemma's layout (one image), or Gemma 3's
    /// user turn of the images, then the text. A blank prompt is refused either way.
    pub(crate) fn text_ids(&self, prompt: &str, images: usize) -> Result<Vec<u32>> {
        if self.config().image_tokens.is_none() {
            if images != 1 {
                return Err(Error::invalid(format!(
                    "PaliGemma takes one image per prompt, not {images}"
                )));
            }
            return self
                .tokenizer()?
                .prompt_ids(prompt, self.num_image_tokens());
        }
        crate::tokenizer::check_not_blank(prompt)?;
        self.chat_ids(&[Message::user(images, prompt)])
    }

    /// Gemma 3: the ids of a conversation, by the checkpoint's chat template, each image part
    /// expanded into its block of image tokens, ending with the model's turn to answer.
    pub fn chat_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let Some(it) = &self.config().image_tokens else {
            return Err(Error::invalid(
                "PaliGemma takes a prompt about an image, not a conversation",
            ));
        };
        let tok = self.tokenizer()?;
        let chat = (self.chat_template())
            .ok_or_else(|| Error::invalid("the model was loaded without a chat template"))?;
        let text = chat.render(messages, crate::tokenizer::BOS_TOKEN)?;
        let markers = ImageMarkers::of(tok, it, self.config().image_token_index)?;
        let images = messages.iter().flat_map(|m| &m.content);
        let n = images.filter(|p| matches!(p, Part::Image)).count();
        tok.encode(&markers.expand(&text, n)?)
    }
}

impl ImageMarkers {
    /// Gemma 3's markers as `tok` spells the config's ids.
    pub(crate) fn of(
        tok: &crate::tokenizer::PromptTokenizer,
        it: &crate::config::ImageTokens,
        soft_id: u32,
    ) -> Result<ImageMarkers> {
        let text = |id: u32| {
            tok.token_text(id).ok_or_else(|| {
                Error::invalid(format!("the tokenizer has no token {id} (an image marker)"))
            })
        };
        Ok(ImageMarkers {
            boi: text(it.boi_token_id)?,
            soft: text(soft_id)?,
            eoi: text(it.eoi_token_id)?,
            tokens_per_image: it.tokens_per_image,
        })
    }

    /// `text` with each image marker expanded into its block; fails unless there are exactly
    /// `images` of them.
    pub fn expand(&self, text: &str, images: usize) -> Result<String> {
        let found = text.matches(&self.boi).count();
        if found != images {
            return Err(Error::invalid(format!(
                "the chat template placed {found} images ({}) for {images} given",
                self.boi
            )));
        }
        let block = format!(
            "\n\n{}{}{}\n\n",
            self.boi,
            self.soft.repeat(self.tokens_per_image),
            self.eoi
        );
        Ok(text.replace(&self.boi, &block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma3_template_renders_turns_and_images() {
        let t = ChatTemplate::gemma3();
        let text = t.render(&[Message::user(1, " Hi ")], "<bos>").unwrap();
        assert_eq!(
            text,
            "<bos><start_of_turn>user\n<start_of_image>Hi<end_of_turn>\n<start_of_turn>model\n"
        );
        let m = ImageMarkers {
            boi: "<start_of_image>".into(),
            soft: "<s>".into(),
            eoi: "<end_of_image>".into(),
            tokens_per_image: 2,
        };
        let expanded = m.expand(&text, 1).unwrap();
        assert!(expanded.contains("user\n\n\n<start_of_image><s><s><end_of_image>\n\nHi"));
        assert!(
            m.expand(&text, 2)
                .unwrap_err()
                .to_string()
                .contains("1 images")
        );
        // Roles must alternate: the template's own raise_exception.
        let two_users = [Message::user(0, "a"), Message::user(0, "b")];
        let e = t.render(&two_users, "<bos>").unwrap_err().to_string();
        assert!(e.contains("alternate"), "{e}");
    }
}
