//! The building blocks of a Llama decoder layer, with the options that make it another family's.
mod host;

use crate::config::StackShape;
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::quantize::Quantization;
use crate::rope::Rope;
use crate::weights::{Init, Weights};
use candle_core::{DType, Tensor};
pub(crate) use host::{applies as host_path_applies, forward as host_forward, is_host_f32, with_host_values};
use recyclegpt_kernels::{
    cached_attention, gated, quantized_linear, small_linear, AttentionShape, GateActivation, QuantMatrix, SMALL_M_MAX,
};

/// `y = x · Wᵀ` with `W` stored as `[out, in]` (PyTorch order).
#[derive(Clone)]
pub struct Linear {
    /// The f32 (or f16/bf16) weights; dropped when the layer is kept quantized instead.
    weight: Option<Tensor>,
    /// The weights quantized (`--quantize`): every product reads these.
    quant: Option<std::sync::Arc<QuantMatrix>>,
    /// Added to every output row (Qwen2's query, key and value projections).
    bias: Option<Tensor>,
}

impl Linear {
    pub fn load(w: &Weights, name: &str, out_dim: usize, in_dim: usize) -> Result<Self> {
        let std = 1.0 / (in_dim as f32).sqrt();
        let w = w.pp(name);
        Self::from_stored(w.get("weight", &[out_dim, in_dim], Init::Normal(std))?, &w, &["weight"])
    }

    /// A linear layer over `weight`, kept quantized instead when asked and the shape allows
    /// (rows of whole 32-value blocks, f32 on the CPU).
    pub fn from_weight(weight: Tensor, quantization: Option<Quantization>) -> Result<Self> {
        Self::kept(weight, quantization, false)
    }

    /// A linear layer over `weight`, the tensors `names` of `w` (stacked), kept as `w` says.
    /// Blocks that a GGUF file stores in a low-bit format are kept in it only if they come back
    /// exactly (a file quantized with an importance matrix chose its scales otherwise than
    /// llama.cpp's reference quantizer, which ours repeats); else in Q8_0.
    /// K-quant blocks are read from the file as stored, and kept if they give back `weight`.
    pub(crate) fn from_stored(weight: Tensor, w: &Weights, names: &[&str]) -> Result<Self> {
        let quantization = w.quantization_for(names);
        if let Some(format) = quantization.and_then(Quantization::k_quant).filter(|_| is_host_f32(&weight)) {
            if let Some(quant) = w.stored_blocks(names, format)? {
                if with_host_values(&weight.contiguous()?, |values| Ok(gives_back(&quant, values)))? {
                    return Ok(Self { weight: None, quant: Some(std::sync::Arc::new(quant)), bias: None });
                }
                tracing::debug!(?format, "K blocks do not give back the file's values: kept in Q8_0");
            }
        }
        Self::kept(weight, quantization, w.is_gguf())
    }

    fn kept(weight: Tensor, quantization: Option<Quantization>, exactly: bool) -> Result<Self> {
        // A K-quant that had to be kept exactly and was not read from the file's blocks would
        // come back from values only by chance (its quantizer searches for its scales): Q8_0.
        let quantization = quantization.map(|q| if exactly && q.k_quant().is_some() { Quantization::Q8_0 } else { q });
        if let (Some(format), Ok((rows, cols))) = (quantization, weight.dims2()) {
            if is_host_f32(&weight) {
                // Read in place: a copy of an embedding-sized matrix would raise the load's peak.
                let quant = with_host_values(&weight.contiguous()?, |values| {
                    let Some(quant) = format.quantize(values, rows, cols) else { return Ok(None) };
                    if exactly && matches!(quant, QuantMatrix::LowBit(_)) && !gives_back(&quant, values) {
                        tracing::debug!(?format, rows, cols, "blocks not kept exactly: kept in Q8_0");
                        return Ok(Quantization::Q8_0.quantize(values, rows, cols).or(Some(quant)));
                    }
                    Ok(Some(quant))
                })?;
                if let Some(quant) = quant {
                    return Ok(Self { weight: None, quant: Some(std::sync::Arc::new(quant)), bias: None });
                }
            }
        }
        Ok(Self { weight: Some(weight), quant: None, bias: None })
    }

