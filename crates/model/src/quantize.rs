//! `--quantize`: which format linear layers are kept in, and how `auto` picks one.
use crate::error::{ModelError, Result};
use crate::gguf::is_gguf;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use recyclegpt_kernels::{HalfFormat, HalfMatrix, LowBitFormat, LowBitMatrix, Q8Matrix, QuantMatrix};
use std::path::Path;

/// The format linear layers are kept in from load; against the integer formats, activations are
/// quantized to int8 per block of 32 for each product (against F16 and BF16 they stay f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// Blocks of 32 int8 values with one scale.
    Q8_0,
    /// Blocks of 32 4-bit values, symmetric (llama.cpp's Q4_0).
    Q4_0,
    /// Blocks of 32 4-bit values with a minimum (llama.cpp's Q4_1).
    Q4_1,
    /// Blocks of 32 5-bit values, symmetric (llama.cpp's Q5_0).
    Q5_0,
    /// Blocks of 32 5-bit values with a minimum (llama.cpp's Q5_1).
    Q5_1,
    /// llama.cpp's Q4_K, Q5_K and Q6_K: blocks of 256 values in 4, 5 or 6 bits, with scales per
    /// 32 (or 16) values. A matrix whose rows are not whole blocks of 256 takes
    /// [`Quantization::fallback`] instead.
    Q4K,
    Q5K,
    Q6K,
    /// 16-bit floats, products against unrounded activations.
    F16,
    BF16,
    /// Each GGUF tensor in the type the file stores it in where a kernel has that type (the
    /// formats above), the others (F32) in Q8_0; a safetensors file's F16 and BF16 tensors as
    /// stored, its F32 ones unquantized; random weights in Q8_0. A model's recyclable module
    /// takes the format of the base's layers. What `--quantize auto` picks on the CPU.
    AsStored,
}

/// The formats a GGUF tensor is kept in as it is stored.
const KEPT_AS_STORED: [Quantization; 10] = [
    Quantization::Q8_0,
    Quantization::Q4_0,
    Quantization::Q4_1,
    Quantization::Q5_0,
    Quantization::Q5_1,
    Quantization::Q4K,
    Quantization::Q5K,
    Quantization::Q6K,
    Quantization::F16,
    Quantization::BF16,
];

impl std::str::FromStr for Quantization {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "q8_0" => Ok(Quantization::Q8_0),
            "q4_0" => Ok(Quantization::Q4_0),
            "q4_1" => Ok(Quantization::Q4_1),
            "q5_0" => Ok(Quantization::Q5_0),
            "q5_1" => Ok(Quantization::Q5_1),
            "q4_k" => Ok(Quantization::Q4K),
            "q5_k" => Ok(Quantization::Q5K),
            "q6_k" => Ok(Quantization::Q6K),
            "f16" => Ok(Quantization::F16),
            "bf16" => Ok(Quantization::BF16),
            other => Err(ModelError::Config(format!("unknown quantization `{other}` (supported: {FORMATS})"))),
        }
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quantization::AsStored => f.write_str("as stored"),
            Quantization::BF16 => f.write_str("bf16"),
            Quantization::Q4K => f.write_str("q4_k"),
            Quantization::Q5K => f.write_str("q5_k"),
            Quantization::Q6K => f.write_str("q6_k"),
            format => f.write_str(&format!("{format:?}").to_lowercase()),
        }
    }
}

impl Quantization {
    /// llama.cpp's type of the same blocks (`AsStored`: none).
    pub fn ggml_type(self) -> Option<GgmlDType> {
        match self {
            Quantization::Q8_0 => Some(GgmlDType::Q8_0),
            Quantization::Q4_0 => Some(GgmlDType::Q4_0),
            Quantization::Q4_1 => Some(GgmlDType::Q4_1),
            Quantization::Q5_0 => Some(GgmlDType::Q5_0),
            Quantization::Q5_1 => Some(GgmlDType::Q5_1),
            Quantization::Q4K => Some(GgmlDType::Q4K),
            Quantization::Q5K => Some(GgmlDType::Q5K),
            Quantization::Q6K => Some(GgmlDType::Q6K),
            Quantization::F16 => Some(GgmlDType::F16),
            Quantization::BF16 => Some(GgmlDType::BF16),
            Quantization::AsStored => None,
        }
    }

    /// The format a GGUF tensor stored as `stored` is kept in as it is, if a kernel has it.
    pub fn of_stored(stored: GgmlDType) -> Option<Self> {
        KEPT_AS_STORED.into_iter().find(|format| format.ggml_type() == Some(stored))
    }

