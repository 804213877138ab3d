//! A sentencepiece-style BPE vocabulary (pieces with scores) from llama2.c's `tok*.bin` or the
//! sentencepiece `.model` it was made from, written out as a HuggingFace `tokenizer.json`.
use crate::error::{ModelError, Result};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Normal,
    Unknown,
    Control,
    Byte,
    /// Matched in the raw text before anything else, as llama.cpp and HF do (Gemma's runs of
    /// newlines, spaces and tabs, its HTML tags).
    UserDefined,
}

/// How the text meets the pieces: llama2.c's and Llama 2's vocabularies prefix a space and start
/// with BOS (id 1); a GGUF file says both for itself (Gemma: no prefix; BOS added by the
/// server's tokenizer from the metadata, so the tokenizer itself adds none).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpmOptions {
    pub space_prefix: bool,
    pub bos_first: bool,
}

impl SpmOptions {
    pub(crate) const LLAMA2C: SpmOptions = SpmOptions { space_prefix: true, bos_first: true };
}

pub struct Vocabulary {
    pieces: Vec<(String, f32, Kind)>,
}

const SPACE: char = '\u{2581}';

fn classify(id: usize, piece: &str) -> Kind {
    match (id, piece) {
        (0, _) => Kind::Unknown,
        (1 | 2, _) => Kind::Control,
        _ if piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>') => Kind::Byte,
        _ => Kind::Normal,
    }
}

impl Vocabulary {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::file(path, e))?;
        let pieces = if path.extension().is_some_and(|e| e == "model") {
            parse_sentencepiece(&bytes).map_err(|m| ModelError::file(path, m))?
        } else {
            parse_llama2c(&bytes).map_err(|m| ModelError::file(path, m))?
        };
        if pieces.len() < 3 {
            return Err(ModelError::file(path, "vocabulary has fewer than 3 tokens"));
        }
        Ok(Self { pieces })
    }

    /// A vocabulary from its pieces: text, score and kind, in id order (ids 0-2: unknown, BOS,
    /// EOS, as sentencepiece Llama vocabularies have them).
    pub(crate) fn from_pieces(pieces: Vec<(String, f32, Kind)>) -> Self {
        Self { pieces }
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Sentencepiece BPE merges the adjacent pair whose union scores highest; as BPE merges,
    /// every split of a piece into two pieces, ranked by the merged piece's score.
    fn merges(&self) -> Vec<(String, String)> {
        let ids: HashMap<&str, usize> = self
            .pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| p.2 == Kind::Normal)
            .map(|(i, p)| (p.0.as_str(), i))
            .collect();
        let mut ranked: Vec<(f32, usize, usize, String, String)> = Vec::new();
        for (piece, &id) in &ids {
            for (split, _) in piece.char_indices().skip(1) {
                let (a, b) = piece.split_at(split);
                if ids.contains_key(a) && ids.contains_key(b) {
                    ranked.push((self.pieces[id].1, id, split, a.to_string(), b.to_string()));
                }
            }
        }
        ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
        ranked.into_iter().map(|(_, _, _, a, b)| (a, b)).collect()
    }

    pub(crate) fn tokenizer_json(&self, options: SpmOptions) -> serde_json::Value {
        let vocab: serde_json::Map<String, serde_json::Value> =
            self.pieces.iter().enumerate().map(|(i, p)| (p.0.clone(), json!(i))).collect();
        let added: Vec<serde_json::Value> = self
            .pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p.2, Kind::Unknown | Kind::Control | Kind::UserDefined))
            .map(|(i, p)| {
                json!({"id": i, "content": p.0, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": p.2 != Kind::UserDefined})
            })
            .collect();
        let merges: Vec<[String; 2]> = self.merges().into_iter().map(|(a, b)| [a, b]).collect();
        let bos = self.pieces[1].0.clone();
        let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE.to_string()});
        let normalizer = if options.space_prefix {
            json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE.to_string()}, replace]})
        } else {
            replace
        };
        let post_processor = options.bos_first.then(|| {
            json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos.clone(): {"id": bos, "ids": [1], "tokens": [bos]}}
            })
        });
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": SPACE.to_string()}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if options.space_prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": null,
            "post_processor": post_processor,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": self.pieces[0].0, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": merges
            }
        })
    }
}

/// `tok*.bin`: int32 max_token_length, then per token: f32 score, int32 length, raw bytes.
fn parse_llama2c(bytes: &[u8]) -> std::result::Result<Vec<(String, f32, Kind)>, String> {
    let mut at = 4;
    let mut pieces = Vec::new();
    while at < bytes.len() {
        let field = |at: usize| -> std::result::Result<[u8; 4], String> {
            bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).ok_or_else(|| format!("truncated at byte {at}"))
        };
        let score = f32::from_le_bytes(field(at)?);
        let len = i32::from_le_bytes(field(at + 4)?);
        let start = at + 8;
        let end = start + usize::try_from(len).map_err(|_| format!("negative token length at byte {at}"))?;
        let raw = bytes.get(start..end).ok_or_else(|| format!("truncated token at byte {start}"))?;
        let text = String::from_utf8_lossy(raw);
        let id = pieces.len();
        // llama2.c stores BOS / EOS as "\n<s>\n" / "\n</s>\n" and '▁' as a plain space.
        let piece = match id {
            0 => "<unk>".to_string(),
            1 => "<s>".to_string(),
            2 => "</s>".to_string(),
            _ => text.replace(' ', &SPACE.to_string()),
        };
        pieces.push((piece.clone(), score, classify(id, &piece)));
        at = end;
    }
    Ok(pieces)
}

/// The sentencepiece `ModelProto`: field 1 holds the pieces {1: piece, 2: score, 3: type}.
fn parse_sentencepiece(bytes: &[u8]) -> std::result::Result<Vec<(String, f32, Kind)>, String> {
    let mut pieces = Vec::new();
    for field in Proto::new(bytes) {
        let (number, value) = field?;
        if let (1, Value::Bytes(message)) = (number, value) {
            let (mut piece, mut score, mut kind) = (String::new(), 0.0f32, 1u64);
            for inner in Proto::new(message) {
                match inner? {
                    (1, Value::Bytes(b)) => piece = String::from_utf8_lossy(b).into_owned(),
                    (2, Value::Fixed32(v)) => score = f32::from_bits(v),
                    (3, Value::Varint(v)) => kind = v,
                    _ => {}
                }
            }
            let kind = match kind {
                2 => Kind::Unknown,
                3 => Kind::Control,
                6 => Kind::Byte,
                _ => Kind::Normal,
            };
            pieces.push((piece, score, kind));
        }
    }
    Ok(pieces)
}

enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
    Fixed64,
}

/// A minimal protobuf wire-format reader: enough for sentencepiece's model file.
struct Proto<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Proto<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.at).ok_or("truncated varint")?;
            self.at += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let out = self.bytes.get(self.at..self.at + n).ok_or("truncated field")?;
        self.at += n;
        Ok(out)
    }

    fn field(&mut self) -> std::result::Result<(u64, Value<'a>), String> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "length too large")?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => return Err(format!("unsupported protobuf wire type {w}")),
        };
        Ok((key >> 3, value))
    }
}

impl<'a> Iterator for Proto<'a> {
    type Item = std::result::Result<(u64, Value<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let item = self.field();
        if item.is_err() {
            self.at = self.bytes.len();
        }
        Some(item)
    }
}