    /// Several projections of the same input as one matrix (their rows stacked), so that a
    /// decode step streams them in one kernel call instead of several; with `bias`, their
    /// biases stacked too.
    fn fused(w: &Weights, names: &[&str], out_dims: &[usize], in_dim: usize, bias: bool) -> Result<Self> {
        let parts = names
            .iter()
            .zip(out_dims)
            .map(|(name, &out)| {
                let std = 1.0 / (in_dim as f32).sqrt();
                w.pp(name).get("weight", &[out, in_dim], Init::Normal(std))
            })
            .collect::<Result<Vec<_>>>()?;
        let weights: Vec<String> = names.iter().map(|name| format!("{name}.weight")).collect();
        let weights: Vec<&str> = weights.iter().map(String::as_str).collect();
        let mut linear = match Self::stacked(&parts, w, &weights)? {
            Some(stacked) => stacked,
            None => Self::from_stored(Tensor::cat(&parts, 0)?, w, &weights)?,
        };
        if bias {
            let biases = names
                .iter()
                .zip(out_dims)
                .map(|(name, &out)| w.pp(name).get("bias", &[out], Init::Normal(0.02)))
                .collect::<Result<Vec<_>>>()?;
            linear.bias = Some(Tensor::cat(&biases, 0)?);
        }
        Ok(linear)
    }

    /// A GGUF file's projections `parts` (the tensors `names` of `w`) each kept as its own is,
    /// stacked into one matrix: llama.cpp's Q4_K_M files keep the value projection in more bits
    /// than the query and key, where one format for all three would be Q8_0's. `None` where
    /// they share a stored type (one matrix of it), or one is not kept quantized.
    fn stacked(parts: &[Tensor], w: &Weights, names: &[&str]) -> Result<Option<Self>> {
        let formats: Vec<Option<Quantization>> = names.iter().map(|name| w.quantization_for(&[name])).collect();
        if !w.is_gguf() || formats.windows(2).all(|pair| pair[0] == pair[1]) || formats.contains(&None) {
            return Ok(None);
        }
        let mut matrices = Vec::with_capacity(parts.len());
        for (part, name) in parts.iter().zip(names) {
            match Self::from_stored(part.clone(), w, &[name])?.quant {
                Some(quant) => matrices.push(std::sync::Arc::unwrap_or_clone(quant)),
                None => return Ok(None),
            }
        }
        let quant = QuantMatrix::stacked(matrices).map(std::sync::Arc::new);
        Ok(quant.map(|quant| Self { weight: None, quant: Some(quant), bias: None }))
    }

    /// Bytes one product reads: the quantized blocks, or the unquantized weights.
    pub fn bytes(&self) -> usize {
        match (&self.quant, &self.weight) {
            (Some(quant), _) => quant.bytes(),
            (None, Some(weight)) => weight.elem_count() * weight.dtype().size_in_bytes(),
            (None, None) => 0,
        }
    }

    /// The format the layer is kept in, if quantized (stacked parts: the first's).
    pub fn quantization(&self) -> Option<Quantization> {
        self.quant.as_deref().and_then(Self::format_of)
    }

    /// `matrix`'s format (of a stacked matrix: its first part's).
    fn format_of(matrix: &QuantMatrix) -> Option<Quantization> {
        Some(match matrix {
            QuantMatrix::Stacked(parts) => return parts.first().and_then(Self::format_of),
            QuantMatrix::Q8_0(_) => Quantization::Q8_0,
            QuantMatrix::LowBit(w) => match w.format() {
                recyclegpt_kernels::LowBitFormat::Q4_0 => Quantization::Q4_0,
                recyclegpt_kernels::LowBitFormat::Q4_1 => Quantization::Q4_1,
                recyclegpt_kernels::LowBitFormat::Q5_0 => Quantization::Q5_0,
                recyclegpt_kernels::LowBitFormat::Q5_1 => Quantization::Q5_1,
                recyclegpt_kernels::LowBitFormat::Q4K => Quantization::Q4K,
                recyclegpt_kernels::LowBitFormat::Q5K => Quantization::Q5K,
                recyclegpt_kernels::LowBitFormat::Q6K => Quantization::Q6K,
            },
            QuantMatrix::Half(w) => match w.format() {
                recyclegpt_kernels::HalfFormat::F16 => Quantization::F16,
                recyclegpt_kernels::HalfFormat::BF16 => Quantization::BF16,
            },
        })
    }

    /// The weights as f32 `[out, in]`, dequantized when the layer is kept quantized only.
    pub fn dequantized(&self) -> Result<Tensor> {
        match (&self.quant, &self.weight) {
            (_, Some(weight)) => Ok(weight.clone()),
            (Some(quant), None) => {
                Ok(Tensor::from_vec(quant.dequantize(), (quant.rows(), quant.cols()), &candle_core::Device::Cpu)?)
            }
            (None, None) => Err(crate::error::ModelError::Config("a linear layer has no weights".into())),
        }
    }

