//! Server configuration: `config/default.toml` keys, each overridable by a flag or a
//! `RECYCLEGPT_*` environment variable (the binary merges them).
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub model: PathBuf,
    /// The `model` name clients send; defaults to the model directory's name.
    pub served_model_name: Option<String>,
    pub max_running_sequences: usize,
    pub kv_budget_tokens: usize,
    pub prefill_chunk: usize,
    pub queue_capacity: usize,
    /// `off`, `alternate` or `verify`.
    pub default_recycle: String,
    pub default_max_tokens: usize,
    pub api_key: Option<String>,
    pub cors_origins: Vec<String>,
    pub body_limit_bytes: usize,
    /// `text` or `json`.
    pub log_format: String,
    pub shutdown_grace_seconds: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// `auto`, `f32`, `f16` or `bf16`.
    pub dtype: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            model: PathBuf::from("models/shakespeare"),
            served_model_name: None,
            max_running_sequences: 16,
            kv_budget_tokens: 16 * 1024,
            prefill_chunk: 128,
            queue_capacity: 64,
            default_recycle: "verify".into(),
            default_max_tokens: 256,
            api_key: None,
            cors_origins: Vec::new(),
            body_limit_bytes: 2 * 1024 * 1024,
            log_format: "text".into(),
            shutdown_grace_seconds: 30,
            device: "auto".into(),
            dtype: "auto".into(),
        }
    }
}

impl ServerConfig {
    pub fn from_toml_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn served_name(&self) -> String {
        self.served_model_name.clone().unwrap_or_else(|| {
            self.model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "recyclegpt".into())
        })
    }
}
