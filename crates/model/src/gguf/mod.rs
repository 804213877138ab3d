//! llama.cpp's GGUF files (v2/v3, `general.architecture` `llama`, `qwen2`, `qwen3`, `phi3` or
//! `gemma3`): the configuration from the architecture's metadata (`llama.*`, `qwen2.*`, ...),
//! the tokenizer and chat template from `tokenizer.*`, and tensors read through candle's GGUF
//! reader and dequantized as the model asks for them, under the names of the HuggingFace
//! layout. For
//! Llama, llama.cpp stores the Q and K rows of each head interleaved for its pair-wise RoPE;
//! they are put back in the rotate-half order this model uses (the other families' files keep
//! that order).
mod alignment;
mod names;
mod tokenizer;

use crate::config::{Family, LlamaConfig, SlidingWindow, TokenIds};
use crate::error::{ModelError, Result};
use crate::tokenizer::TextTokenizer;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use names::{gguf_name, rotate_half_order, Fused, Rows};
use std::cell::RefCell;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// A tensor as a GGUF file stores it ([`GgufFile::stored_rows`]).
pub(crate) struct StoredRows {
    pub(crate) dtype: candle_core::quantized::GgmlDType,
    /// The stored rows, `row_bytes` each.
    pub(crate) bytes: Vec<u8>,
    pub(crate) row_bytes: usize,
    /// The stored row of each of the model's rows.
    pub(crate) order: Vec<usize>,
}

pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: RefCell<BufReader<File>>,
    /// `general.architecture`: the prefix of the model's metadata keys.
    architecture: String,
    family: Family,
}

/// Why candle could not read a file: a tensor type it does not know is named, with the types
/// that load; anything else is a file cut short or corrupt.
fn unreadable(error: &str) -> String {
    // ggml's type numbers (ggml.h) of the types candle cannot read.
    const UNKNOWN: [(u32, &str); 17] = [
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
    ];
    // (candle's message, then its backtrace when one is captured)
    let first_line = error.lines().next().unwrap_or_default();
    let Some(number) = first_line.strip_prefix("unknown dtype for tensor ").and_then(|n| n.trim().parse::<u32>().ok())
    else {
        return format!("not a readable GGUF file (truncated or corrupt?): {error}");
    };
    let name = UNKNOWN.iter().find(|(n, _)| *n == number).map_or("an unknown type", |(_, name)| name);
    format!(
        "a tensor is stored as ggml type {number} ({name}), which is not supported: GGUF files load with \
         F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K to Q8_K tensors"
    )
}

