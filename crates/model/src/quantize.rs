//! `--quantize`: which format linear layers are kept in, and how `auto` picks one.
use crate::error::{ModelError, Result};
use crate::gguf::{is_gguf, GgufFile};
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use recyclegpt_kernels::{Q4Format, Q4Matrix, Q8Matrix, QuantMatrix};
use std::path::Path;

/// The format linear layers are quantized to at load; activations are quantized to int8 per
/// block of 32 for each product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// Blocks of 32 int8 values with one scale.
    Q8_0,
    /// Blocks of 32 4-bit values, symmetric (llama.cpp's Q4_0).
    Q4_0,
    /// Blocks of 32 4-bit values with a minimum (llama.cpp's Q4_1).
    Q4_1,
}

impl std::str::FromStr for Quantization {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "q8_0" => Ok(Quantization::Q8_0),
            "q4_0" => Ok(Quantization::Q4_0),
            "q4_1" => Ok(Quantization::Q4_1),
            other => Err(ModelError::Config(format!("unknown quantization `{other}` (supported: q8_0, q4_0, q4_1)"))),
        }
    }
}

impl Quantization {
    /// llama.cpp's type of the same blocks.
    pub fn ggml_type(self) -> GgmlDType {
        match self {
            Quantization::Q8_0 => GgmlDType::Q8_0,
            Quantization::Q4_0 => GgmlDType::Q4_0,
            Quantization::Q4_1 => GgmlDType::Q4_1,
        }
    }

    /// `values` (`rows × cols`, row-major) in this format; `None` unless `cols` is a positive
    /// multiple of 32.
    pub fn quantize(self, values: &[f32], rows: usize, cols: usize) -> Option<QuantMatrix> {
        match self {
            Quantization::Q8_0 => Q8Matrix::quantize(values, rows, cols).map(QuantMatrix::Q8_0),
            Quantization::Q4_0 => Q4Matrix::quantize(values, rows, cols, Q4Format::Q4_0).map(QuantMatrix::Q4),
            Quantization::Q4_1 => Q4Matrix::quantize(values, rows, cols, Q4Format::Q4_1).map(QuantMatrix::Q4),
        }
    }
}

/// What `--quantize` asks for, resolved against the model and device before loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantizeSpec {
    /// For a GGUF file on the CPU, the file's own format where the kernels have it (Q4_0, Q4_1:
    /// kept exactly) and Q8_0 for any other (users of such files expect quantized speed); none
    /// otherwise.
    #[default]
    Auto,
    None,
    Format(Quantization),
}

impl std::str::FromStr for QuantizeSpec {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(QuantizeSpec::Auto),
            "none" => Ok(QuantizeSpec::None),
            other => other.parse().map(QuantizeSpec::Format).map_err(|_| {
                ModelError::Config(format!("unknown quantization `{other}` (supported: auto, none, q8_0, q4_0, q4_1)"))
            }),
        }
    }
}

impl QuantizeSpec {
    /// The quantization to load `model` with on `device`.
    pub fn resolve(self, model: &Path, device: &Device) -> Option<Quantization> {
        match self {
            QuantizeSpec::Auto if is_gguf(model) && device.is_cpu() => {
                // A file that does not open is reported by the load itself.
                let stored = GgufFile::open(model).ok().and_then(|file| file.linear_type());
                Some(match stored {
                    Some(GgmlDType::Q4_0) => Quantization::Q4_0,
                    Some(GgmlDType::Q4_1) => Quantization::Q4_1,
                    _ => Quantization::Q8_0,
                })
            }
            QuantizeSpec::Auto | QuantizeSpec::None => None,
            QuantizeSpec::Format(format) => Some(format),
        }
    }
}
