//! Rotary position embeddings, HuggingFace rotate-half convention, with optional llama3 scaling.
use crate::config::RopeParams;
use crate::error::Result;
use candle_core::{DType, Device, Tensor};

pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

/// The rotary frequencies of a head of `head_dim`, scaled as `rope` says (training builds its
/// tables from these too, so a module learns the positions it is served with).
pub fn inverse_frequencies(head_dim: usize, rope: RopeParams) -> Vec<f64> {
    let base: Vec<f64> = (0..head_dim / 2).map(|i| 1.0 / rope.theta.powf(2.0 * i as f64 / head_dim as f64)).collect();
    // A GGUF file's factors are the scaling already worked out (llama.cpp divides by them).
    let base = match rope.factors {
        Some(factors) => base.iter().zip(factors).map(|(f, &d)| f / f64::from(d)).collect(),
        None => base,
    };
    let Some(s) = rope.scaling else { return base };
    let old_context = s.original_max_position_embeddings as f64;
    let low_wavelen = old_context / s.low_freq_factor;
    let high_wavelen = old_context / s.high_freq_factor;
    base.into_iter()
        .map(|freq| {
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                freq
            } else if wavelen > low_wavelen {
                freq / s.factor
            } else {
                let smooth = (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * freq / s.factor + smooth * freq
            }
        })
        .collect()
}

impl Rope {
    pub fn new(head_dim: usize, max_positions: usize, rope: RopeParams, dtype: DType, device: &Device) -> Result<Self> {
        let inv = inverse_frequencies(head_dim, rope);
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for pos in 0..max_positions {
            for f in &inv {
                let angle = pos as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_positions, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (max_positions, half), device)?.to_dtype(dtype)?,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// The whole cos and sin tables, `[max_positions, head_dim / 2]` each.
    pub(crate) fn full_tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// cos and sin rows for the given (ragged) positions, `[T, head_dim / 2]` each.
    pub fn tables(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.index_select(positions, 0)?, self.sin.index_select(positions, 0)?))
    }

    /// Rotates `x` of shape `[T, heads, head_dim]`.
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = x.unsqueeze(0)?.contiguous()?;
        Ok(candle_nn::rotary_emb::rope_thd(&x, cos, sin)?.squeeze(0)?)
    }
}