    /// Rows `ids` of the weights as f32 `[ids, in]`, dequantized one by one when the layer is
    /// kept quantized only.
    pub fn rows(&self, ids: &[u32]) -> Result<Tensor> {
        match (&self.quant, &self.weight) {
            (_, Some(weight)) => Ok(weight.index_select(&Tensor::new(ids, weight.device())?, 0)?),
            (Some(quant), None) => {
                let mut values = Vec::with_capacity(ids.len() * quant.cols());
                for &id in ids {
                    let Some(row) = quant.dequantize_row(id as usize) else {
                        return Err(crate::error::ModelError::Input(format!("row {id} of {}", quant.rows())));
                    };
                    values.extend(row);
                }
                Ok(Tensor::from_vec(values, (ids.len(), quant.cols()), &candle_core::Device::Cpu)?)
            }
            (None, None) => Err(crate::error::ModelError::Config("a linear layer has no weights".into())),
        }
    }

    /// Whether the layer is kept quantized and its blocks give back `weight` exactly.
    pub(crate) fn holds_exactly(&self, weight: &Tensor) -> Result<bool> {
        let Some(quant) = &self.quant else { return Ok(false) };
        if !is_host_f32(weight) || weight.dims2()? != (quant.rows(), quant.cols()) {
            return Ok(false);
        }
        with_host_values(&weight.contiguous()?, |values| Ok(gives_back(quant, values)))
    }

    /// The unquantized weights, `None` when the layer is kept quantized only.
    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    /// Quantized layers take the quantized kernels; unquantized decode-sized inputs on CPU take the
    /// weight-streaming kernel; larger ones (prefill) and other devices take candle's matmul.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.product(x)?;
        match &self.bias {
            Some(bias) => Ok(y.broadcast_add(bias)?),
            None => Ok(y),
        }
    }

    fn product(&self, x: &Tensor) -> Result<Tensor> {
        match (&self.quant, &self.weight) {
            (Some(quant), _) => Ok(quantized_linear(x, quant)?),
            (None, Some(weight)) => {
                if x.device().is_cpu() && x.dtype() == DType::F32 && x.dim(0)? <= SMALL_M_MAX {
                    Ok(small_linear(x, weight)?)
                } else {
                    Ok(x.matmul(&weight.t()?)?)
                }
            }
            (None, None) => Err(crate::error::ModelError::Config("a linear layer has no weights".into())),
        }
    }
}

/// Whether `quant` dequantizes to `values` (its rows, row-major), compared a row at a time: a
/// whole dequantized copy of an embedding-sized matrix would raise the load's peak memory.
fn gives_back(quant: &QuantMatrix, values: &[f32]) -> bool {
    values.len() == quant.rows() * quant.cols()
        && values
            .chunks_exact(quant.cols())
            .enumerate()
            .all(|(row, values)| quant.dequantize_row(row).is_some_and(|given| given == values))
}

#[derive(Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn load(w: &Weights, name: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: w.pp(name).get("weight", &[dim], Init::Ones)?, eps: eps as f32 })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)?)
    }
}

struct Mlp {
    /// `gate_proj` and `up_proj` stacked.
    gate_up: Linear,
    down: Linear,
    intermediate: usize,
    activation: GateActivation,
}

impl Mlp {
    fn load(w: &Weights, s: &StackShape) -> Result<Self> {
        Ok(Self {
            gate_up: Linear::fused(w, &["gate_proj", "up_proj"], &[s.intermediate, s.intermediate], s.hidden, false)?,
            down: Linear::load(w, "down_proj", s.hidden, s.intermediate)?,
            intermediate: s.intermediate,
            activation: s.activation,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up.forward(x)?;
        if gate_up.device().is_cpu() && gate_up.dtype() == DType::F32 {
            return self.down.forward(&gated(&gate_up, self.activation)?);
        }
        let gate = gate_up.narrow(1, 0, self.intermediate)?;
        let gate = match self.activation {
            GateActivation::Silu => gate.silu()?,
            GateActivation::GeluTanh => gate.gelu()?,
        };
        self.down.forward(&(gate * gate_up.narrow(1, self.intermediate, self.intermediate)?)?)
    }
}

/// Where one sequence's new tokens sit in a ragged batch.
pub struct SeqSlot<'a> {
    pub cache: &'a mut KvCache,
    pub new_tokens: usize,
}

struct Attention {
    /// `q_proj`, `k_proj` and `v_proj` stacked.
    qkv: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    shape: AttentionShape,
    /// Per-head norms of the queries and keys before RoPE (Qwen3).
    qk_norms: Option<(RmsNorm, RmsNorm)>,
}

impl Attention {
    /// `window`: the layer's sliding window, if it is a local one.
    fn load(w: &Weights, s: &StackShape, window: Option<usize>) -> Result<Self> {
        Ok(Self {
            qkv: Linear::fused(
                w,
                &["q_proj", "k_proj", "v_proj"],
                &[s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim],
                s.hidden,
                s.qkv_bias,
            )?,
            o: Linear::load(w, "o_proj", s.hidden, s.heads * s.head_dim)?,
            heads: s.heads,
            kv_heads: s.kv_heads,
            head_dim: s.head_dim,
            shape: AttentionShape { heads: s.heads, kv_heads: s.kv_heads, head_dim: s.head_dim, window },
            qk_norms: if s.qk_norm {
                Some((RmsNorm::load(w, "q_norm", s.head_dim, s.eps)?, RmsNorm::load(w, "k_norm", s.head_dim, s.eps)?))
            } else {
                None
            },
        })
    }