    /// The format a K-quant's blocks are read in, if this is one.
    pub fn k_quant(self) -> Option<LowBitFormat> {
        match self {
            Quantization::Q4K => Some(LowBitFormat::Q4K),
            Quantization::Q5K => Some(LowBitFormat::Q5K),
            Quantization::Q6K => Some(LowBitFormat::Q6K),
            _ => None,
        }
    }

    /// The format a matrix whose rows are not whole K blocks of 256 values takes instead of a
    /// K-quant (Q4_1, Q5_1, Q8_0 in their places); the others are themselves.
    pub fn fallback(self) -> Self {
        match self {
            Quantization::Q4K => Quantization::Q4_1,
            Quantization::Q5K => Quantization::Q5_1,
            Quantization::Q6K => Quantization::Q8_0,
            other => other,
        }
    }

    /// `values` (`rows × cols`, row-major) in this format (`AsStored`: Q8_0; a K-quant where
    /// `cols` is not a multiple of 256: its [`Quantization::fallback`]); `None` unless `cols` is
    /// a positive multiple of 32 (F16, BF16: positive).
    pub fn quantize(self, values: &[f32], rows: usize, cols: usize) -> Option<QuantMatrix> {
        if let (Some(format), Some(ggml)) = (self.k_quant(), self.ggml_type()) {
            if let Some(matrix) = k_blocks(values, rows, cols, format, ggml) {
                return Some(QuantMatrix::LowBit(matrix));
            }
        }
        let low_bit = |format| LowBitMatrix::quantize(values, rows, cols, format).map(QuantMatrix::LowBit);
        match self.fallback() {
            Quantization::Q8_0 | Quantization::AsStored | Quantization::Q4K | Quantization::Q5K | Quantization::Q6K => {
                Q8Matrix::quantize(values, rows, cols).map(QuantMatrix::Q8_0)
            }
            Quantization::Q4_0 => low_bit(LowBitFormat::Q4_0),
            Quantization::Q4_1 => low_bit(LowBitFormat::Q4_1),
            Quantization::Q5_0 => low_bit(LowBitFormat::Q5_0),
            Quantization::Q5_1 => low_bit(LowBitFormat::Q5_1),
            Quantization::F16 => HalfMatrix::quantize(values, rows, cols, HalfFormat::F16).map(QuantMatrix::Half),
            Quantization::BF16 => HalfMatrix::quantize(values, rows, cols, HalfFormat::BF16).map(QuantMatrix::Half),
        }
    }
}

/// The formats `--quantize` names.
const FORMATS: &str = "q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, f16, bf16";

/// `values` (`rows × cols`) in llama.cpp's blocks of the K-quant `format` (`ggml`), through
/// candle's port of llama.cpp's reference quantizer (it searches for each block's scales: one
/// kept implementation rather than a second); `None` unless `cols` is a positive multiple of 256.
fn k_blocks(values: &[f32], rows: usize, cols: usize, format: LowBitFormat, ggml: GgmlDType) -> Option<LowBitMatrix> {
    let row_bytes = cols / ggml.block_size() * format.ggml_block_bytes()?;
    if cols == 0 || !cols.is_multiple_of(ggml.block_size()) || values.len() != rows * cols {
        return None;
    }
    let tensor = Tensor::from_slice(values, (rows, cols), &Device::Cpu).ok()?;
    let blocks = QTensor::quantize(&tensor, ggml).ok()?.data().ok()?.into_owned();
    let rows: Vec<&[u8]> = blocks.chunks_exact(row_bytes).collect();
    LowBitMatrix::from_ggml(format, cols, &rows)
}

/// What `--quantize` asks for, resolved against the model and device before loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantizeSpec {
    /// On the CPU, for a GGUF file each tensor as the file stores it where the kernels have its
    /// type (kept exactly) and Q8_0 for any other (users of such files expect quantized speed);
    /// for a model directory its F16 and BF16 tensors as stored (exact, at half f32's bytes);
    /// none otherwise.
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
                ModelError::Config(format!("unknown quantization `{other}` (supported: auto, none, {FORMATS})"))
            }),
        }
    }
}

impl QuantizeSpec {
    /// The quantization to load `model` with on `device`.
    pub fn resolve(self, model: &Path, device: &Device) -> Option<Quantization> {
        match self {
            QuantizeSpec::Auto if (is_gguf(model) || model.is_dir()) && device.is_cpu() => Some(Quantization::AsStored),
            QuantizeSpec::Auto | QuantizeSpec::None => None,
            QuantizeSpec::Format(format) => Some(format),
        }
    }
}
