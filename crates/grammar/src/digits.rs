//! A bound on the digits of JSON numbers. JSON Schema cannot bound how many digits a number
//! has, and a small model that starts repeating a digit (`11.71198888…`) writes it until
//! `max_tokens` runs out, so the JSON never closes. llama.cpp's schema grammars cap a number's
//! integral and fraction parts at 16 digits each; this does the same over llguidance's masks:
//! outside strings, after 16 digits in a row the next token may not start with a digit. (17
//! significant digits are all an f64 holds, so no representable value is lost.)
use toktrie::TokEnv;

pub(crate) const MAX_DIGITS: usize = 16;

#[derive(Debug, Clone, Copy, Default)]
struct Lexer {
    in_string: bool,
    escaped: bool,
    run: usize,
}

impl Lexer {
    fn take(&mut self, byte: u8) {
        if self.in_string {
            match (self.escaped, byte) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'"') => self.in_string = false,
                _ => {}
            }
            return;
        }
        self.run = if byte.is_ascii_digit() { self.run + 1 } else { 0 };
        self.in_string = byte == b'"';
    }
}

/// Where the text is (in a string or not, the current run of digits), kept per token so drafts
/// can be taken back.
pub(crate) struct DigitRuns {
    env: TokEnv,
    states: Vec<Lexer>,
}

impl DigitRuns {
    pub(crate) fn new(env: TokEnv) -> Self {
        Self { env, states: vec![Lexer::default()] }
    }

    fn now(&self) -> Lexer {
        self.states.last().copied().unwrap_or_default()
    }

    pub(crate) fn at_limit(&self) -> bool {
        let now = self.now();
        !now.in_string && now.run >= MAX_DIGITS
    }

    pub(crate) fn starts_with_digit(&self, token: u32) -> bool {
        self.env.tok_trie().token(token).first().is_some_and(u8::is_ascii_digit)
    }

    pub(crate) fn advance(&mut self, token: u32) {
        let mut state = self.now();
        for &byte in self.env.tok_trie().token(token) {
            state.take(byte);
        }
        self.states.push(state);
    }

    pub(crate) fn rollback(&mut self, tokens: usize) {
        let keep = self.states.len().saturating_sub(tokens).max(1);
        self.states.truncate(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::Lexer;

    fn run_after(text: &str) -> (bool, usize) {
        let mut lexer = Lexer::default();
        text.bytes().for_each(|b| lexer.take(b));
        (lexer.in_string, lexer.run)
    }

    #[test]
    fn digits_count_outside_strings_only() {
        assert_eq!(run_after(r#"{"a": 11.7119"#), (false, 4));
        assert_eq!(run_after(r#"{"a": "12345"#), (true, 0));
        assert_eq!(run_after(r#"{"a": "x\"12", "b": 42"#), (false, 2));
        assert_eq!(run_after(r#"[1, 2"#), (false, 1));
    }
}