    /// Projections run over all `T` rows at once; attention runs per sequence against its cache.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, layer: usize, seqs: &[SeqSlot]) -> Result<Tensor> {
        let t = x.dim(0)?;
        let qkv = self.qkv.forward(x)?;
        let (q_width, kv_width) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let q = qkv.narrow(1, 0, q_width)?.reshape((t, self.heads, self.head_dim))?;
        let k = qkv.narrow(1, q_width, kv_width)?.reshape((t, self.kv_heads, self.head_dim))?;
        let v = qkv.narrow(1, q_width + kv_width, kv_width)?.reshape((t, self.kv_heads, self.head_dim))?;
        let (q, k) = match &self.qk_norms {
            Some((q_norm, k_norm)) => (q_norm.forward(&q)?, k_norm.forward(&k)?),
            None => (q, k),
        };
        let q = Rope::apply(&q, cos, sin)?;
        let k = Rope::apply(&k, cos, sin)?;
        let mut offsets = Vec::with_capacity(seqs.len());
        let mut offset = 0;
        for seq in seqs {
            offsets.push(offset);
            offset += seq.new_tokens;
        }
        // One sequence at a time: the attention kernel spreads each one's heads over the threads.
        let attend_one = |(seq, &offset): (&SeqSlot, &usize)| -> Result<Tensor> {
            let n = seq.new_tokens;
            let (keys, values) = seq.cache.write(layer, &k.narrow(0, offset, n)?, &v.narrow(0, offset, n)?)?;
            let q = q.narrow(0, offset, n)?;
            if q.device().is_cpu() && q.dtype() == DType::F32 && n <= SMALL_M_MAX {
                Ok(cached_attention(&q, &keys, &values, self.shape)?)
            } else {
                self.attend(&q, &keys, &values, seq.cache.len())
            }
        };
        let mut outputs: Vec<Tensor> = seqs.iter().zip(offsets.iter()).map(attend_one).collect::<Result<_>>()?;
        let attended = if outputs.len() == 1 { outputs.swap_remove(0) } else { Tensor::cat(&outputs, 0)? };
        self.o.forward(&attended)
    }

