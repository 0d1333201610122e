//! OpenAI's `stop` strings: an answer ends just before the first of them to appear, which is
//! not sent. Text that may be the start of one is held back until the next token tells; when
//! one appears, the engine ends the request with `finish_reason: "stop"` and cancels its
//! generation, freeing its slot.

use crate::generation::Token;
use crate::logprobs::Logprobs;

/// Text to send, with the log-probabilities (when asked for) of the tokens that made it and
/// were not sent before.
#[derive(Debug, PartialEq)]
pub struct Piece {
    pub text: String,
    pub logprobs: Vec<Logprobs>,
}

/// One request's answer so far, under its stop strings (none: every piece passes at once).
#[derive(Debug, Default)]
pub struct StopAt {
    stops: Vec<String>,
    text: String,
    /// Bytes of `text` already sent.
    sent: usize,
    ids: Vec<u32>,
    /// Log-probabilities of the tokens since the last piece sent.
    logprobs: Vec<Logprobs>,
}

/// What a token does to the answer.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Send this piece (`None`: nothing yet, the text may be the start of a stop string).
    Send(Option<Piece>),
    /// A stop string appeared: send `last`, then end with `text` (the answer before the stop
    /// string) and `ids` (every token generated, the one that completed it included).
    Stop {
        last: Option<Piece>,
        text: String,
        ids: Vec<u32>,
    },
}

impl StopAt {
    pub fn new(stops: Vec<String>) -> StopAt {
        StopAt {
            stops,
            ..StopAt::default()
        }
    }

    /// Takes the next token.
    pub fn token(&mut self, token: Token) -> Step {
        self.ids.push(token.id);
        self.text.push_str(&token.piece);
        self.logprobs.extend(token.logprobs);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min();
        match first {
            Some(end) => Step::Stop {
                last: self.send_upto(end),
                text: self.text[..end].to_string(),
                ids: std::mem::take(&mut self.ids),
            },
            None => {
                let safe = self.text.len() - self.held_back();
                Step::Send(self.send_upto(safe))
            }
        }
    }

    /// The text held back, at the end of a generation that met no stop string.
    pub fn finish(&mut self) -> Option<Piece> {
        self.send_upto(self.text.len())
    }

    /// The longest end of the unsent text that begins some stop string.
    fn held_back(&self) -> usize {
        let unsent = &self.text[self.sent..];
        unsent
            .char_indices()
            .map(|(i, _)| &unsent[i..])
            .find(|tail| self.stops.iter().any(|s| s.starts_with(tail)))
            .map_or(0, str::len)
    }

    fn send_upto(&mut self, end: usize) -> Option<Piece> {
        (end > self.sent).then(|| {
            let text = self.text[self.sent..end].to_string();
            self.sent = end;
            let logprobs = std::mem::take(&mut self.logprobs);
            Piece { text, logprobs }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let mut s = StopAt::new(stops.iter().map(|s| s.to_string()).collect());
        let mut sent = String::new();
        for (i, p) in pieces.iter().enumerate() {
            let token = Token {
                id: i as u32,
                piece: p.to_string(),
                logprobs: None,
            };
            match s.token(token) {
                Step::Send(t) => sent.extend(t.map(|t| t.text)),
                Step::Stop { last, text, ids } => {
                    sent.extend(last.map(|t| t.text));
                    assert_eq!(ids.len(), i + 1);
                    return (sent, Some(text));
                }
            }
        }
        sent.extend(s.finish().map(|t| t.text));
        (sent, None)
    }

    #[test]
    fn the_answer_ends_before_the_first_stop_string_even_across_tokens() {
        let (sent, end) = run(&["lazy"], &["the ", "quick la", "zy dog"]);
        assert_eq!(
            (sent.as_str(), end.as_deref()),
            ("the quick ", Some("the quick "))
        );
        let (sent, end) = run(&["dog", "ck"], &["the qui", "ck dog"]);
        assert_eq!(
            (sent.as_str(), end.as_deref()),
            ("the qui", Some("the qui"))
        );
    }

    #[test]
    fn held_text_that_was_not_a_stop_string_is_sent() {
        let (sent, end) = run(&["lazy"], &["a la", "rge ", "la"]);
        assert_eq!((sent.as_str(), end), ("a large la", None));
        let (sent, end) = run(&[], &["a", "", "é b"]);
        assert_eq!((sent.as_str(), end), ("aé b", None));
        let (sent, end) = run(&["éx"], &["aé", "é", "y"]);
        assert_eq!((sent.as_str(), end), ("aééy", None));
    }
}
