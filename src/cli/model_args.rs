//! Options every command that loads a model shares.
use anyhow::Context;
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use recyclegpt_model::{DTypeSpec, DeviceSpec, LoadOptions, LoadedModel, QuantizeSpec, RecycleInit};
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
    /// A trained recyclable module in its own directory (what `train-recycle --out` writes),
    /// for a model without one beside it (a GGUF file).
    #[arg(long, env = "RECYCLEGPT_RECYCLE", conflicts_with = "recycle_init")]
    pub recycle: Option<PathBuf>,
    /// Layers of a random module (with `--recycle-init random` on a model without a `recycle` block).
    #[arg(long, default_value_t = 1)]
    pub recycle_layers: usize,
    /// Seed of a random module.
    #[arg(long, default_value_t = 0)]
    pub recycle_seed: u64,
    #[command(flatten)]
    pub placement: PlacementArgs,
}

/// Where the model runs and in what precision.
#[derive(Args, Debug, Clone)]
pub struct PlacementArgs {
    /// cpu, cuda, cuda:N or auto (CUDA when compiled in and a GPU is present, else the CPU).
    #[arg(long, env = "RECYCLEGPT_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// auto (f32 on the CPU, f16 on a GPU), f32, f16 or bf16.
    #[arg(long, env = "RECYCLEGPT_DTYPE", default_value = "auto")]
    pub dtype: DTypeSpec,
    /// auto (on the CPU, a GGUF file: each tensor in its own Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/K-quant/
    /// F16/BF16 blocks, F32 in q8_0; a model directory: its F16/BF16 tensors as stored, F32
    /// unquantized; on a GPU: none), none, q8_0, q4_0, q4_1, q5_0, q5_1,
    /// q4_k, q5_k, q6_k, f16 or bf16: keep the linear layers of the model and its module in that
    /// format (CPU; a K-quant where rows are not whole blocks of 256 falls back to q4_1, q5_1,
    /// q8_0).
    #[arg(long, env = "RECYCLEGPT_QUANTIZE", default_value = "auto")]
    pub quantize: QuantizeSpec,
}

impl PlacementArgs {
    pub fn resolve(&self) -> anyhow::Result<(Device, DType)> {
        resolve_placement(self.device, self.dtype)
    }
}

pub fn resolve_placement(device: DeviceSpec, dtype: DTypeSpec) -> anyhow::Result<(Device, DType)> {
    let device = device.resolve()?;
    let dtype = dtype.resolve(&device);
    tracing::info!(device = %recyclegpt_model::device_name(&device), ?dtype, "placement");
    Ok((device, dtype))
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        let recycle_init = match (self.recycle_init, &self.recycle) {
            (RecycleInitArg::File, Some(dir)) => RecycleInit::FromDir(dir.clone()),
            (RecycleInitArg::File, None) => RecycleInit::FromFiles,
            (RecycleInitArg::Random, _) => {
                tracing::warn!("using a RANDOMLY INITIALISED recyclable module: for benchmarks and tests only");
                RecycleInit::Random { seed: self.recycle_seed, layers: self.recycle_layers }
            }
        };
        let (device, dtype) = self.placement.resolve()?;
        let quantize = self.placement.quantize.resolve(&self.model, &device);
        let options = LoadOptions { recycle_init, device, dtype, quantize };
        LoadedModel::load(&self.model, &options)
            .with_context(|| format!("loading the model from {}", self.model.display()))
    }
}
