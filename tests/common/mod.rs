//! Shared helpers: where the test models live, and loading them.
#![allow(dead_code)]
pub mod browser;
pub mod dockerfile;
pub mod gemma3;
pub mod llamacpp;
pub mod server;

use recyclegpt_engine::{generate, DecodeMode, Generation, SamplingParams, StopCriteria};
use recyclegpt_model::{LoadOptions, LoadedModel, RecycleInit};
use std::path::PathBuf;

/// The embedded model's context length (`max_position_embeddings` in its config.json).
pub fn embedded_context() -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare");
    let text = std::fs::read_to_string(dir.join("config.json")).expect("the embedded model's config.json");
    let config: serde_json::Value = serde_json::from_str(&text).expect("config.json is JSON");
    config["max_position_embeddings"].as_u64().expect("max_position_embeddings") as usize
}

/// `../shared/models/stories260K`, or `None` (with a note saying what is missing) outside CI.
/// In CI (`CI=true`) a missing model fails the test.
pub fn stories260k() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models/stories260K");
    if dir.join("hf/model.safetensors").exists() {
        return Some(dir);
    }
    let message = format!(
        "missing {}: the stories260K test model (hf/ and llama2c/) must sit in ../shared/models/",
        dir.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    // One line per test binary, not one per test.
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| eprintln!("SKIPPED: the tests of this file that need it ({message})"));
    None
}

/// The SmolLM2 GGUF file in ../shared, or `None` with one line saying what is missing (a
/// failure in CI).
pub fn smollm2() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        return Some(path);
    }
    let message = format!("missing {}: the SmolLM2 GGUF test model must sit in ../shared/models/", path.display());
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| eprintln!("SKIPPED: the tests of this file that need it ({message})"));
    None
}

pub fn load(dir: &std::path::Path, recycle_init: RecycleInit) -> LoadedModel {
    let options = LoadOptions { recycle_init, ..LoadOptions::default() };
    LoadedModel::load(dir, &options).expect("the model loads")
}

pub fn random_module(seed: u64) -> RecycleInit {
    RecycleInit::Random { seed, layers: 1 }
}

/// llama2.c's reference: (prompt ids after BOS, generated ids).
pub fn reference(dir: &std::path::Path, name: &str) -> (String, Vec<u32>) {
    let ids_text = std::fs::read_to_string(dir.join(format!("reference/{name}.ids"))).expect("reference ids");
    let ids = ids_text.split_whitespace().map(|t| t.parse().expect("an id")).collect();
    let prompt = match name {
        "once_upon_a_time" => "Once upon a time",
        "lily_tom_park" => "Lily and Tom went to the park",
        other => panic!("no prompt known for {other}"),
    };
    (prompt.to_string(), ids)
}

pub fn run(
    loaded: &LoadedModel,
    prompt: &str,
    mode: DecodeMode,
    params: SamplingParams,
    max_tokens: usize,
) -> Generation {
    let ids = loaded.tokenizer.encode(prompt).expect("encodes");
    let stop = StopCriteria { max_tokens, eos_ids: loaded.tokenizer.eos_ids().to_vec() };
    generate(&loaded.model, ids, mode, params, stop).expect("generates")
}

/// A scratch directory under the target directory, emptied first.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}
