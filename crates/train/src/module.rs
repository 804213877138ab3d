//! The recyclable module in trainable form: the same computation and tensor names as
//! `recyclegpt_model`'s inference module, over `[batch, positions, d]` without a cache.
use crate::layers::{DecoderLayer, Linear, RmsNorm, RopeTables};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use recyclegpt_model::LlamaConfig;

pub struct TrainableModule {
    hidden_norm: RmsNorm,
    embed_norm: RmsNorm,
    projection: Linear,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    rope: RopeTables,
    /// The base model's embedding and output head: shared (frozen when distilling, trained
    /// with the module when training jointly).
    embedding: Tensor,
    head: Tensor,
}

impl TrainableModule {
    pub fn new(vb: VarBuilder, config: &LlamaConfig, embedding: Tensor, head: Tensor) -> Result<Self> {
        let shape = config
            .recycle_shape()
            .ok_or_else(|| candle_core::Error::Msg("the config has no `recycle` block".into()))?;
        let d = config.hidden_size;
        let layers =
            (0..shape.layers).map(|i| DecoderLayer::new(vb.pp("layers").pp(i), shape)).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            hidden_norm: RmsNorm::new(vb.pp("hnorm"), d, config.rms_norm_eps)?,
            embed_norm: RmsNorm::new(vb.pp("enorm"), d, config.rms_norm_eps)?,
            projection: Linear::new(vb.pp("eh_proj"), d, 2 * d)?,
            layers,
            norm: RmsNorm::new(vb.pp("norm"), d, config.rms_norm_eps)?,
            rope: RopeTables::new(
                shape.head_dim,
                config.max_position_embeddings + 1,
                config.rope_theta,
                embedding.device(),
            )?,
            embedding,
            head,
        })
    }

    /// Logits `[B, T, V]` for x_{t+1} from `hidden [B, T, d]` (h_{t-1}) and `tokens [B, T]` (x_t),
    /// the first pair at position 1 as in inference.
    pub fn forward(&self, hidden: &Tensor, tokens: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_features(hidden, tokens)?.0)
    }

    /// The logits and the last layer's output before the final norm (`[B, T, d]`): the feature a
    /// chained draft feeds back as the next h.
    pub fn forward_with_features(&self, hidden: &Tensor, tokens: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = tokens.dims2()?;
        let embedded = self.embedding.index_select(&tokens.flatten_all()?, 0)?.reshape((b, t, ()))?;
        let fused = Tensor::cat(&[self.hidden_norm.forward(hidden)?, self.embed_norm.forward(&embedded)?], 2)?;
        let mut x = self.projection.forward(&fused)?;
        for layer in &self.layers {
            x = layer.forward(&x, &self.rope, 1)?;
        }
        let logits = self.norm.forward(&x)?.broadcast_matmul(&self.head.t()?)?;
        Ok((logits, x))
    }
}
