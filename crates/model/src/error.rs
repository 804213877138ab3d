use std::path::PathBuf;

/// Every failure the model crate reports: each names the file (and tensor) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{}: tensor `{name}`: {message}", path.display())]
    Tensor { path: PathBuf, name: String, message: String },
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("device: {0}")]
    Device(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        ModelError::File { path: path.into(), message: message.to_string() }
    }
}
