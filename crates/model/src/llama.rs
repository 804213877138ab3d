//! The base Llama model: embedding, decoder stack, final norm, output head.
use crate::config::LlamaConfig;
use crate::decoder::DecoderStack;
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::layers::{Linear, RmsNorm, SeqSlot};
use crate::quantize::Quantization;
use crate::weights::{Init, Weights};
use candle_core::Tensor;

/// One sequence's part of a ragged forward.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// Indices into `tokens` whose next-token logits the caller needs.
    pub logits_rows: Vec<usize>,
}

pub struct ForwardOutput {
    /// The last decoder layer's output for every new token, before the final norm: `[T, d]`.
    pub hidden: Tensor,
    /// What the recyclable module reads for every new token, `[T, d]`: of the base model, its
    /// last hidden state (the paper's form) or its fused feature layers (EAGLE-3's form); of
    /// the module, its own output (what a chained draft feeds back).
    pub features: Tensor,
    /// One row of logits per requested position, in input order.
    pub logits: Vec<Vec<f32>>,
}

pub struct Llama {
    /// The token embedding, `None` when the tied head keeps it exactly in its own blocks (a
    /// GGUF file's embedding kept as stored): rows are then read from the head as they are
    /// looked up, rather than kept a second time in f32 (Gemma 3's 262k × 640 would be 671 MB
    /// beside a 178 MB head).
    embed: Option<Tensor>,
    /// Whether the head is the embedding matrix.
    tied: bool,
    stack: DecoderStack,
    norm: RmsNorm,
    head: Linear,
    vocab_size: usize,
    /// What the embeddings are multiplied by (Gemma's √hidden), if anything.
    embed_scale: Option<f64>,
}

impl Llama {
    pub fn load(w: &Weights, config: &LlamaConfig) -> Result<Self> {
        let (vocab, dim) = (config.vocab_size, config.hidden_size);
        let model = w.pp("model");
        let embed = model.pp("embed_tokens").get("weight", &[vocab, dim], Init::Normal(0.02))?;
        let stack = DecoderStack::load(
            &model.pp("layers"),
            config.base_shape(),
            config.max_position_embeddings,
            config.rope(),
            0,
        )?;
        let norm = RmsNorm::load(&model, "norm", dim, config.rms_norm_eps)?;
        // Some tied checkpoints still carry `lm_head.weight`; tying wins only when it is absent.
        let tied = config.tie_word_embeddings && !w.pp("lm_head").contains("weight");
        let head = if tied {
            Linear::from_stored(embed.clone(), &model.pp("embed_tokens"), &["weight"])?
        } else {
            Linear::load(w, "lm_head", vocab, dim)?
        };
        // In f32, as llama.cpp scales them (HF's Gemma rounds the factor to the weights' dtype).
        let embed_scale = config.scale_embeddings.then(|| f64::from((dim as f32).sqrt()));
        let embed = if tied && w.is_gguf() && head.holds_exactly(&embed)? { None } else { Some(embed) };
        Ok(Self { embed, tied, stack, norm, head, vocab_size: vocab, embed_scale })
    }

    /// The token embedding `[vocab, d]` as the decoder reads it (scaled, for Gemma) and the
    /// output head `[vocab, d]`; an error when an untied head is kept quantized only.
    pub fn embedding_and_head(&self) -> Result<(Tensor, Tensor)> {
        let embed = match &self.embed {
            Some(embed) => embed.clone(),
            None => self.head.dequantized()?,
        };
        let scaled = match self.embed_scale {
            Some(scale) => (&embed * scale)?,
            None => embed.clone(),
        };
        if self.tied {
            return Ok((scaled, embed));
        }
        let head = self.head.weight().ok_or_else(|| {
            ModelError::Config("the output head is kept quantized only; load the model with --quantize none".into())
        })?;
        Ok((scaled, head.clone()))
    }

    /// Bytes of weights a 1-token forward reads: every layer's matrices and the output head (the
    /// embedding lookup reads one row).
    pub fn matrix_bytes(&self) -> usize {
        self.stack.matrix_bytes() + self.head.bytes()
    }

    /// The format the base's layers are kept in, if quantized (their feed-forward's, the bulk
    /// of each layer).
    pub fn layer_quantization(&self) -> Option<Quantization> {
        self.stack.layer_quantization()
    }

    /// The format the output head is kept in, if quantized.
    pub fn head_quantization(&self) -> Option<Quantization> {
        self.head.quantization()
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Rows `ids` of the output head, unquantized `[ids, d]` (dequantized when the head is kept
    /// quantized only).
    pub fn head_rows(&self, ids: &[u32]) -> Result<Tensor> {
        match (self.tied, &self.embed, self.head.weight()) {
            (true, Some(embed), _) => Ok(embed.index_select(&Tensor::new(ids, embed.device())?, 0)?),
            (false, _, Some(weight)) => Ok(weight.index_select(&Tensor::new(ids, weight.device())?, 0)?),
            _ => self.head.rows(ids),
        }
    }

    pub fn stack(&self) -> &DecoderStack {
        &self.stack
    }

    pub fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(ModelError::Input(format!("token id {bad} is outside the vocabulary of {}", self.vocab_size)));
        }
        let rows = match &self.embed {
            Some(embed) => embed.index_select(&Tensor::new(tokens, embed.device())?, 0)?,
            None => self.head.rows(tokens)?,
        };
        Ok(match self.embed_scale {
            Some(scale) => (rows * scale)?,
            None => rows,
        })
    }

    /// Final norm and output head over the chosen rows of `hidden`.
    pub fn logits(&self, hidden: &Tensor, rows: &[u32]) -> Result<Vec<Vec<f32>>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let rows = Tensor::new(rows, hidden.device())?;
        let selected = self.norm.forward(&hidden.index_select(&rows, 0)?)?;
        logits_to_vec(&self.head.forward(&selected)?)
    }

    /// The head alone (for the recyclable module, which brings its own final norm).
    pub fn head(&self, normed: &Tensor) -> Result<Vec<Vec<f32>>> {
        logits_to_vec(&self.head.forward(normed)?)
    }

    /// One ragged forward; `features` is the last hidden state, and `taps` the output of each
    /// layer it names (counted from 1), `[T, d]` each.
    pub fn forward_tapped(&self, inputs: &mut [SeqInput], taps: &[usize]) -> Result<(ForwardOutput, Vec<Tensor>)> {
        let tokens: Vec<u32> = inputs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let rows = gather_logit_rows(inputs);
        let mut slots: Vec<SeqSlot> =
            inputs.iter_mut().map(|s| SeqSlot { new_tokens: s.tokens.len(), cache: &mut *s.cache }).collect();
        let (hidden, tapped) = self.stack.forward_tapped(self.embed(&tokens)?, &mut slots, taps)?;
        let logits = self.logits(&hidden, &rows)?;
        Ok((ForwardOutput { features: hidden.clone(), hidden, logits }, tapped))
    }
}

/// Row indices into the flattened batch for every position whose logits were asked for.
pub(crate) fn gather_logit_rows(inputs: &[SeqInput]) -> Vec<u32> {
    let mut rows = Vec::new();
    let mut offset = 0;
    for s in inputs {
        rows.extend(s.logits_rows.iter().map(|&r| (offset + r) as u32));
        offset += s.tokens.len();
    }
    rows
}

fn logits_to_vec(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
}
