//! Detokenization on bytes. HF `tokenizers` decoding is not prefix-stable (its `ByteFallback`
//! decoder turns a whole run of byte tokens into one U+FFFD per byte unless the run is valid
//! UTF-8 as a whole, so one more token can change text already shown), and decoding the whole
//! output again for every token is quadratic. Instead each token id maps, once per vocabulary,
//! to the bytes it adds to text it follows; generated text is the lossy UTF-8 decoding of the
//! concatenation, which an [`IncrementalDecoder`] produces a token at a time.
use std::collections::HashMap;
use std::sync::Arc;
use tokenizers::Model;

/// How a vocabulary's pieces become bytes, read from the tokenizer's decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// GPT-2-style byte-level BPE (`ByteLevel` decoder): every char of a piece stands for one
    /// byte through the GPT-2 byte↔unicode table.
    ByteLevel,
    /// Sentencepiece-style pieces (`Metaspace` decoder, or a `Sequence` of `Replace`,
    /// `ByteFallback`, `Fuse` and `Strip`): `▁` is a space and `<0xNN>` is the byte 0xNN.
    SentencePiece,
    /// A decoder this module does not model: each token is whatever HF decodes it to alone.
    /// Exact for vocabularies whose decoder works token by token; wrong around tokens whose
    /// text depends on their neighbours (e.g. WordPiece's `##` continuations).
    Approximate,
}

/// Each token id's bytes as they appear in decoded text when the token follows other text:
/// the leading space of a sentencepiece word start is kept (HF's `Strip` decoder removes it
/// only at the very start of a text). Special tokens (those `decode(ids, true)` drops) have
/// no bytes; ids outside the vocabulary have none either.
pub struct TokenBytes {
    kind: VocabKind,
    /// Every token's bytes back to back: token `id` owns `data[ends[id - 1]..ends[id]]`.
    data: Vec<u8>,
    ends: Vec<usize>,
    /// Special tokens' contents, which name them in log-probabilities though they add no text.
    special: HashMap<u32, String>,
    max_input_bytes: usize,
}

/// The decoder rule a vocabulary's pieces follow.
enum Scheme {
    ByteLevel,
    /// String replacements applied to each piece in order (`▁` → ` `), then `<0xNN>` → byte.
    Pieces(Vec<(String, String)>),
    /// Why the decoder is not understood, for the warning.
    Unknown(String),
}

impl TokenBytes {
    /// Builds the table for `tokenizer`'s whole vocabulary, added tokens included.
    pub fn new(tokenizer: &tokenizers::Tokenizer) -> Self {
        let scheme = scheme(tokenizer);
        let kind = match &scheme {
            Scheme::ByteLevel => VocabKind::ByteLevel,
            Scheme::Pieces(_) => VocabKind::SentencePiece,
            Scheme::Unknown(why) => {
                // Once per vocabulary: the table is built once when a tokenizer loads.
                tracing::warn!(
                    decoder = %why,
                    "tokenizer decoder not recognised: streaming detokenization decodes each token \
                     alone, which can misplace spaces or characters spelled over several tokens"
                );
                VocabKind::Approximate
            }
        };
        let added = tokenizer.get_added_tokens_decoder();
        let model = tokenizer.get_model();
        let len = tokenizer.get_vocab(true).values().max().map_or(0, |&id| id as usize + 1);
        let mut table =
            Self { kind, data: Vec::new(), ends: Vec::with_capacity(len), special: HashMap::new(), max_input_bytes: 0 };
        for id in 0..len as u32 {
            let piece = model.id_to_token(id);
            // Input text becomes a piece char for char (`▁` typed as such is a 3-byte piece that
            // decodes to one space), so a piece stands for as many input bytes as it is long.
            table.max_input_bytes = table.max_input_bytes.max(piece.as_ref().map_or(0, String::len));
            let bytes = match added.get(&id) {
                Some(token) => {
                    // An added token is matched in input text by its content, so one token can
                    // stand for that many prompt bytes even when it decodes to none.
                    table.max_input_bytes = table.max_input_bytes.max(token.content.len());
                    if token.special {
                        table.special.insert(id, token.content.clone());
                        Vec::new()
                    } else if piece.as_deref() == Some(token.content.as_str()) {
                        // Also a model piece (e.g. `<0xNN>` listed as added): decode it as one.
                        piece_bytes(&scheme, tokenizer, id, &token.content)
                    } else {
                        token.content.clone().into_bytes()
                    }
                }
                None => piece.map_or_else(Vec::new, |p| piece_bytes(&scheme, tokenizer, id, &p)),
            };
            table.max_input_bytes = table.max_input_bytes.max(bytes.len());
            table.data.extend_from_slice(&bytes);
            table.ends.push(table.data.len());
        }
        table
    }

