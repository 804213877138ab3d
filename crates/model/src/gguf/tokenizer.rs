//! The tokenizer of a GGUF file, from `tokenizer.ggml.*`: `gpt2` (byte-level BPE, with the
//! pre-tokenizer that `tokenizer.ggml.pre` names) or `llama` (sentencepiece-style BPE with scores
//! and byte fallback); control tokens from `token_type`; BOS, EOS, `add_bos_token` and the chat
//! template from the metadata.
use super::GgufFile;
use crate::error::{ModelError, Result};
use crate::llama2c::{Kind, SpmOptions, Vocabulary};
use crate::tokenizer::TextTokenizer;
use serde_json::json;

/// llama.cpp's `token_type` values.
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNKNOWN: i32 = 2;
const BYTE: i32 = 6;

/// llama-bpe (Llama 3) splits text before byte-level BPE with this expression.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's (Qwen2, 2.5 and 3): Llama 3's, but every digit alone.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(super) fn load(gguf: &GgufFile) -> Result<TextTokenizer> {
    let strings = |key: &str| -> Result<Vec<String>> {
        gguf.value(key)?
            .to_vec()
            .map_err(|e| gguf.bad(key, e))?
            .iter()
            .map(|v| v.to_string().cloned().map_err(|e| gguf.bad(key, e)))
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let types: Vec<i32> = numbers(gguf, "tokenizer.ggml.token_type", tokens.len(), |v| v.to_i32().unwrap_or(1))?;
    let model = gguf.string("tokenizer.ggml.model")?;
    let json = match model.as_str() {
        "gpt2" => byte_level(gguf, &tokens, &types, &strings("tokenizer.ggml.merges")?)?,
        "llama" => {
            let scores: Vec<f32> = numbers(gguf, "tokenizer.ggml.scores", tokens.len(), |v| v.to_f32().unwrap_or(0.0))?;
            let pieces = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let kind = match types.get(i).copied().unwrap_or(1) {
                        UNKNOWN => Kind::Unknown,
                        CONTROL => Kind::Control,
                        BYTE => Kind::Byte,
                        USER_DEFINED => Kind::UserDefined,
                        _ => Kind::Normal,
                    };
                    (t.clone(), scores.get(i).copied().unwrap_or(0.0), kind)
                })
                .collect();
            let space_prefix = match gguf.content.metadata.get("tokenizer.ggml.add_space_prefix") {
                Some(v) => v.to_bool().map_err(|e| gguf.bad("tokenizer.ggml.add_space_prefix", e))?,
                None => true,
            };
            // BOS comes from the metadata (`add_bos_token`, below), not the vocabulary's order.
            Vocabulary::from_pieces(pieces).tokenizer_json(SpmOptions { space_prefix, bos_first: false })
        }
        other => {
            return Err(ModelError::file(
                gguf.path(),
                format!("tokenizer model `{other}` is not supported (supported: gpt2, llama)"),
            ))
        }
    };
    let inner: tokenizers::Tokenizer = json
        .to_string()
        .parse()
        .map_err(|e| ModelError::file(gguf.path(), format!("the tokenizer in the metadata does not load: {e}")))?;
    // An id past the vocabulary would load and then fail every request that uses it.
    let id = |key: &str| -> Result<Option<u32>> {
        match gguf.optional_usize(key)? {
            Some(id) if id >= tokens.len() => {
                Err(gguf.bad(key, format!("token id {id} is outside the vocabulary of {} tokens", tokens.len())))
            }
            id => Ok(id.map(|v| v as u32)),
        }
    };
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let eos = id("tokenizer.ggml.eos_token_id")?;
    let add_bos = match gguf.content.metadata.get("tokenizer.ggml.add_bos_token") {
        Some(v) => v.to_bool().map_err(|e| gguf.bad("tokenizer.ggml.add_bos_token", e))?,
        None => model == "llama",
    };
    let template = match gguf.content.metadata.get("tokenizer.chat_template") {
        Some(v) => Some(v.to_string().map_err(|e| gguf.bad("tokenizer.chat_template", e))?.clone()),
        None => None,
    };
    Ok(TextTokenizer::from_parts(inner, bos, add_bos, eos.into_iter().collect(), template))
}

/// A per-token metadata array (token types, scores), or `count` defaults when it is absent.
fn numbers<T: Default + Clone>(
    gguf: &GgufFile,
    key: &str,
    count: usize,
    read: impl Fn(&candle_core::quantized::gguf_file::Value) -> T,
) -> Result<Vec<T>> {
    match gguf.content.metadata.get(key) {
        Some(v) => Ok(v.to_vec().map_err(|e| gguf.bad(key, e))?.iter().map(read).collect()),
        None => Ok(vec![T::default(); count]),
    }
}

/// A GPT-2 style byte-level BPE as a `tokenizer.json` value.
fn byte_level(gguf: &GgufFile, tokens: &[String], types: &[i32], merges: &[String]) -> Result<serde_json::Value> {
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(&CONTROL) | Some(&USER_DEFINED)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": types.get(i) == Some(&CONTROL)})
        })
        .collect();
    let merges: Vec<[&str; 2]> = merges.iter().filter_map(|m| m.split_once(' ')).map(|(a, b)| [a, b]).collect();
    let pre = gguf.content.metadata.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).map(String::as_str);
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split_then_bytes = |pattern: &str| {
        json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
        byte_level(false)]})
    };
    let pre_tokenizer = match pre.unwrap_or("default") {
        // SmolLM: every digit alone, then GPT-2's split.
        "smollm" => {
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]})
        }
        "llama-bpe" | "llama3" => split_then_bytes(LLAMA3_SPLIT),
        "qwen2" => split_then_bytes(QWEN2_SPLIT),
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        other => {
            return Err(ModelError::file(
                gguf.path(),
                format!(
                    "pre-tokenizer `{other}` is not supported (supported: smollm, llama-bpe, qwen2, default, gpt2)"
                ),
            ))
        }
    };
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    }))
}
