//! Byte-based detokenization against real tokenizers: the embedded model's byte-fallback BPE,
//! stories260K's sentencepiece-style Llama tokenizer and SmolLM2's GPT-2-style byte-level BPE
//! (the last two from `../shared`, skipped with a note when it is missing).
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use recyclegpt_model::detokenize::{IncrementalDecoder, TokenBytes, VocabKind};
use recyclegpt_model::{LlamaConfig, TextTokenizer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokenizers::Tokenizer;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn shakespeare_dir() -> PathBuf {
    workspace().join("models/shakespeare")
}

/// A file under `../shared/models`, or `None` after saying which checks it skips.
fn shared(relative: &str, checks: &str) -> Option<PathBuf> {
    let path = workspace().join("../shared/models").join(relative);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipping {checks}: {} is missing", path.display());
        None
    }
}

fn shakespeare() -> Tokenizer {
    Tokenizer::from_file(shakespeare_dir().join("tokenizer.json")).unwrap()
}

fn stories() -> Option<Tokenizer> {
    let path = shared("stories260K/hf/tokenizer.json", "the stories260K (sentencepiece-style) checks")?;
    Some(Tokenizer::from_file(path).unwrap())
}

/// SmolLM2's tokenizer, built from its GGUF metadata: a byte-level BPE with GPT-2's
/// pre-tokenizer and decoder, its control tokens (`token_type` 3) special. Only as close to the
/// real one as these checks need (it splits digits as GPT-2 does, not one by one).
fn smollm() -> Option<Tokenizer> {
    use candle_core::quantized::gguf_file::{Content, Value};
    let path = shared(
        "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
        "the SmolLM2 (GPT-2-style byte-level BPE) checks",
    )?;
    let content = Content::read(&mut std::fs::File::open(path).unwrap()).unwrap();
    let strings = |key: &str| -> Vec<String> {
        content.metadata[key].to_vec().unwrap().iter().map(|v| v.to_string().unwrap().clone()).collect()
    };
    let tokens = strings("tokenizer.ggml.tokens");
    let merges = strings("tokenizer.ggml.merges");
    let types: Vec<i32> = content.metadata["tokenizer.ggml.token_type"]
        .to_vec()
        .unwrap()
        .iter()
        .map(|v: &Value| v.to_i32().unwrap())
        .collect();
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(id, t)| (t.clone(), id.into())).collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &kind))| kind == 3)
        .map(|(id, (t, _))| {
            serde_json::json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                               "normalized": false, "special": true})
        })
        .collect();
    let byte_level =
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    });
    Some(json.to_string().parse().unwrap())
}

/// Every tokenizer available here, named, with the vocabulary kind it should be read as.
fn tokenizers() -> Vec<(&'static str, Tokenizer, VocabKind)> {
    let mut all = vec![("shakespeare", shakespeare(), VocabKind::SentencePiece)];
    all.extend(stories().map(|t| ("stories260K", t, VocabKind::SentencePiece)));
    all.extend(smollm().map(|t| ("smollm2", t, VocabKind::ByteLevel)));
    all
}

/// Pushes `ids` one at a time; returns each push's text and the final flush.
fn stream(table: &Arc<TokenBytes>, ids: &[u32]) -> (Vec<String>, String) {
    let mut decoder = IncrementalDecoder::new(Arc::clone(table));
    let deltas = ids.iter().map(|&id| decoder.push(id)).collect();
    (deltas, decoder.finish())
}

