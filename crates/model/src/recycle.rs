//! The recyclable module: from the base model's hidden state at t-1 and the embedding of x_t it
//! predicts x_{t+1} through the base model's own output head.
use crate::config::LlamaConfig;
use crate::decoder::DecoderStack;
use crate::error::{ModelError, Result};
use crate::layers::{Linear, RmsNorm, SeqSlot};
use crate::llama::{gather_logit_rows, Llama, SeqInput};
use crate::weights::Weights;
use candle_core::Tensor;

pub struct RecycleModule {
    hidden_norm: RmsNorm,
    embed_norm: RmsNorm,
    projection: Linear,
    stack: DecoderStack,
    norm: RmsNorm,
}

impl RecycleModule {
    /// Tensor names (in `recycle.safetensors`): `hnorm`, `enorm`, `eh_proj`, `layers.N.*`, `norm`.
    pub fn load(w: &Weights, config: &LlamaConfig) -> Result<Self> {
        let shape =
            config.recycle_shape().ok_or_else(|| ModelError::Config("no `recycle` block in config.json".into()))?;
        let d = config.hidden_size;
        Ok(Self {
            hidden_norm: RmsNorm::load(w, "hnorm", d, config.rms_norm_eps)?,
            embed_norm: RmsNorm::load(w, "enorm", d, config.rms_norm_eps)?,
            projection: Linear::load(w, "eh_proj", d, 2 * d)?,
            stack: DecoderStack::load(
                &w.pp("layers"),
                shape,
                config.max_position_embeddings,
                config.rope_theta,
                config.rope_scaling.as_ref(),
                1,
            )?,
            norm: RmsNorm::load(w, "norm", d, config.rms_norm_eps)?,
        })
    }

    pub fn stack(&self) -> &DecoderStack {
        &self.stack
    }

    /// `hidden` holds h_{t-1} for every token x_t in `inputs` (flattened in order); each
    /// sequence's module cache holds positions 1.. so the pair for x_t lands at position t.
    pub fn forward(&self, llama: &Llama, hidden: &Tensor, inputs: &mut [SeqInput]) -> Result<Vec<Vec<f32>>> {
        let tokens: Vec<u32> = inputs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let rows = gather_logit_rows(inputs);
        let fused =
            Tensor::cat(&[self.hidden_norm.forward(hidden)?, self.embed_norm.forward(&llama.embed(&tokens)?)?], 1)?;
        let x = self.projection.forward(&fused)?;
        let mut slots: Vec<SeqSlot> =
            inputs.iter_mut().map(|s| SeqSlot { new_tokens: s.tokens.len(), cache: &mut *s.cache }).collect();
        let out = self.stack.forward(x, &mut slots)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let rows = Tensor::new(rows.as_slice(), out.device())?;
        llama.head(&self.norm.forward(&out.index_select(&rows, 0)?)?)
    }
}
