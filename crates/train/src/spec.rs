//! What `train` builds and how long it trains: a TOML file, every key optional.
use crate::TrainError;
use recyclegpt_model::LlamaConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSpec {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub tie_word_embeddings: bool,
    pub recycle_layers: usize,
    /// Tokens per training window (also the model's context).
    pub seq_len: usize,
    pub batch: usize,
    pub steps: usize,
    pub learning_rate: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// λ in L_lm + λ·L_rec.
    pub recycle_weight: f64,
    /// Steps between evaluations (each also writes a checkpoint).
    pub eval_every: usize,
    pub seed: u64,
    /// A context curriculum: the first steps train on shorter windows.
    pub short_context: Option<ShortContext>,
}

/// The first `steps` steps train on `batch` windows of `seq_len` tokens before the rest train
/// at the full context. For the same tokens per step, short windows give a small model many
/// more independent contexts per step, which is where it learns fastest; the long stage at the
/// end then teaches it every position up to the full context. Two windows of 1,024 per step
/// from the start trained the embedded model's shape far more slowly.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShortContext {
    pub seq_len: usize,
    pub batch: usize,
    pub steps: usize,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            vocab_size: 2048,
            hidden_size: 128,
            intermediate_size: 344,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 4,
            tie_word_embeddings: true,
            recycle_layers: 1,
            seq_len: 128,
            batch: 16,
            steps: 1000,
            learning_rate: 3e-3,
            warmup: 50,
            weight_decay: 0.1,
            max_grad_norm: 1.0,
            recycle_weight: 1.0,
            eval_every: 100,
            seed: 0,
            short_context: None,
        }
    }
}

impl TrainSpec {
    pub fn from_toml_file(path: &std::path::Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))
    }

    /// (windows, tokens per window) at `step`.
    pub fn window_shape(&self, step: usize) -> (usize, usize) {
        match &self.short_context {
            Some(short) if step < short.steps => (short.batch, short.seq_len),
            _ => (self.batch, self.seq_len),
        }
    }

    /// The model's config.json for a tokenizer of `vocab_size` tokens.
    pub fn llama_config(&self, vocab_size: usize) -> Result<LlamaConfig, TrainError> {
        if self.batch == 0 || self.seq_len < 3 || self.steps == 0 {
            return Err(TrainError::Data("batch and steps must be positive and seq_len at least 3".into()));
        }
        if let Some(short) = &self.short_context {
            if short.batch == 0 || short.seq_len < 3 || short.seq_len > self.seq_len || short.steps >= self.steps {
                return Err(TrainError::Data(format!(
                    "short_context needs a positive batch, 3 <= seq_len <= {} and fewer than {} steps",
                    self.seq_len, self.steps
                )));
            }
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(TrainError::Data(format!(
                "hidden_size {} does not divide into {} heads",
                self.hidden_size, self.num_attention_heads
            )));
        }
        let config = LlamaConfig {
            vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: Some(self.num_key_value_heads),
            head_dim: None,
            max_position_embeddings: self.seq_len,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            rope_freq_factors: None,
            tie_word_embeddings: self.tie_word_embeddings,
            hidden_act: "silu".into(),
            bos_token_id: Some(1),
            eos_token_id: Some(recyclegpt_model::config::TokenIds::One(2)),
            recycle: None,
            qkv_bias: false,
            qk_norm: false,
            sandwich_norms: false,
            scale_embeddings: false,
            sliding_window: None,
            family: Default::default(),
        };
        config.validate()?;
        Ok(config)
    }
}