    /// Causal grouped-query attention in candle ops, for long prefill chunks and other devices:
    /// `q [n, heads, hd]` over `keys/values [L, kv_heads, hd]`,
    /// where the first query sits at position `start = L - n`.
    fn attend(&self, q: &Tensor, keys: &Tensor, values: &Tensor, start: usize) -> Result<Tensor> {
        let n = q.dim(0)?;
        let total = keys.dim(0)?;
        let group = self.heads / self.kv_heads;
        let q = q.reshape((n, self.kv_heads, group, self.head_dim))?.permute((1, 2, 0, 3))?.contiguous()?.reshape((
            self.kv_heads,
            group * n,
            self.head_dim,
        ))?;
        let keys = keys.transpose(0, 1)?.contiguous()?;
        let values = values.transpose(0, 1)?.contiguous()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut scores = (q.matmul(&keys.t()?)? * scale)?;
        if n > 1 || self.shape.window.is_some_and(|w| w < total) {
            let window = self.shape.window.unwrap_or(usize::MAX);
            let hidden = move |i: usize, j: usize| j > start + i || start + i - j >= window;
            let mask: Vec<f32> = (0..n)
                .flat_map(|i| (0..total).map(move |j| if hidden(i, j) { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (n, total), q.device())?.to_dtype(scores.dtype())?;
            scores = scores.reshape((self.kv_heads, group, n, total))?.broadcast_add(&mask)?.reshape((
                self.kv_heads,
                group * n,
                total,
            ))?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&values)?;
        Ok(out
            .reshape((self.kv_heads, group, n, self.head_dim))?
            .permute((2, 0, 1, 3))?
            .contiguous()?
            .reshape((n, self.heads * self.head_dim))?)
    }
}

pub struct DecoderLayer {
    input_norm: RmsNorm,
    attention: Attention,
    /// Gemma's norm on the attention's output, before the residual add.
    attention_output_norm: Option<RmsNorm>,
    /// The norm before the feed-forward (HF Llama's name).
    post_norm: RmsNorm,
    mlp: Mlp,
    /// Gemma's norm on the feed-forward's output, before the residual add.
    feedforward_output_norm: Option<RmsNorm>,
    /// A local layer (sliding window), whose RoPE has its own base.
    local: bool,
}

impl DecoderLayer {
    /// Layer `index` (from 0) of a stack of shape `s`.
    pub fn load(w: &Weights, s: &StackShape, index: usize) -> Result<Self> {
        let window = s.window.filter(|window| window.covers(index));
        let sandwich = |name: &str| s.sandwich_norms.then(|| RmsNorm::load(w, name, s.hidden, s.eps)).transpose();
        Ok(Self {
            input_norm: RmsNorm::load(w, "input_layernorm", s.hidden, s.eps)?,
            attention: Attention::load(&w.pp("self_attn"), s, window.map(|window| window.size))?,
            attention_output_norm: sandwich("attention_output_norm")?,
            post_norm: RmsNorm::load(w, "post_attention_layernorm", s.hidden, s.eps)?,
            mlp: Mlp::load(&w.pp("mlp"), s)?,
            feedforward_output_norm: sandwich("feedforward_output_norm")?,
            local: window.is_some(),
        })
    }

    /// Whether the layer attends within a sliding window (and takes the local RoPE tables).
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// The format the feed-forward's gate and up projections are kept in, if quantized.
    pub fn quantization(&self) -> Option<Quantization> {
        self.mlp.gate_up.quantization()
    }

    /// Bytes of the layer's matrices, read once per forward.
    pub fn matrix_bytes(&self) -> usize {
        self.attention.qkv.bytes() + self.attention.o.bytes() + self.mlp.gate_up.bytes() + self.mlp.down.bytes()
    }

    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, layer: usize, seqs: &[SeqSlot]) -> Result<Tensor> {
        let mut attended = self.attention.forward(&self.input_norm.forward(x)?, cos, sin, layer, seqs)?;
        if let Some(norm) = &self.attention_output_norm {
            attended = norm.forward(&attended)?;
        }
        let x = (x + attended)?;
        let mut mlp = self.mlp.forward(&self.post_norm.forward(&x)?)?;
        if let Some(norm) = &self.feedforward_output_norm {
            mlp = norm.forward(&mlp)?;
        }
        Ok((x + mlp)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SlidingWindow;
    use candle_core::Device;

    /// The candle ops' attention (long prefill chunks, other devices) masks a sliding window as
    /// the kernel does: rows whose windows start past the first keys, and a decode row.
    #[test]
    fn the_tensor_attention_keeps_to_the_window_as_the_kernel_does() -> Result<()> {
        let window = SlidingWindow { size: 5, pattern: 2, rope_theta: 10_000.0 };
        let shape = StackShape {
            hidden: 32,
            intermediate: 8,
            layers: 1,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            eps: 1e-6,
            qkv_bias: false,
            qk_norm: false,
            sandwich_norms: false,
            activation: GateActivation::Silu,
            window: Some(window),
        };
        let attention = Attention::load(&Weights::random(3, DType::F32, &Device::Cpu), &shape, Some(window.size))?;
        let values = |len: usize, seed: f32| (0..len).map(|i| (i as f32 * 0.71 + seed).sin()).collect::<Vec<f32>>();
        for (n, total) in [(6, 11), (1, 11), (3, 3)] {
            let q = Tensor::from_vec(values(n * 4 * 8, 0.3), (n, 4, 8), &Device::Cpu)?;
            let k = Tensor::from_vec(values(total * 2 * 8, 1.1), (total, 2, 8), &Device::Cpu)?;
            let v = Tensor::from_vec(values(total * 2 * 8, 2.7), (total, 2, 8), &Device::Cpu)?;
            let tensors = attention.attend(&q, &k, &v, total - n)?.flatten_all()?.to_vec1::<f32>()?;
            let kernel = cached_attention(&q, &k, &v, attention.shape)?.flatten_all()?.to_vec1::<f32>()?;
            let worst = tensors.iter().zip(&kernel).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "n {n}, total {total}: the two attentions differ by {worst}");
        }
        Ok(())
    }
}