    pub fn kind(&self) -> VocabKind {
        self.kind
    }

    /// Number of ids in the table (the highest id plus one).
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes token `id` adds to text it follows; empty for special and unknown ids.
    pub fn get(&self, id: u32) -> &[u8] {
        let id = id as usize;
        match self.ends.get(id) {
            Some(&end) => {
                let start = if id == 0 { 0 } else { self.ends[id - 1] };
                &self.data[start..end]
            }
            None => &[],
        }
    }

    /// The most prompt bytes one token can stand for: the longest of every token's bytes, model
    /// piece (`▁the` is 6 bytes, ` the` 4) and added token content (added tokens, special ones
    /// too, are matched in prompt text). A prompt of `n` bytes therefore needs at least
    /// `n / max_token_bytes()` tokens, unless the model fuses a run of unknown characters into
    /// one `<unk>` (no byte fallback) or a normalizer composes characters (NFC, NFKC).
    pub fn max_token_bytes(&self) -> usize {
        self.max_input_bytes
    }

    /// One token's text for log-probabilities: its bytes decoded lossily (a lone byte of a
    /// multi-byte character is U+FFFD), or a special token's content, which names it although
    /// it adds nothing to the output text.
    pub fn token_text(&self, id: u32) -> String {
        match self.special.get(&id) {
            Some(content) => content.clone(),
            None => String::from_utf8_lossy(self.get(id)).into_owned(),
        }
    }