#[test]
fn streamed_text_equals_the_whole_decode() {
    for (name, tokenizer, kind) in tokenizers() {
        let table = Arc::new(TokenBytes::new(&tokenizer));
        assert_eq!(table.kind(), kind, "{name}");
        let len = table.len() as u32;
        // Single-byte tokens (byte fallback, GPT-2's 256 byte chars) build and break multi-byte
        // characters; a uniform draw from a large vocabulary would rarely meet them.
        let short: Vec<u32> = (0..len).filter(|&id| table.get(id).len() == 1).collect();
        assert!(short.len() >= 200, "{name}: {} single-byte tokens", short.len());
        let id = prop_oneof![0..len + 2, proptest::sample::select(short)];
        let mut runner = TestRunner::new(Config::with_cases(400));
        runner
            .run(&proptest::collection::vec(id, 0..48), |ids| {
                let mut decoder = IncrementalDecoder::new(Arc::clone(&table));
                let mut text = String::new();
                for (i, &id) in ids.iter().enumerate() {
                    text.push_str(&decoder.push(id));
                    // Only an incomplete trailing character is held back: what is out plus at
                    // most its one U+FFFD is the decode of the tokens so far.
                    let so_far = table.decode_continuation(&ids[..=i]);
                    prop_assert!(
                        so_far == text || so_far == format!("{text}\u{FFFD}"),
                        "{name}: after {:?}: streamed {text:?}, whole {so_far:?}",
                        &ids[..=i]
                    );
                }
                text.push_str(&decoder.finish());
                let bytes: Vec<u8> = ids.iter().flat_map(|&id| table.get(id).to_vec()).collect();
                prop_assert_eq!(&text, &String::from_utf8_lossy(&bytes));
                prop_assert_eq!(text, table.decode_continuation(&ids));
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

const TEXTS: [&str; 9] = [
    "Hello, world! How are you?",
    "  leading spaces,   runs of them, and a trailing one ",
    "tabs\tand\nnew lines\n\n  indented\r\n",
    "café naïve — “quoted” 😀 日本",
    "Ünïcödé: ÀÉÎÕÜ ñ ç ß ø",
    "emoji 😀🎉👍🏽 in a row",
    "日本語のテキストと中文",
    "x😀y",
    "a",
];

/// The ids of `text` as a prompt would have them, less a leading BOS.
fn encode(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    let ids = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
    match ids.split_first() {
        Some((&first, rest)) if tokenizer.decode(&[first], true).unwrap().is_empty() => rest.to_vec(),
        _ => ids,
    }
}

#[test]
fn texts_round_trip_as_hf_decodes_them() {
    for (name, tokenizer, kind) in tokenizers() {
        let table = Arc::new(TokenBytes::new(&tokenizer));
        for text in TEXTS {
            let ids = encode(&tokenizer, text);
            let hf = tokenizer.decode(&ids, true).unwrap();
            let ours = table.decode_continuation(&ids);
            // Sentencepiece decoding strips the one leading space that marks the first word;
            // a continuation keeps it, as it follows the prompt's text.
            let expected = match kind {
                VocabKind::SentencePiece => format!(" {hf}"),
                _ => hf.clone(),
            };
            assert_eq!(ours, expected, "{name}: {text:?} as {ids:?}");
            // All three tokenizers are lossless on these texts (byte fallback or byte level),
            // but for one quirk: a `Metaspace` pre-tokenizer prepends no `▁` to a text that
            // starts with a space, so that space is the one `Strip` removes.
            let metaspace_quirk = name == "shakespeare" && text.starts_with(' ') && hf == text[1..];
            assert!(hf == text || metaspace_quirk, "{name}: {text:?} decodes as {hf:?}");
            let (deltas, rest) = stream(&table, &ids);
            assert_eq!(deltas.concat() + &rest, ours, "{name}: {text:?}");
            // The text ends on a whole character, so nothing is left for the flush.
            assert!(rest.is_empty(), "{name}: {text:?} left {rest:?}");
        }
    }
}

#[test]
fn byte_tokens_spell_an_emoji() {
    let Some(tokenizer) = stories() else { return };
    let table = Arc::new(TokenBytes::new(&tokenizer));
    let ids: Vec<u32> =
        ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"].iter().map(|t| tokenizer.token_to_id(t).unwrap()).collect();
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), "😀");
    assert_eq!(table.decode_continuation(&ids), "😀");
    let (deltas, rest) = stream(&table, &ids);
    assert_eq!(deltas, ["", "", "", "😀"]);
    assert_eq!(rest, "");
    // Cut short, the held bytes flush as one U+FFFD, as lossy decoding of them gives.
    let (deltas, rest) = stream(&table, &ids[..3]);
    assert_eq!(deltas.concat(), "");
    assert_eq!(rest, "\u{FFFD}");
    assert_eq!(table.token_text(ids[0]), "\u{FFFD}");
}

#[test]
fn embedded_model_keeps_non_ascii_text() {
    let dir = shakespeare_dir();
    let config = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    let tokenizer = TextTokenizer::load(&dir, &config).unwrap();
    let text = "café naïve — “quoted” 😀 日本";
    let ids = tokenizer.encode(text).unwrap();
    assert_eq!(ids[0], tokenizer.bos_id().unwrap());
    assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    assert_eq!(tokenizer.decode_continuation(&ids[1..]), format!(" {text}"));
    let mut decoder = tokenizer.incremental_decoder();
    let streamed: String = ids.iter().map(|&id| decoder.push(id)).collect();
    assert_eq!(streamed + &decoder.finish(), format!(" {text}"));
    // Byte tokens are model pieces, not added tokens: their spelling in a prompt is plain text.
    let newline = tokenizer.inner().token_to_id("<0x0A>").unwrap();
    assert!(!tokenizer.encode("<0x0A>").unwrap().contains(&newline));
    assert_eq!(tokenizer.token_bytes(newline), b"\n");
}

#[test]
fn token_text_and_bytes() {
    let dir = shakespeare_dir();
    let config = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    let tokenizer = TextTokenizer::load(&dir, &config).unwrap();
    let the = tokenizer.inner().token_to_id("▁the").unwrap();
    assert_eq!(tokenizer.token_text(the), " the");
    assert_eq!(tokenizer.token_bytes(the), b" the");
    let eos = tokenizer.eos_ids()[0];
    assert_eq!(tokenizer.token_bytes(eos), b"");
    assert_eq!(tokenizer.token_text(eos), "</s>");
    assert_eq!(tokenizer.token_bytes(u32::MAX), b"");
    let longest = (0..tokenizer.vocab_size() as u32).map(|id| tokenizer.token_bytes(id).len()).max().unwrap();
    assert!(tokenizer.max_token_bytes() >= longest.max("</s>".len()));

    let Some(smollm) = smollm() else { return };
    let table = TokenBytes::new(&smollm);
    let newline = smollm.token_to_id("Ċ").unwrap();
    assert_eq!(table.token_text(newline), "\n");
    assert_eq!(table.token_text(smollm.token_to_id("Ġthe").unwrap()), " the");
    assert_eq!(table.token_text(2), "<|im_end|>");
    assert_eq!(table.get(2), b"");
    assert!(table.max_token_bytes() >= "<|im_start|>".len());
}

/// A prompt of `n` bytes needs at least `n / max_token_bytes` tokens: the server's bound.
#[test]
fn max_token_bytes_bounds_prompt_length() {
    for (name, tokenizer, _) in tokenizers() {
        let table = TokenBytes::new(&tokenizer);
        let extra = ["<s></s><unk>", "<|im_start|>user\nhi<|im_end|>", "▁▁▁▁▁▁▁▁ ▁the ĠtheĠĠĠ ĊĊĊĊ"];
        for text in TEXTS.iter().copied().chain(extra) {
            let tokens = tokenizer.encode(text, false).unwrap().get_ids().len();
            assert!(tokens * table.max_token_bytes() >= text.len(), "{name}: {text:?} in {tokens} tokens");
        }
    }
}
