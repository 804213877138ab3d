//! Converts a llama2.c checkpoint and tokenizer into the HuggingFace layout this project loads.
mod checkpoint;
mod vocab;

use crate::error::{ModelError, Result};
use std::path::Path;

pub use checkpoint::Checkpoint;
pub use vocab::Vocabulary;
pub(crate) use vocab::{Kind, SpmOptions};

/// Writes `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` and
/// `generation_config.json` into `out`.
pub fn convert(checkpoint: &Path, tokenizer: &Path, out: &Path) -> Result<()> {
    let checkpoint = Checkpoint::read(checkpoint)?;
    let vocab = Vocabulary::read(tokenizer)?;
    if vocab.len() != checkpoint.vocab_size() {
        return Err(ModelError::file(
            tokenizer,
            format!("{} tokens, but the checkpoint's vocabulary has {}", vocab.len(), checkpoint.vocab_size()),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| ModelError::file(out, e))?;
    checkpoint.write_safetensors(&out.join("model.safetensors"))?;
    write_json(&out.join("config.json"), &checkpoint.hf_config())?;
    write_json(&out.join("tokenizer.json"), &vocab.tokenizer_json(SpmOptions::LLAMA2C))?;
    write_json(
        &out.join("tokenizer_config.json"),
        &serde_json::json!({
            "tokenizer_class": "LlamaTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": true,
            "add_eos_token": false,
            "model_max_length": checkpoint.seq_len(),
        }),
    )?;
    // llama2.c models are trained with BOS as the story delimiter and llama2.c stops on it.
    write_json(
        &out.join("generation_config.json"),
        &serde_json::json!({ "bos_token_id": 1, "eos_token_id": [2, 1], "do_sample": false }),
    )?;
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::file(path, e))?;
    std::fs::write(path, text).map_err(|e| ModelError::file(path, e))
}
