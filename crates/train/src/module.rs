//! The recyclable module in trainable form: the same computation and tensor names as
//! `recyclegpt_model`'s inference module, over `[batch, positions, d]` without a cache.
use crate::layers::{DecoderLayer, Linear, PassKv, RmsNorm, RopeTables};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use recyclegpt_model::LlamaConfig;

pub struct TrainableModule {
    /// EAGLE-3's form: one norm per base feature layer and `fc` fusing them (`None`: the
    /// paper's form, which reads the base's last hidden state as it is).
    fusion: Option<(Vec<RmsNorm>, Linear)>,
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
        let fusion = match config.recycle.as_ref().and_then(|r| r.feature_layers.as_ref()) {
            Some(taps) => Some((
                (0..taps.len())
                    .map(|i| RmsNorm::new(vb.pp("taps").pp(i), d, config.rms_norm_eps))
                    .collect::<Result<Vec<_>>>()?,
                Linear::new(vb.pp("fc"), d, taps.len() * d)?,
            )),
            None => None,
        };
        Ok(Self {
            fusion,
            hidden_norm: RmsNorm::new(vb.pp("hnorm"), d, config.rms_norm_eps)?,
            embed_norm: RmsNorm::new(vb.pp("enorm"), d, config.rms_norm_eps)?,
            projection: Linear::new(vb.pp("eh_proj"), d, 2 * d)?,
            layers,
            norm: RmsNorm::new(vb.pp("norm"), d, config.rms_norm_eps)?,
            rope: RopeTables::new(
                shape.head_dim,
                config.max_position_embeddings + 1,
                config.rope(),
                embedding.device(),
            )?,
            embedding,
            head,
        })
    }

    /// What the module reads from the base, `[B, T, d]`, from the base's feature layers
    /// `[B, T, layers × d]` (in the paper's form, the last hidden state as it is).
    pub fn input_features(&self, hidden: &Tensor) -> Result<Tensor> {
        let Some((norms, fc)) = &self.fusion else {
            return Ok(hidden.clone());
        };
        let d = hidden.dim(2)? / norms.len();
        let normed = norms
            .iter()
            .enumerate()
            .map(|(i, norm)| norm.forward(&hidden.narrow(2, i * d, d)?))
            .collect::<Result<Vec<_>>>()?;
        fc.forward(&Tensor::cat(&normed, 2)?)
    }

    /// Logits `[B, T, V]` for x_{t+1} from `hidden [B, T, layers × d]` (the base's feature
    /// layers at t-1) and `tokens [B, T]` (x_t), the first pair at position 1 as in inference.
    pub fn forward(&self, hidden: &Tensor, tokens: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_features(hidden, tokens)?.0)
    }

    /// The logits and the last layer's output before the final norm (`[B, T, d]`): the feature a
    /// chained draft feeds back as the next h.
    pub fn forward_with_features(&self, hidden: &Tensor, tokens: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut passes = self.forward_chain(hidden, tokens, 1)?;
        passes.pop().ok_or_else(|| candle_core::Error::Msg("a chain of one pass returned none".into()))
    }

    /// (logits, features) for `depth` steps of a chain of drafts from every position at once,
    /// as serving runs them one at a time: step 0 is [`Self::forward_with_features`]; step i
    /// (`T - i` rows) feeds step i-1's features back as h, with the token i places on
    /// (teacher-forced: a chain only goes on where the draft before was right), so its row r
    /// predicts what `forward`'s row r + i does.
    pub fn forward_chain(&self, hidden: &Tensor, tokens: &Tensor, depth: usize) -> Result<Vec<(Tensor, Tensor)>> {
        let t = tokens.dim(1)?;
        let mut passes: Vec<(Tensor, Tensor)> = Vec::with_capacity(depth);
        // Per layer: the first pass's keys and values, then each chained pass's.
        let mut kv: Vec<Vec<PassKv>> = self.layers.iter().map(|_| Vec::with_capacity(depth)).collect();
        for step in 0..depth.min(t) {
            let rows = t - step;
            let h = match passes.last() {
                Some((_, features)) => features.narrow(1, 0, rows)?,
                None => self.input_features(hidden)?,
            };
            let mut x = self.fuse(&h, &tokens.narrow(1, step, rows)?)?;
            for (layer, kv) in self.layers.iter().zip(&mut kv) {
                let (out, pass) = match kv.split_first() {
                    None => layer.forward_keeping_kv(&x, &self.rope, 1)?,
                    Some((root, chain)) => layer.forward_chained(&x, &self.rope, 1 + step, root, chain)?,
                };
                kv.push(pass);
                x = out;
            }
            let logits = self.norm.forward(&x)?.broadcast_matmul(&self.head.t()?)?;
            passes.push((logits, x));
        }
        Ok(passes)
    }

    /// The first layer's input from h `[B, T, d]` and tokens `[B, T]`.
    fn fuse(&self, hidden: &Tensor, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let embedded = self.embedding.index_select(&tokens.flatten_all()?, 0)?.reshape((b, t, ()))?;
        let fused = Tensor::cat(&[self.hidden_norm.forward(hidden)?, self.embed_norm.forward(&embedded)?], 2)?;
        self.projection.forward(&fused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, IndexOp};
    use candle_nn::VarMap;

    /// A chain from root r is, in serving, a causal pass over the pairs up to r followed by the
    /// chain's own pairs (the module's cache holds exactly those): each step of
    /// `forward_chain`'s parallel passes must equal the last row of that sequence.
    #[test]
    fn a_chained_pass_equals_serving_the_chain_one_step_at_a_time() -> Result<()> {
        let device = Device::Cpu;
        let mut config: LlamaConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 40, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2
        }))
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        config.recycle = Some(config.default_recycle(2));
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let embedding = Tensor::randn(0f32, 1.0, (40, 32), &device)?;
        let head = Tensor::randn(0f32, 1.0, (40, 32), &device)?;
        let module = TrainableModule::new(vb, &config, embedding, head)?;
        let t = 7;
        let hidden = Tensor::randn(0f32, 1.0, (1, t, 32), &device)?;
        let tokens = Tensor::new(&[[3u32, 17, 5, 39, 0, 22, 8]], &device)?;
        let passes = module.forward_chain(&hidden, &tokens, 3)?;
        for root in 0..t {
            // The sequence serving builds from this root: its pairs, then (feature, next token).
            let (mut h, mut x) = (hidden.narrow(1, 0, root + 1)?, tokens.narrow(1, 0, root + 1)?);
            for (step, (logits, features)) in passes.iter().enumerate().take(t - root) {
                let (want_logits, want_features) = module.forward_with_features(&h, &x)?;
                let last = |x: &Tensor| x.i((0, h.dim(1)? - 1));
                let gap = (last(&want_logits)? - logits.i((0, root))?)?.abs()?.max(0)?.to_scalar::<f32>()?;
                assert!(gap < 1e-4, "root {root}, step {step}: logits differ by {gap}");
                let feature = features.narrow(1, root, 1)?;
                let gap = (last(&want_features)? - feature.i((0, 0))?)?.abs()?.max(0)?.to_scalar::<f32>()?;
                assert!(gap < 1e-4, "root {root}, step {step}: features differ by {gap}");
                if root + step + 1 < t {
                    h = Tensor::cat(&[&h, &feature], 1)?;
                    x = Tensor::cat(&[&x, &tokens.narrow(1, root + step + 1, 1)?], 1)?;
                }
            }
        }
        Ok(())
    }
}