/// Whether a path names a GGUF file (by its extension).
pub fn is_gguf(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::file(path, e))?;
        let mut reader = BufReader::new(file);
        alignment::check(&mut reader).map_err(|e| ModelError::file(path, e))?;
        let content = Content::read(&mut reader).map_err(|e| ModelError::file(path, unreadable(&e.to_string())))?;
        let architecture = match content.metadata.get("general.architecture").map(Value::to_string) {
            Some(Ok(architecture)) => architecture.clone(),
            _ => return Err(ModelError::file(path, "metadata `general.architecture` is missing or not a string")),
        };
        let Some(family) = Family::from_gguf(&architecture) else {
            return Err(ModelError::file(
                path,
                format!(
                    "architecture `{architecture}` is not supported: {} GGUF files are served",
                    Family::gguf_names()
                ),
            ));
        };
        Ok(Self { path: path.to_path_buf(), content, reader: RefCell::new(reader), architecture, family })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| ModelError::file(&self.path, format!("metadata `{key}` is missing")))
    }

    fn bad(&self, key: &str, e: impl std::fmt::Display) -> ModelError {
        ModelError::file(&self.path, format!("metadata `{key}`: {e}"))
    }

    fn string(&self, key: &str) -> Result<String> {
        self.value(key)?.to_string().cloned().map_err(|e| self.bad(key, e))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let value = self.value(key)?;
        value.to_u64().or_else(|_| value.to_u32().map(u64::from)).map(|v| v as usize).map_err(|e| self.bad(key, e))
    }

    fn optional_usize(&self, key: &str) -> Result<Option<usize>> {
        if self.content.metadata.contains_key(key) {
            self.usize(key).map(Some)
        } else {
            Ok(None)
        }
    }

    fn optional_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(v) => v.to_f32().map(|f| Some(f64::from(f))).map_err(|e| self.bad(key, e)),
        }
    }

    /// The metadata key `key` of this file's architecture (`llama.block_count`, ...).
    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.architecture)
    }

    /// The model's shape from the architecture's metadata; the head is tied when there is no
    /// `output.weight`.
    pub fn config(&self) -> Result<LlamaConfig> {
        let k = |key: &str| self.key(key);
        let heads = self.usize(&k("attention.head_count"))?;
        let hidden = self.usize(&k("embedding_length"))?;
        let vocab = match self.optional_usize(&k("vocab_size"))? {
            Some(v) => v,
            None => {
                self.value("tokenizer.ggml.tokens")?.to_vec().map_err(|e| self.bad("tokenizer.ggml.tokens", e))?.len()
            }
        };
        let head_dim =
            self.optional_usize(&k("attention.key_length"))?.or(self.optional_usize(&k("rope.dimension_count"))?);
        let mut config = LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.usize(&k("feed_forward_length"))?,
            num_hidden_layers: self.usize(&k("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: self.optional_usize(&k("attention.head_count_kv"))?,
            // No head count is refused by `validate`; it must not divide by zero before.
            head_dim: head_dim.filter(|&d| Some(d) != hidden.checked_div(heads)),
            max_position_embeddings: self.optional_usize(&k("context_length"))?.unwrap_or(2048),
            rms_norm_eps: self.optional_f64(&k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
            rope_theta: self.optional_f64(&k("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_scaling: None,
            rope_freq_factors: self.rope_freq_factors(head_dim.unwrap_or(hidden / heads.max(1)))?,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            hidden_act: "silu".into(),
            bos_token_id: self.optional_usize("tokenizer.ggml.bos_token_id")?.map(|id| id as u32),
            eos_token_id: self.optional_usize("tokenizer.ggml.eos_token_id")?.map(|id| TokenIds::One(id as u32)),
            recycle: None,
            qkv_bias: false,
            qk_norm: false,
            sandwich_norms: false,
            scale_embeddings: false,
            sliding_window: None,
            family: Default::default(),
        };
        self.family.apply(&mut config);
        if self.family == Family::Gemma3 {
            self.gemma3(&mut config)?;
        }
        // Phi-3's LongRoPE (the 128k models, Phi-3.5) rescales positions and attention by
        // context length; served without it, answers would part from the model's.
        if let Some(name) = ["rope_factors_long.weight", "rope_factors_short.weight"]
            .into_iter()
            .find(|name| self.content.tensor_infos.contains_key(*name))
        {
            return Err(ModelError::file(
                &self.path,
                format!("`{name}`: Phi-3's LongRoPE scaling is not supported yet"),
            ));
        }
        config.validate().map_err(|e| ModelError::file(&self.path, e.to_string()))?;
        Ok(config)
    }

    /// Gemma 3's local layers, as llama.cpp reads them (a window of 0 or none: every layer
    /// global; 1 layer in 6 global unless the file says otherwise; local RoPE base 10,000).
    fn gemma3(&self, config: &mut LlamaConfig) -> Result<()> {
        let k = |key: &str| self.key(key);
        let unsupported =
            |what: &str| Err(ModelError::file(&self.path, format!("Gemma 3 {what} is not supported yet")));
        // The 27B model scales queries by its width per head, not 1/√head_dim.
        if config.num_hidden_layers == 62 {
            return unsupported("27B (its attention scale)");
        }
        if self.optional_f64(&k("final_logit_softcapping"))?.is_some_and(|cap| cap != 0.0) {
            return unsupported("with final logit soft-capping");
        }
        // The 4B and larger scale the global layers' positions linearly (factor 8).
        let linear = match self.content.metadata.get(&k("rope.scaling.type")) {
            Some(kind) => kind.to_string().map_err(|e| self.bad(&k("rope.scaling.type"), e))? == "linear",
            None => false,
        };
        match self.optional_f64(&k("rope.scaling.factor"))? {
            Some(factor) if linear && factor > 0.0 && factor.is_finite() => {
                config.rope_freq_factors = Some(vec![factor as f32; config.head_dim() / 2]);
            }
            Some(factor) if factor != 1.0 => {
                return unsupported(&format!("RoPE scaling other than linear (factor {factor})"));
            }
            _ => {}
        }
        config.sliding_window = match self.optional_usize(&k("attention.sliding_window"))? {
            Some(size) if size > 0 => Some(SlidingWindow {
                size,
                pattern: self.optional_usize(&k("attention.sliding_window_pattern"))?.unwrap_or(6),
                rope_theta: self.optional_f64(&k("rope.freq_base_swa"))?.unwrap_or(10_000.0),
            }),
            _ => None,
        };
        Ok(())
    }

    /// Llama 3's RoPE scaling as a GGUF file carries it: `rope_freqs.weight`, one divisor per
    /// rotary frequency (`head_dim / 2` of them), each finite and above 0.
    fn rope_freq_factors(&self, head_dim: usize) -> Result<Option<Vec<f32>>> {
        const NAME: &str = "rope_freqs.weight";
        let Some(info) = self.content.tensor_infos.get(NAME) else { return Ok(None) };
        let bad = |message: String| ModelError::file(&self.path, format!("`{NAME}`: {message}"));
        if info.shape.dims() != [head_dim / 2] {
            return Err(bad(format!(
                "shape {:?}, expected [{}] (half the head size)",
                info.shape.dims(),
                head_dim / 2
            )));
        }
        let tensor = self
            .content
            .tensor(&mut *self.reader.borrow_mut(), NAME, &candle_core::Device::Cpu)
            .and_then(|t| t.dequantize(&candle_core::Device::Cpu))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| bad(e.to_string()))?;
        if let Some(v) = tensor.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(bad(format!("a factor is {v}; each must be finite and above 0")));
        }
        Ok(Some(tensor))
    }

    pub fn tokenizer(&self) -> Result<TextTokenizer> {
        tokenizer::load(self)
    }

    /// The type the tensor the HF layout calls `hf_name` is stored in.
    pub(crate) fn stored_type(&self, hf_name: &str) -> Option<candle_core::quantized::GgmlDType> {
        let (name, _) = self.name_of(hf_name)?;
        self.content.tensor_infos.get(&name).map(|info| info.ggml_dtype)
    }

    pub(crate) fn contains(&self, hf_name: &str) -> bool {
        self.name_of(hf_name).is_some_and(|(name, _)| self.content.tensor_infos.contains_key(&name))
    }

    /// Where this file keeps the tensor the HF layout calls `hf_name`.
    fn name_of(&self, hf_name: &str) -> Option<(String, Rows)> {
        // Phi-3's files may keep the query, key and value projections apart or fused.
        let fused_qkv = self.family == Family::Phi3 && self.content.tensor_infos.contains_key("blk.0.attn_qkv.weight");
        gguf_name(hf_name, self.family, fused_qkv)
    }

    /// The tensor the HF layout calls `hf_name`, dequantized, in `dtype` on `device`.
    pub(crate) fn load(
        &self,
        hf_name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
        config: &LlamaConfig,
    ) -> Result<Tensor> {
        let (name, rows, quantized) = self.read(hf_name)?;
        let err = |message: String| self.error(&name, message);
        let tensor =
            quantized.dequantize(&Device::Cpu).map_err(|e| err(format!("type {:?}: {e}", quantized.dtype())))?;
        let tensor = self.arrange(tensor, rows, config).map_err(err)?;
        if tensor.dims() != shape {
            return Err(err(format!("expected shape {shape:?}, found {:?}", tensor.dims())));
        }
        tensor.to_dtype(dtype).and_then(|t| t.to_device(device)).map_err(|e| err(e.to_string()))
    }

    /// The tensor the HF layout calls `hf_name` as stored: its GGUF name, row layout and blocks.
    fn read(&self, hf_name: &str) -> Result<(String, Rows, candle_core::quantized::QTensor)> {
        let Some((name, rows)) = self.name_of(hf_name) else {
            return Err(self.error(hf_name, "has no GGUF counterpart".into()));
        };
        let Some(info) = self.content.tensor_infos.get(&name) else {
            return Err(self.error(&name, "missing".into()));
        };
        let stored = info
            .read(&mut *self.reader.borrow_mut(), self.content.tensor_data_offset, &Device::Cpu)
            .map_err(|e| self.error(&name, format!("type {:?}: {e}", info.ggml_dtype)))?;
        Ok((name, rows, stored))
    }

    fn error(&self, name: &str, message: String) -> ModelError {
        ModelError::Tensor { path: self.path.clone(), name: name.to_string(), message }
    }

    /// The rows of `tensor` (a stored matrix, or one value per stored row) in the order the
    /// model takes them: Llama's query and key rows out of their interleaved order, one
    /// projection's rows of a fused matrix.
    fn arrange(&self, tensor: Tensor, rows: Rows, config: &LlamaConfig) -> std::result::Result<Tensor, String> {
        let heads = config.num_attention_heads;
        let kv_heads = config.num_key_value_heads.unwrap_or(heads);
        let head_dim = config.head_dim.unwrap_or(config.hidden_size / heads.max(1));
        Ok(match rows {
            Rows::AsStored => tensor,
            // Only Llama's files interleave; the others keep rotate-half order.
            Rows::Interleaved { .. } if self.family != Family::Llama => tensor,
            Rows::Interleaved { kv } => {
                rotate_half_order(&tensor, if kv { kv_heads } else { heads }, head_dim).map_err(|e| e.to_string())?
            }
            Rows::Part(part) => {
                let (q, kv, ff) = (heads * head_dim, kv_heads * head_dim, config.intermediate_size);
                let (first, count) = match part {
                    Fused::Query => (0, q),
                    Fused::Key => (q, kv),
                    Fused::Value => (q + kv, kv),
                    Fused::Gate => (0, ff),
                    Fused::Up => (ff, ff),
                };
                let stored = tensor.dim(0).map_err(|e| e.to_string())?;
                if first + count > stored {
                    return Err(format!("{stored} rows, but {part:?} would take {first}..{}", first + count));
                }
                tensor.narrow(0, first, count).map_err(|e| e.to_string())?
            }
        })
    }

    /// The tensor the HF layout calls `hf_name` in the blocks the file stores it in: its type,
    /// its stored rows' bytes, and which stored row each of the model's rows is.
    pub(crate) fn stored_rows(&self, hf_name: &str, config: &LlamaConfig) -> Result<StoredRows> {
        let (name, rows, stored) = self.read(hf_name)?;
        let err = |message: String| self.error(&name, message);
        let count = stored.shape().dims().first().copied().unwrap_or(0);
        let bytes = stored.data().map_err(|e| err(e.to_string()))?.into_owned();
        if count == 0 || bytes.len() % count != 0 {
            return Err(err(format!("{} bytes do not split into {count} rows", bytes.len())));
        }
        let Ok(rows_u32) = u32::try_from(count) else {
            return Err(err(format!("{count} rows")));
        };
        // Each stored row's index, moved as the rows themselves are.
        let index = Tensor::arange(0u32, rows_u32, &Device::Cpu)?.reshape((count, 1))?;
        let order = self.arrange(index, rows, config).map_err(err)?;
        let order = order.flatten_all()?.to_vec1::<u32>()?.into_iter().map(|i| i as usize).collect();
        Ok(StoredRows { dtype: stored.dtype(), row_bytes: bytes.len() / count, bytes, order })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tensor type the issue lists, written by candle's GGUF writer and read back through
    /// this loader, equals candle's own dequantization of the same blocks: F32, F16 and BF16
    /// exactly as stored, the quantized types as their blocks decode.
    #[test]
    fn every_tensor_type_loads_as_its_blocks_decode() {
        use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
        let dir = std::env::temp_dir().join(format!("recyclegpt-gguf-types-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config: LlamaConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 16, "hidden_size": 256, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 4
        }))
        .unwrap();
        let values = Tensor::randn(0f32, 1.0, (8, 256), &Device::Cpu).unwrap();
        let types = [
            GgmlDType::F32,
            GgmlDType::F16,
            GgmlDType::BF16,
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ];
        for ggml in types {
            let stored = QTensor::quantize(&values, ggml).unwrap();
            let path = dir.join(format!("{ggml:?}.gguf"));
            let architecture = gguf_file::Value::String("llama".into());
            let mut file = std::fs::File::create(&path).unwrap();
            gguf_file::write(
                &mut file,
                &[("general.architecture", &architecture)],
                &[("blk.0.ffn_down.weight", &stored)],
            )
            .unwrap();
            drop(file);
            let gguf = GgufFile::open(&path).unwrap();
            assert_eq!(gguf.stored_type("model.layers.0.mlp.down_proj.weight"), Some(ggml));
            let loaded = gguf
                .load("model.layers.0.mlp.down_proj.weight", &[8, 256], DType::F32, &Device::Cpu, &config)
                .unwrap_or_else(|e| panic!("{ggml:?}: {e}"));
            let expected = stored.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(loaded.flatten_all().unwrap().to_vec1::<f32>().unwrap(), expected, "{ggml:?}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
