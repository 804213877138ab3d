//! Where the model runs and in what precision: `--device cpu|cuda[:N]|auto` and
//! `--dtype auto|f32|f16|bf16`, resolved once at load time.
use crate::error::{ModelError, Result};
use candle_core::{DType, Device};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// CUDA device 0 when the binary has CUDA and a GPU is present, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => {
                other.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Self::Cuda).ok_or_else(|| {
                    ModelError::Config(format!("unknown device `{s}`: expected cpu, cuda, cuda:N or auto"))
                })
            }
        }
    }
}

impl DeviceSpec {
    pub fn resolve(self) -> Result<Device> {
        let device = match self {
            Self::Cpu => Device::Cpu,
            Self::Cuda(ordinal) => cuda(ordinal)?,
            Self::Auto if candle_core::utils::cuda_is_available() => match cuda(0) {
                Ok(device) => device,
                Err(e) => {
                    tracing::warn!(error = %e, "CUDA is compiled in but no GPU is usable; running on the CPU");
                    Device::Cpu
                }
            },
            Self::Auto => Device::Cpu,
        };
        Ok(device)
    }
}

fn cuda(ordinal: usize) -> Result<Device> {
    if !candle_core::utils::cuda_is_available() {
        return Err(ModelError::Device(
            "this binary was built without CUDA: rebuild with `cargo build --release --features cuda` \
             (scripts/cuda-toolchain.sh sets up the compiler)"
                .into(),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| ModelError::Device(format!("CUDA device {ordinal} is not usable: {e}")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeSpec {
    /// f32 on the CPU (the decode kernels are f32), f16 on a GPU.
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

impl FromStr for DTypeSpec {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(ModelError::Config(format!("unknown dtype `{s}`: expected auto, f32, f16 or bf16"))),
        }
    }
}

impl DTypeSpec {
    pub fn resolve(self, device: &Device) -> DType {
        match self {
            Self::Auto if device.is_cpu() => DType::F32,
            Self::Auto => DType::F16,
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

/// A short name for logs and `/v1/models`: `cpu` or `cuda:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_and_dtype_names() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("CUDA:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!("bfloat16".parse::<DTypeSpec>().unwrap(), DTypeSpec::Bf16);
        assert!("f8".parse::<DTypeSpec>().is_err());
        assert_eq!(DTypeSpec::Auto.resolve(&Device::Cpu), DType::F32);
    }

    #[test]
    fn auto_falls_back_to_the_cpu_and_cuda_without_the_feature_says_how_to_get_it() {
        if candle_core::utils::cuda_is_available() {
            return;
        }
        assert!(DeviceSpec::Auto.resolve().unwrap().is_cpu());
        let message = DeviceSpec::Cuda(0).resolve().unwrap_err().to_string();
        assert!(message.contains("--features cuda"), "{message}");
    }
}