    /// The text of `ids` generated after a prompt: the lossy UTF-8 decoding of their bytes.
    /// Unlike HF `decode`, a leading space is kept, as it follows the prompt's text.
    pub fn decode_continuation(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.get(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Reads the decoder's JSON form: the `tokenizers` crate exposes no accessors for most of
/// its decoders' settings (e.g. `Replace`'s pattern), but serializes them all.
fn scheme(tokenizer: &tokenizers::Tokenizer) -> Scheme {
    let Some(decoder) = tokenizer.get_decoder() else {
        return Scheme::Unknown("none (HF joins tokens with spaces)".into());
    };
    let json = match serde_json::to_value(decoder) {
        Ok(json) => json,
        Err(e) => return Scheme::Unknown(format!("cannot serialize: {e}")),
    };
    let parts: Vec<&serde_json::Value> = match json.get("decoders").and_then(|d| d.as_array()) {
        Some(decoders) if json["type"] == "Sequence" => decoders.iter().collect(),
        _ => vec![&json],
    };
    if !parts.is_empty() && parts.iter().all(|p| p["type"] == "ByteLevel") {
        return Scheme::ByteLevel;
    }
    let mut replace = Vec::new();
    let mut fused = false;
    for part in parts {
        let unknown = || Scheme::Unknown(part.to_string());
        match part["type"].as_str().unwrap_or_default() {
            "Replace" => match (part["pattern"]["String"].as_str(), part["content"].as_str()) {
                (Some(pattern), Some(content)) => replace.push((pattern.to_string(), content.to_string())),
                _ => return unknown(),
            },
            "Metaspace" => match part["replacement"].as_str() {
                // Its removal of the first token's `▁` only concerns the start of a text.
                Some(replacement) => replace.push((replacement.to_string(), " ".to_string())),
                None => return unknown(),
            },
            "ByteFallback" => {}
            "Fuse" => fused = true,
            // After `Fuse` there is one string, so `Strip` trims only the start of the text;
            // trimming its end (`stop`) would make no text final until the last token.
            "Strip" if fused && part["stop"] == 0 => {}
            _ => return unknown(),
        }
    }
    Scheme::Pieces(replace)
}

/// The bytes of model piece `piece` (token `id`) under `scheme`.
fn piece_bytes(scheme: &Scheme, tokenizer: &tokenizers::Tokenizer, id: u32, piece: &str) -> Vec<u8> {
    match scheme {
        Scheme::ByteLevel => byte_level_bytes(piece),
        Scheme::Pieces(replace) => {
            let mut text = piece.to_string();
            for (pattern, content) in replace {
                text = text.replace(pattern.as_str(), content);
            }
            match byte_token(&text) {
                Some(byte) => vec![byte],
                None => text.into_bytes(),
            }
        }
        Scheme::Unknown(_) => tokenizer.decode(&[id], false).unwrap_or_default().into_bytes(),
    }
}

/// The byte of a `<0xNN>` byte-fallback token.
fn byte_token(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// GPT-2's byte→char table inverted: chars below U+0200 to bytes (`None` where unused).
fn gpt2_char_bytes() -> [Option<u8>; 512] {
    let mut table = [None; 512];
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256;
    for byte in 0..=255u8 {
        if printable(byte) {
            table[byte as usize] = Some(byte);
        } else {
            table[next] = Some(byte);
            next += 1;
        }
    }
    table
}

/// A byte-level piece's bytes. As HF's `ByteLevel` decoder does, a piece with any char outside
/// the table (an added token's text, say) stands for its own UTF-8 bytes.
fn byte_level_bytes(piece: &str) -> Vec<u8> {
    static TABLE: std::sync::OnceLock<[Option<u8>; 512]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(gpt2_char_bytes);
    piece
        .chars()
        .map(|c| table.get(c as usize).copied().flatten())
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| piece.as_bytes().to_vec())
}

/// Turns generated tokens into text as they come. The text of all pushes plus [`finish`]
/// equals [`TokenBytes::decode_continuation`] of all the tokens: invalid bytes become U+FFFD
/// exactly as `String::from_utf8_lossy` of the whole would make them.
///
/// [`finish`]: IncrementalDecoder::finish
#[derive(Clone)]
pub struct IncrementalDecoder {
    table: Arc<TokenBytes>,
    /// An incomplete UTF-8 sequence at the end of the text so far (at most 3 bytes).
    pending: Vec<u8>,
}

impl IncrementalDecoder {
    pub fn new(table: Arc<TokenBytes>) -> Self {
        Self { table, pending: Vec::with_capacity(8) }
    }

    /// Adds a token; returns the text it completes. Only bytes that may yet begin a valid
    /// character are held back, so the work is proportional to the token's length.
    pub fn push(&mut self, token: u32) -> String {
        self.pending.extend_from_slice(self.table.get(token));
        let mut out = String::with_capacity(self.pending.len());
        let held = decode_complete(&self.pending, &mut out);
        self.pending.drain(..self.pending.len() - held);
        out
    }

    /// Flushes what is held back: an incomplete sequence at the end becomes U+FFFD. The decoder
    /// is empty afterwards and can start a new text.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// Appends the lossy decoding of `bytes` to `out`, except a trailing incomplete sequence that
/// more bytes could still complete; returns that sequence's length. Lossy decoding replaces each
/// maximal invalid subpart as soon as a byte rules it out and never looks further ahead, so what
/// is appended here is what decoding the whole text would give for it.
fn decode_complete(bytes: &[u8], out: &mut String) -> usize {
    let mut chunks = bytes.utf8_chunks().peekable();
    while let Some(chunk) = chunks.next() {
        out.push_str(chunk.valid());
        let invalid = chunk.invalid();
        if invalid.is_empty() {
            continue;
        }
        let incomplete = matches!(std::str::from_utf8(invalid), Err(e) if e.error_len().is_none());
        if incomplete && chunks.peek().is_none() {
            return invalid.len();
        }
        out.push(char::REPLACEMENT_CHARACTER);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> (String, usize) {
        let mut out = String::new();
        let held = decode_complete(bytes, &mut out);
        (out, held)
    }

    #[test]
    fn holds_back_only_an_incomplete_tail() {
        assert_eq!(complete(b"ab\xF0\x9F\x98"), ("ab".to_string(), 3));
        assert_eq!(complete(b"\xF0\x9F\x98\x80"), ("😀".to_string(), 0));
        assert_eq!(complete(b"a\x80"), ("a\u{FFFD}".to_string(), 0));
        assert_eq!(complete(b"\xF0\x9F\x41"), ("\u{FFFD}A".to_string(), 0));
        assert_eq!(complete(b"\xED\xA0"), ("\u{FFFD}\u{FFFD}".to_string(), 0));
    }

    #[test]
    fn gpt2_table_covers_every_byte() {
        let table = gpt2_char_bytes();
        let mut seen = [false; 256];
        for byte in table.iter().flatten() {
            seen[*byte as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(byte_level_bytes("Ċ"), b"\n");
        assert_eq!(byte_level_bytes("Ġthe"), b" the");
        assert_eq!(byte_token("<0xF0>"), Some(0xF0));
        assert_eq!(byte_token("<0xF0"), None);
    }
}
