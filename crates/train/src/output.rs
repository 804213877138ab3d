//! Writing a model directory with a trained module.
use crate::TrainError;
use candle_nn::VarMap;
use recyclegpt_model::LlamaConfig;
use std::path::Path;

/// Copies the model's files into `out` (unless it is the model's own directory), then writes
/// `recycle.safetensors` and a `config.json` with the `recycle` block. For a model that is one
/// file (GGUF), `out` gets the module alone: `recycle.safetensors` and the model's configuration
/// with the `recycle` block, which `--recycle DIR` loads beside the file.
pub fn write_model(model_dir: &Path, out: &Path, config: &LlamaConfig, varmap: &VarMap) -> Result<(), TrainError> {
    let io = |path: &Path, e: std::io::Error| TrainError::Data(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    if model_dir.is_file() {
        varmap.save(out.join("recycle.safetensors"))?;
        let path = out.join("config.json");
        let json = serde_json::to_string_pretty(config).map_err(|e| TrainError::Data(e.to_string()))?;
        return std::fs::write(&path, json).map_err(|e| io(&path, e));
    }
    let same = std::fs::canonicalize(model_dir).ok() == std::fs::canonicalize(out).ok();
    if !same {
        for entry in std::fs::read_dir(model_dir).map_err(|e| io(model_dir, e))? {
            let entry = entry.map_err(|e| io(model_dir, e))?;
            let name = entry.file_name();
            if entry.path().is_file() && name != "config.json" && name != "recycle.safetensors" {
                std::fs::copy(entry.path(), out.join(&name)).map_err(|e| io(&entry.path(), e))?;
            }
        }
    }
    varmap.save(out.join("recycle.safetensors"))?;
    // The original config.json, with the recycle block added: keys this project does not model stay.
    let original = model_dir.join("config.json");
    let text = std::fs::read_to_string(&original).map_err(|e| io(&original, e))?;
    let mut json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| TrainError::Data(format!("{}: {e}", original.display())))?;
    json["recycle"] = serde_json::to_value(&config.recycle).map_err(|e| TrainError::Data(e.to_string()))?;
    let path = out.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).map_err(|e| TrainError::Data(e.to_string()))?)
        .map_err(|e| io(&path, e))
}
