//! Tokens → text for one choice: incremental detokenization (the model crate's byte-exact
//! `IncrementalDecoder`) and stop strings matched across token boundaries. Text is released only
//! once no stop string can still begin inside it; only that unreleased tail is searched, so the
//! work per token is bounded by the stop strings' length, not the output's.
use recyclegpt_model::detokenize::IncrementalDecoder;
use recyclegpt_model::TextTokenizer;

pub struct TextStream {
    decoder: IncrementalDecoder,
    stop: Vec<String>,
    /// Decoded text not yet released (it may be the start of a stop string).
    held: String,
}

/// What a push of new tokens gives.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Text to send now.
    pub text: String,
    /// Set when a stop string matched: the number of the pushed tokens that were used (the
    /// rest, and everything after, is discarded).
    pub stopped_after: Option<usize>,
    /// The stop string that matched (the first in the text, if several did).
    pub matched: Option<String>,
}

impl TextStream {
    pub fn new(tokenizer: &TextTokenizer, stop: Vec<String>) -> Self {
        Self { decoder: tokenizer.incremental_decoder(), stop, held: String::new() }
    }

    pub fn push(&mut self, tokens: &[u32]) -> Chunk {
        let mut text = String::new();
        for (i, &token) in tokens.iter().enumerate() {
            self.held.push_str(&self.decoder.push(token));
            if let Some((at, stop)) = self.stop_match_in(&self.held) {
                text.push_str(&self.held[..at]);
                self.held.clear();
                return Chunk { text, stopped_after: Some(i + 1), matched: Some(stop) };
            }
        }
        let keep = self.longest_stop_prefix();
        text.push_str(&self.held[..self.held.len() - keep]);
        self.held.drain(..self.held.len() - keep);
        Chunk { text, stopped_after: None, matched: None }
    }

    /// The rest of the text at the end of generation (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> Chunk {
        self.held.push_str(&self.decoder.finish());
        let mut held = std::mem::take(&mut self.held);
        match self.stop_match_in(&held) {
            Some((at, stop)) => {
                held.truncate(at);
                Chunk { text: held, stopped_after: Some(0), matched: Some(stop) }
            }
            None => Chunk { text: held, stopped_after: None, matched: None },
        }
    }

    /// Where the first stop string in `text` begins, and which it is.
    fn stop_match_in(&self, text: &str) -> Option<(usize, String)> {
        self.stop.iter().filter_map(|s| text.find(s.as_str()).map(|at| (at, s))).min().map(|(at, s)| (at, s.clone()))
    }

    /// Length of the longest suffix of the held text that some stop string starts with.
    fn longest_stop_prefix(&self) -> usize {
        let held = self.held.as_str();
        let mut longest = 0;
        for stop in &self.stop {
            let window = held.len().min(stop.len().saturating_sub(1));
            // Candidate suffixes, longest first; the first that starts `stop` wins.
            let start = held.len() - window;
            for (offset, _) in held[..].char_indices().filter(|(i, _)| *i >= start) {
                let suffix = &held[offset..];
                if suffix.len() <= longest {
                    break;
                }
                if stop.starts_with(suffix) {
                    longest = suffix.len();
                    break;
                }
            }
        }
        longest
    }
}
