//! Incremental detokenization with stop strings matched across token boundaries: text is
//! released only once no stop string can still begin inside it.
use recyclegpt_model::TextTokenizer;
use std::sync::Arc;

pub struct TextStream {
    tokenizer: Arc<TextTokenizer>,
    /// The last prompt tokens, decoded in front of the output so that a leading space survives.
    context: Vec<u32>,
    context_len: usize,
    ids: Vec<u32>,
    text: String,
    sent: usize,
    stop: Vec<String>,
}

/// What a push of new tokens gives: text to send now, and whether a stop string ended it.
pub struct Chunk {
    pub text: String,
    pub stopped: bool,
}

impl TextStream {
    pub fn new(tokenizer: Arc<TextTokenizer>, prompt: &[u32], stop: Vec<String>) -> Self {
        let context = prompt[prompt.len().saturating_sub(4)..].to_vec();
        let context_len = tokenizer.decode(&context).map(|t| t.len()).unwrap_or(0);
        Self {
            tokenizer,
            context,
            context_len,
            ids: Vec::new(),
            text: String::new(),
            sent: 0,
            stop,
        }
    }

    /// Adds tokens; `last` flushes everything that remains.
    pub fn push(&mut self, tokens: &[u32], last: bool) -> Chunk {
        self.ids.extend_from_slice(tokens);
        let all: Vec<u32> = self.context.iter().chain(&self.ids).copied().collect();
        let decoded = self.tokenizer.decode(&all).unwrap_or_default();
        self.text = decoded.get(self.context_len..).unwrap_or_default().to_string();
        if let Some(at) = self.stop.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            return Chunk {
                text: self.take_until(at.max(self.sent)),
                stopped: true,
            };
        }
        let mut end = self.text.len();
        if !last {
            // An incomplete UTF-8 sequence decodes as U+FFFD until its last byte arrives.
            if self.text.ends_with('\u{FFFD}') {
                end -= '\u{FFFD}'.len_utf8();
            }
            end = end.min(self.text.len() - self.longest_stop_prefix());
        }
        Chunk {
            text: self.take_until(end.max(self.sent)),
            stopped: false,
        }
    }

    /// Length of the longest suffix of the text that a stop string starts with.
    fn longest_stop_prefix(&self) -> usize {
        let mut longest = 0;
        for stop in &self.stop {
            for (i, _) in stop.char_indices().skip(1) {
                if self.text.ends_with(&stop[..i]) {
                    longest = longest.max(i);
                }
            }
        }
        longest
    }

    fn take_until(&mut self, end: usize) -> String {
        let mut end = end.min(self.text.len());
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let out = self.text.get(self.sent..end).unwrap_or_default().to_string();
        self.sent = self.sent.max(end);
        out
    }
}
