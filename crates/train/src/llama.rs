//! The base Llama in trainable form, with the HuggingFace tensor names.
use crate::layers::{DecoderLayer, Linear, RmsNorm, RopeTables};
use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use recyclegpt_model::LlamaConfig;

pub struct TrainableLlama {
    embed: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    head: Option<Linear>,
    rope: RopeTables,
}

impl TrainableLlama {
    pub fn new(vb: VarBuilder, config: &LlamaConfig) -> Result<Self> {
        let s = config.base_shape();
        let model = vb.pp("model");
        let embed = model.pp("embed_tokens").get_with_hints(
            (config.vocab_size, s.hidden),
            "weight",
            Init::Randn { mean: 0.0, stdev: 0.02 },
        )?;
        let layers =
            (0..s.layers).map(|i| DecoderLayer::new(model.pp("layers").pp(i), s)).collect::<Result<Vec<_>>>()?;
        let head = if config.tie_word_embeddings {
            None
        } else {
            Some(Linear::new(vb.pp("lm_head"), config.vocab_size, s.hidden)?)
        };
        Ok(Self {
            embed,
            layers,
            norm: RmsNorm::new(model.pp("norm"), s.hidden, s.eps)?,
            head,
            rope: RopeTables::new(s.head_dim, config.max_position_embeddings + 1, config.rope(), vb.device())?,
        })
    }

    pub fn embedding(&self) -> &Tensor {
        &self.embed
    }

    pub fn head_weight(&self) -> &Tensor {
        self.head.as_ref().map_or(&self.embed, Linear::weight)
    }

    /// `tokens [B, T]` → (last decoder-layer output before the final norm `[B, T, d]`, logits `[B, T, V]`).
    pub fn forward(&self, tokens: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = tokens.dims2()?;
        let mut x = self.embed.index_select(&tokens.flatten_all()?, 0)?.reshape((b, t, ()))?;
        for layer in &self.layers {
            x = layer.forward(&x, &self.rope, 0)?;
        }
        let logits = self.norm.forward(&x)?.broadcast_matmul(&self.head_weight().t()?)?;
        Ok((x, logits))
    }
}
