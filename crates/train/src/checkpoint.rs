//! The output directory is both the model (HuggingFace layout plus the module) and the
//! checkpoint: optimizer moments and the step live beside the weights.
use crate::optim::AdamW;
use crate::TrainError;
use candle_core::Var;
use candle_nn::VarMap;
use recyclegpt_model::LlamaConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const STATE: &str = "trainer_state.json";
const OPTIMIZER: &str = "optimizer.safetensors";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub step: usize,
    pub tokens_seen: usize,
}

fn io(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Data(format!("{}: {e}", path.display()))
}

pub fn copy_tokenizer(from: &Path, to: &Path) -> Result<(), TrainError> {
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        let source = from.join(name);
        if source.exists() {
            std::fs::copy(&source, to.join(name)).map_err(|e| io(&source, e))?;
        } else if name == "tokenizer.json" {
            return Err(io(&source, "file not found"));
        }
    }
    Ok(())
}

pub fn vocab_size(dir: &Path) -> Result<usize, TrainError> {
    let path = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&path).map_err(|e| io(&path, e))?;
    Ok(tokenizer.get_vocab_size(true))
}

pub fn write_configs(out: &Path, config: &LlamaConfig) -> Result<(), TrainError> {
    let mut json = serde_json::to_value(config).map_err(|e| io(out, e))?;
    json["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    json["model_type"] = serde_json::json!("llama");
    let write = |name: &str, value: &serde_json::Value| {
        let path = out.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(value).unwrap_or_default()).map_err(|e| io(&path, e))
    };
    write("config.json", &json)?;
    write("generation_config.json", &serde_json::json!({"bos_token_id": 1, "eos_token_id": 2}))
}

/// Every trainable variable, base first, each list sorted by name.
pub fn named_vars(base: &VarMap, module: &VarMap) -> Vec<(String, Var)> {
    let mut all = Vec::new();
    for (prefix, map) in [("base", base), ("recycle", module)] {
        if let Ok(vars) = map.data().lock() {
            let mut named: Vec<(String, Var)> =
                vars.iter().map(|(n, v)| (format!("{prefix}.{n}"), v.clone())).collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            all.extend(named);
        }
    }
    all
}

pub fn save(
    out: &Path,
    base: &VarMap,
    module: &VarMap,
    optimizer: &AdamW,
    state: &TrainState,
) -> Result<(), TrainError> {
    base.save(out.join("model.safetensors"))?;
    module.save(out.join("recycle.safetensors"))?;
    optimizer.save(&out.join(OPTIMIZER))?;
    let path = out.join(STATE);
    std::fs::write(&path, serde_json::to_string_pretty(state).unwrap_or_default()).map_err(|e| io(&path, e))
}

pub fn load(out: &Path, base: &VarMap, module: &VarMap, optimizer: &mut AdamW) -> Result<TrainState, TrainError> {
    let mut base = base.clone();
    let mut module = module.clone();
    base.load(out.join("model.safetensors"))?;
    module.load(out.join("recycle.safetensors"))?;
    optimizer.load(&out.join(OPTIMIZER))?;
    let path = out.join(STATE);
    let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| io(&path, e))
}
