//! The recyclable module: from the base model's hidden state at t-1 and the embedding of x_t it
//! predicts x_{t+1} through the base model's own output head.
use crate::config::LlamaConfig;
use crate::decoder::DecoderStack;
use crate::error::{ModelError, Result};
use crate::layers::{Linear, RmsNorm, SeqSlot};
use crate::llama::{gather_logit_rows, ForwardOutput, Llama, SeqInput};
use crate::weights::Weights;
use candle_core::{DType, Tensor};

/// EAGLE-3's form: the outputs of several base layers, each normalised, fused into one vector.
struct Fusion {
    layers: Vec<usize>,
    norms: Vec<RmsNorm>,
    fc: Linear,
}

pub struct RecycleModule {
    /// `None`: the paper's form, which reads the base's last hidden state as it is.
    fusion: Option<Fusion>,
    hidden_norm: RmsNorm,
    embed_norm: RmsNorm,
    projection: Linear,
    stack: DecoderStack,
    norm: RmsNorm,
    /// The reduced draft vocabulary, if the module has one: its token ids, and the shared
    /// head's rows for them (built by [`RecycleModule::with_draft_head`]).
    draft_vocab: Option<Vec<u32>>,
    draft_head: Option<Linear>,
}

impl RecycleModule {
    /// Tensor names (in `recycle.safetensors`): `hnorm`, `enorm`, `eh_proj`, `layers.N.*`, `norm`,
    /// `draft_vocab` (token ids, stored as f32 values) with a reduced draft vocabulary, and
    /// `taps.N` (one norm per feature layer) and `fc` (`[d, layers × d]`) in EAGLE-3's form.
    pub fn load(w: &Weights, config: &LlamaConfig) -> Result<Self> {
        let shape =
            config.recycle_shape().ok_or_else(|| ModelError::Config("no `recycle` block in config.json".into()))?;
        let d = config.hidden_size;
        let fusion = match config.recycle.as_ref().and_then(|r| r.feature_layers.clone()) {
            Some(layers) => Some(Fusion {
                norms: (0..layers.len())
                    .map(|i| RmsNorm::load(&w.pp("taps"), &i.to_string(), d, config.rms_norm_eps))
                    .collect::<Result<_>>()?,
                fc: Linear::load(w, "fc", d, layers.len() * d)?,
                layers,
            }),
            None => None,
        };
        Ok(Self {
            fusion,
            hidden_norm: RmsNorm::load(w, "hnorm", d, config.rms_norm_eps)?,
            embed_norm: RmsNorm::load(w, "enorm", d, config.rms_norm_eps)?,
            projection: Linear::load(w, "eh_proj", d, 2 * d)?,
            stack: DecoderStack::load(&w.pp("layers"), shape, config.max_position_embeddings, config.rope(), 1)?,
            norm: RmsNorm::load(w, "norm", d, config.rms_norm_eps)?,
            // Read in f32 whatever the load dtype: ids above 256 do not survive bf16.
            draft_vocab: draft_vocab(&w.in_f32(), config)?,
            draft_head: None,
        })
    }

    /// Builds the head over the draft vocabulary from the base model's head, kept in the
    /// base head's own format (a module without a draft vocabulary uses the whole head).
    pub fn with_draft_head(mut self, llama: &Llama) -> Result<Self> {
        if let Some(ids) = &self.draft_vocab {
            self.draft_head = Some(Linear::from_weight(llama.head_rows(ids)?, llama.head_quantization())?);
        }
        Ok(self)
    }

    pub fn stack(&self) -> &DecoderStack {
        &self.stack
    }

    /// The base layers this module reads, `None` in the paper's form (the last hidden state).
    pub fn feature_layers(&self) -> Option<&[usize]> {
        self.fusion.as_ref().map(|f| f.layers.as_slice())
    }

    /// The module's input feature `[T, d]` from the outputs of its feature layers (`[T, d]`
    /// each, in order).
    pub fn fuse(&self, taps: &[Tensor]) -> Result<Tensor> {
        let Some(fusion) = &self.fusion else {
            return Err(ModelError::Input("the paper's form of the module fuses no layers".into()));
        };
        let normed = fusion.norms.iter().zip(taps).map(|(norm, tap)| norm.forward(tap)).collect::<Result<Vec<_>>>()?;
        fusion.fc.forward(&Tensor::cat(&normed, 1)?)
    }

    /// `hidden` holds the feature at t-1 (the base's `features`, or the module's own output when
    /// chaining) for every token x_t in `inputs` (flattened in order); each sequence's module
    /// cache holds positions 1.. so the pair for x_t lands at position t. Returns the logits of
    /// the requested rows and, as `features`, the last layer's output for every new token (what a
    /// chained draft feeds back).
    pub fn forward(&self, llama: &Llama, hidden: &Tensor, inputs: &mut [SeqInput]) -> Result<ForwardOutput> {
        let tokens: Vec<u32> = inputs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let rows = gather_logit_rows(inputs);
        let fused =
            Tensor::cat(&[self.hidden_norm.forward(hidden)?, self.embed_norm.forward(&llama.embed(&tokens)?)?], 1)?;
        let x = self.projection.forward(&fused)?;
        let mut slots: Vec<SeqSlot> =
            inputs.iter_mut().map(|s| SeqSlot { new_tokens: s.tokens.len(), cache: &mut *s.cache }).collect();
        let out = self.stack.forward(x, &mut slots)?;
        Ok(ForwardOutput { logits: self.logits(llama, &out, &rows)?, features: out.clone(), hidden: out })
    }

    fn logits(&self, llama: &Llama, out: &Tensor, rows: &[u32]) -> Result<Vec<Vec<f32>>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let rows = Tensor::new(rows, out.device())?;
        let normed = self.norm.forward(&out.index_select(&rows, 0)?)?;
        match (&self.draft_head, &self.draft_vocab) {
            (Some(head), Some(ids)) => {
                // Full-vocabulary rows, -inf outside the draft vocabulary: the engine's
                // sampling and acceptance see an ordinary distribution that never drafts those.
                let subset = head.forward(&normed)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                Ok(subset
                    .into_iter()
                    .map(|logits| {
                        let mut row = vec![f32::NEG_INFINITY; llama.vocab_size()];
                        for (&id, logit) in ids.iter().zip(logits) {
                            row[id as usize] = logit;
                        }
                        row
                    })
                    .collect())
            }
            _ => llama.head(&normed),
        }
    }
}

/// The ids of a reduced draft vocabulary (`draft_vocab_size` in the config), checked.
fn draft_vocab(w: &Weights, config: &LlamaConfig) -> Result<Option<Vec<u32>>> {
    let Some(size) = config.recycle.as_ref().and_then(|r| r.draft_vocab_size) else {
        return Ok(None);
    };
    let values = w.get("draft_vocab", &[size], crate::weights::Init::Ones)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let ids: Vec<u32> = values.iter().map(|&v| v as u32).collect();
    if let Some(bad) = values.iter().zip(&ids).find(|(v, id)| **v != **id as f32 || **id as usize >= config.vocab_size)
    {
        return Err(ModelError::Config(format!(
            "draft_vocab holds {}, not a token id below {}",
            bad.0, config.vocab_size
        )));
    }
    Ok(Some(ids))
}
