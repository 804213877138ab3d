//! A byte-fallback BPE tokenizer trained on the corpus (sentencepiece-style: `▁` marks word
//! starts; bytes outside the vocabulary fall back to `<0xNN>` tokens), in `tokenizer.json` form.
use crate::TrainError;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::BpeTrainerBuilder;
use tokenizers::models::TrainerWrapper;
use tokenizers::{AddedToken, Tokenizer};

/// Special tokens first (ids 0, 1, 2), then the 256 byte tokens (ids 3..259, ordinary tokens in
/// the written `tokenizer.json`).
pub const SPECIAL: [&str; 3] = ["<unk>", "<s>", "</s>"];

fn template() -> String {
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true},
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": {}, "merges": []}
    })
    .to_string()
}

fn byte_token(b: u8) -> String {
    format!("<0x{b:02X}>")
}

/// The byte tokens go to the trainer as special tokens only to reserve their ids (3..259); the
/// trainer then lists them as special added tokens too, which decoding drops (every non-ASCII
/// character would vanish from the output) and encoding matches in input text (a typed
/// `<0x0A>` would become a newline). Removed from `added_tokens`, they stay in the model's
/// vocabulary under the same ids as the ordinary pieces byte fallback spells text with.
fn unmark_byte_tokens(json: &mut serde_json::Value) -> Result<(), String> {
    for b in 0..=255u8 {
        let id = json["model"]["vocab"][byte_token(b)].as_u64();
        if id != Some(SPECIAL.len() as u64 + u64::from(b)) {
            return Err(format!("byte token {} has id {id:?} in the trained vocabulary", byte_token(b)));
        }
    }
    let added = json["added_tokens"].as_array_mut().ok_or("tokenizer.json has no added_tokens list")?;
    added.retain(|token| !token["content"].as_str().is_some_and(|c| (0..=255u8).any(|b| c == byte_token(b))));
    Ok(())
}

/// Trains a tokenizer of `vocab_size` tokens on `files` and writes `tokenizer.json` and
/// `tokenizer_config.json` into `out`.
pub fn train_tokenizer(files: &[PathBuf], vocab_size: usize, out: &Path) -> Result<(), TrainError> {
    let fail = |e: String| TrainError::Data(format!("tokenizer training: {e}"));
    if vocab_size < SPECIAL.len() + 256 + 16 {
        return Err(TrainError::Data(format!(
            "vocab_size {vocab_size} leaves no room beyond the 259 special and byte tokens"
        )));
    }
    let mut tokenizer: Tokenizer = template().parse().map_err(|e| fail(format!("{e}")))?;
    let mut specials: Vec<AddedToken> = SPECIAL.iter().map(|t| AddedToken::from(*t, true)).collect();
    specials.extend((0..=255u8).map(|b| AddedToken::from(byte_token(b), true)));
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    tokenizer.train_from_files(&mut trainer, names).map_err(|e| fail(format!("{e}")))?;
    let mut json: serde_json::Value =
        serde_json::from_str(&tokenizer.to_string(false).map_err(|e| fail(format!("{e}")))?)
            .map_err(|e| fail(e.to_string()))?;
    unmark_byte_tokens(&mut json).map_err(fail)?;
    // BOS in front of every encoded text, as Llama tokenizers do.
    json["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
    });
    let write = |name: &str, value: &serde_json::Value| {
        std::fs::write(out.join(name), serde_json::to_string_pretty(value).unwrap_or_default())
            .map_err(|e| TrainError::Data(format!("{}: {e}", out.join(name).display())))
    };
    write("tokenizer.json", &json)?;
    write(
        "tokenizer_config.json",
        &serde_json::json!({"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                            "unk_token": "<unk>", "add_bos_token": true, "add_eos_token": false}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokens_are_ordinary_tokens_with_their_reserved_ids() {
        let dir = std::env::temp_dir().join(format!("recyclegpt-tokenizer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let corpus = dir.join("corpus.txt");
        let line = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer\n";
        std::fs::write(&corpus, line.repeat(50)).unwrap();
        train_tokenizer(&[corpus], 300, &dir).unwrap();
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let added: Vec<&str> =
            json["added_tokens"].as_array().unwrap().iter().map(|t| t["content"].as_str().unwrap()).collect();
        assert_eq!(added, SPECIAL);
        for b in 0..=255u8 {
            assert_eq!(tokenizer.token_to_id(&byte_token(b)), Some(3 + u32::from(b)));
        }
        let text = "café naïve — 😀 日本";
        let ids = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), text);
        // A byte token's spelling in input text is text, not the byte.
        assert!(!tokenizer.encode("<0x0A>", true).unwrap().get_ids().contains(&13));
    }
}
