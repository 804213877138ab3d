//! Options every command that loads a model shares.
use anyhow::Context;
use clap::{Args, ValueEnum};
use recyclegpt_model::{LoadOptions, LoadedModel, RecycleInit};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RecycleInitArg {
    /// `recycle.safetensors` beside the model, if the model has one.
    File,
    /// A randomly initialised module: for benchmarks and tests only, it rarely agrees.
    Random,
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory in the HuggingFace layout (default: the embedded Shakespeare model).
    #[arg(long, env = "RECYCLEGPT_MODEL", default_value = "models/shakespeare")]
    pub model: PathBuf,
    /// Where the recyclable module comes from.
    #[arg(long, value_enum, default_value = "file")]
    pub recycle_init: RecycleInitArg,
    /// Layers of a random module (with `--recycle-init random` on a model without a `recycle` block).
    #[arg(long, default_value_t = 1)]
    pub recycle_layers: usize,
    /// Seed of a random module.
    #[arg(long, default_value_t = 0)]
    pub recycle_seed: u64,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        let recycle_init = match self.recycle_init {
            RecycleInitArg::File => RecycleInit::FromFiles,
            RecycleInitArg::Random => {
                tracing::warn!("using a RANDOMLY INITIALISED recyclable module: for benchmarks and tests only");
                RecycleInit::Random {
                    seed: self.recycle_seed,
                    layers: self.recycle_layers,
                }
            }
        };
        let options = LoadOptions {
            recycle_init,
            ..LoadOptions::default()
        };
        LoadedModel::load(&self.model, &options)
            .with_context(|| format!("loading the model from {}", self.model.display()))
    }
}
