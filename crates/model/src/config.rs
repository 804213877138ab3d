//! `config.json` of a HuggingFace Llama model, plus the `recycle` block this project adds.
use crate::error::{ModelError, Result};
use declared::Declared;
use recyclegpt_kernels::GateActivation;
use serde::{Deserialize, Serialize};
use std::path::Path;

mod declared;

/// `hidden_act` of a GELU gate with the tanh approximation (Gemma).
const GELU_TANH: &str = "gelu_pytorch_tanh";

/// The longest context a model may declare. The RoPE tables are built for the whole declared
/// context (a quarter of a GiB at this length and head size 128), so a file that declares 2^40
/// positions must be refused, not allocated; 2^20 is above every Llama-family context (Llama 3.1
/// 128k, the 1M-token long-context variants).
pub const MAX_POSITIONS: usize = 1 << 20;

/// `eos_token_id` may be a single id or a list of ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// `rope_scaling` as Llama 3.x writes it; only the `llama3` type is supported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    pub factor: f64,
    #[serde(default = "one")]
    pub low_freq_factor: f64,
    #[serde(default = "four")]
    pub high_freq_factor: f64,
    #[serde(default = "default_original_context")]
    pub original_max_position_embeddings: usize,
}

fn one() -> f64 {
    1.0
}
fn four() -> f64 {
    4.0
}
fn default_original_context() -> usize {
    8192
}
fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_context() -> usize {
    2048
}
fn default_act() -> String {
    "silu".to_string()
}

/// The recyclable module's shape: a few Llama decoder layers of the model's width.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecycleConfig {
    pub num_layers: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Drafts come from this many tokens only (`draft_vocab` in `recycle.safetensors` lists
    /// them), a row subset of the shared head: the module's step reads that many head rows
    /// instead of the whole vocabulary. Verification stays over the full vocabulary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_vocab_size: Option<usize>,
    /// Drafts the module may chain for one forward to verify (its output fed back as the next
    /// h); more than 1 only for a module trained to make that work (`train-recycle
    /// --feature-weight`). Absent: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_draft_tokens: Option<usize>,
    /// The module's form. Absent: the paper's, reading the base's last hidden state. Present:
    /// EAGLE-3's, reading the outputs of these base layers (counted from 1, rising; e.g. a low,
    /// a middle and the last), each normalised and fused by `fc` into one vector of the
    /// model's width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_layers: Option<Vec<usize>>,
}

impl RecycleConfig {
    /// The base layers whose outputs the module reads: the last alone in the paper's form.
    pub fn taps(&self, base_layers: usize) -> Vec<usize> {
        self.feature_layers.clone().unwrap_or_else(|| vec![base_layers])
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    #[serde(default = "default_context")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Per-frequency divisors of the rotary frequencies, as a GGUF file's `rope_freqs.weight`
    /// carries Llama 3's scaling (`head_dim / 2` values); not part of an HF `config.json`.
    #[serde(skip)]
    pub rope_freq_factors: Option<Vec<f32>>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycle: Option<RecycleConfig>,
    /// Biases on the query, key and value projections (Qwen2): set from `architectures` or a
    /// GGUF file's architecture.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qkv_bias: bool,
    /// An RMSNorm over each query and key head before RoPE (Qwen3), likewise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qk_norm: bool,
    /// Norms on the attention's and the feed-forward's outputs too, before each joins the
    /// residual (Gemma): set by the family.
    #[serde(skip)]
    pub sandwich_norms: bool,
    /// Token embeddings multiplied by √hidden_size (Gemma): set by the family.
    #[serde(skip)]
    pub scale_embeddings: bool,
    /// Local attention on most layers (Gemma 3), from a GGUF file's metadata or `config.json`.
    #[serde(skip)]
    pub sliding_window: Option<SlidingWindow>,
    /// The family the file names (how an HF checkpoint lays out its tensors).
    #[serde(skip)]
    pub family: Family,
}

/// Gemma 3's local layers: each attends to the last `size` positions only (its own included),
/// its RoPE on a base of its own; every `pattern`-th layer attends to the whole context.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlidingWindow {
    pub size: usize,
    pub pattern: usize,
    pub rope_theta: f64,
}

impl SlidingWindow {
    /// Whether layer `layer` (from 0) is local.
    pub fn covers(&self, layer: usize) -> bool {
        is_local(self.pattern, layer)
    }
}

/// Whether layer `layer` is local when every `pattern`-th layer is global; a pattern of 0 makes
/// every layer local, as in llama.cpp.
fn is_local(pattern: usize, layer: usize) -> bool {
    pattern == 0 || layer % pattern < pattern - 1
}

/// The decoder families served: Llama's layer, and the options that make it another's.
const ARCHITECTURES: [(&str, Family); 6] = [
    ("LlamaForCausalLM", Family::Llama),
    ("MistralForCausalLM", Family::Llama),
    ("Qwen2ForCausalLM", Family::Qwen2),
    ("Qwen3ForCausalLM", Family::Qwen3),
    ("Phi3ForCausalLM", Family::Phi3),
    ("Gemma3ForCausalLM", Family::Gemma3),
];

/// A family of decoders, as a GGUF file (`general.architecture`) or an HF `config.json`
/// (`architectures`) names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    Llama,
    /// Llama's layer with biases on the query, key and value projections.
    Qwen2,
    /// Llama's layer with a per-head RMSNorm on queries and keys.
    Qwen3,
    /// Llama's layer, its files stacking the query, key and value projections and the gate and
    /// up projections.
    Phi3,
    /// Qwen3's head norms, with norms around both halves of the layer, a GELU gate, scaled
    /// embeddings and local attention layers (HF checkpoints store the norms as `w - 1` under
    /// names of their own: `hf_layout.rs`).
    Gemma3,
}

/// The families GGUF files name in `general.architecture`.
const GGUF_ARCHITECTURES: [(&str, Family); 5] = [
    ("llama", Family::Llama),
    ("qwen2", Family::Qwen2),
    ("qwen3", Family::Qwen3),
    ("phi3", Family::Phi3),
    ("gemma3", Family::Gemma3),
];

impl Family {
    /// The family of a GGUF file's `general.architecture`.
    pub fn from_gguf(architecture: &str) -> Option<Self> {
        GGUF_ARCHITECTURES.iter().find(|(name, _)| *name == architecture).map(|&(_, family)| family)
    }

    /// The GGUF architectures served, for error messages.
    pub fn gguf_names() -> String {
        GGUF_ARCHITECTURES.map(|(name, _)| name).join(", ")
    }

    /// Sets the options of this family on `config`.
    pub fn apply(self, config: &mut LlamaConfig) {
        let gemma = self == Family::Gemma3;
        config.family = self;
        config.qkv_bias = self == Family::Qwen2;
        config.qk_norm = self == Family::Qwen3 || gemma;
        config.sandwich_norms = gemma;
        config.scale_embeddings = gemma;
        if gemma {
            config.hidden_act = GELU_TANH.into();
        }
    }
}

/// The shape of one stack of Llama decoder layers (the base model's or the module's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StackShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f64,
    /// The family's options (see [`LlamaConfig`]); a module's layers are Llama's.
    pub qkv_bias: bool,
    pub qk_norm: bool,
    pub sandwich_norms: bool,
    pub activation: GateActivation,
    pub window: Option<SlidingWindow>,
}

impl StackShape {
    fn validate(&self, what: &str) -> Result<()> {
        let fail = |m: String| Err(ModelError::Config(format!("{what}: {m}")));
        if self.hidden == 0 || self.intermediate == 0 || self.heads == 0 || self.kv_heads == 0 {
            return fail("sizes and head counts must be positive".into());
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return fail(format!(
                "{} attention heads do not divide into {} key/value heads",
                self.heads, self.kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return fail(format!("head_dim {} must be even and positive", self.head_dim));
        }
        Ok(())
    }
}

/// How positions are rotated: the base, and Llama 3's scaling as HF configs write it
/// (`rope_scaling`) or as GGUF files carry it (per-frequency factors).
#[derive(Debug, Clone, Copy)]
pub struct RopeParams<'a> {
    pub theta: f64,
    pub scaling: Option<&'a RopeScaling>,
    pub factors: Option<&'a [f32]>,
}

impl LlamaConfig {
    pub fn rope(&self) -> RopeParams<'_> {
        RopeParams {
            theta: self.rope_theta,
            scaling: self.rope_scaling.as_ref(),
            factors: self.rope_freq_factors.as_deref(),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::file(path, e))?;
        let mut config: LlamaConfig =
            serde_json::from_str(&text).map_err(|e| ModelError::file(path, format!("invalid JSON: {e}")))?;
        let declared = Declared::read(&text).map_err(|e| ModelError::file(path, e))?;
        let family = match declared.architectures.as_ref().and_then(|names| names.first()) {
            Some(name) => {
                let Some(&(_, family)) = ARCHITECTURES.iter().find(|(known, _)| known == name) else {
                    let served: Vec<&str> = ARCHITECTURES.iter().map(|(name, _)| *name).collect();
                    return Err(ModelError::file(
                        path,
                        format!("architecture `{name}` is not supported: {} are served", served.join(", ")),
                    ));
                };
                family.apply(&mut config);
                family
            }
            None => Family::Llama,
        };
        if declared.partial_rotary_factor.is_some_and(|factor| factor != 1.0) {
            return Err(ModelError::file(
                path,
                "partial_rotary_factor (RoPE on part of each head) is not supported yet",
            ));
        }
        if family == Family::Gemma3 {
            declared.gemma3(&mut config).map_err(|e| ModelError::file(path, e))?;
        } else if let Some(window) = declared.sliding_window.filter(|_| declared.use_sliding_window != Some(false)) {
            // Attention is over the whole context in Llama's layer: a model trained with a
            // sliding window (Mistral 7B v0.1) serves up to that window only, not past it with
            // other answers.
            config.max_position_embeddings = config.max_position_embeddings.min(window.max(1));
        }
        config.validate().map_err(|e| ModelError::file(path, e))?;
        Ok(config)
    }

    /// The gate's activation `hidden_act` names.
    fn activation(&self) -> Option<GateActivation> {
        match self.hidden_act.as_str() {
            "silu" => Some(GateActivation::Silu),
            GELU_TANH => Some(GateActivation::GeluTanh),
            _ => None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.activation().is_none() {
            return Err(ModelError::Config(format!(
                "hidden_act `{}` is not supported (supported: silu, {GELU_TANH})",
                self.hidden_act
            )));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) && self.head_dim.is_none() {
            return Err(ModelError::Config(format!(
                "hidden_size {} does not divide into {} heads",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.vocab_size == 0 || self.max_position_embeddings == 0 {
            return Err(ModelError::Config("vocab_size and max_position_embeddings must be positive".into()));
        }
        if self.max_position_embeddings > MAX_POSITIONS {
            return Err(ModelError::Config(format!(
                "a context of {} positions is beyond the {MAX_POSITIONS} this server supports",
                self.max_position_embeddings
            )));
        }
        let eos = self.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default();
        if let Some(id) = self.bos_token_id.into_iter().chain(eos).find(|&id| id as usize >= self.vocab_size) {
            return Err(ModelError::Config(format!(
                "special token id {id} is outside the vocabulary of {} tokens",
                self.vocab_size
            )));
        }
        if let Some(scaling) = &self.rope_scaling {
            if scaling.rope_type != "llama3" {
                return Err(ModelError::Config(format!(
                    "rope_scaling type `{}` is not supported (only llama3)",
                    scaling.rope_type
                )));
            }
        }
        self.base_shape().validate("model")?;
        if self.recycle.as_ref().and_then(|r| r.max_draft_tokens).is_some_and(|k| k == 0) {
            return Err(ModelError::Config("recycle.max_draft_tokens must be at least 1".into()));
        }
        if self.recycle.as_ref().and_then(|r| r.draft_vocab_size).is_some_and(|k| k == 0 || k > self.vocab_size) {
            return Err(ModelError::Config(format!(
                "recycle.draft_vocab_size must lie between 1 and the vocabulary size ({})",
                self.vocab_size
            )));
        }
        if let Some(shape) = self.recycle_shape() {
            shape.validate("recycle")?;
        }
        if let Some(layers) = self.recycle.as_ref().and_then(|r| r.feature_layers.as_ref()) {
            let rising = layers.windows(2).all(|w| w[0] < w[1]);
            if layers.is_empty() || !rising || layers[0] == 0 || layers[layers.len() - 1] > self.num_hidden_layers {
                return Err(ModelError::Config(format!(
                    "recycle.feature_layers must rise strictly between 1 and the model's {} layers, not {layers:?}",
                    self.num_hidden_layers
                )));
            }
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn base_shape(&self) -> StackShape {
        StackShape {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self.head_dim(),
            eps: self.rms_norm_eps,
            qkv_bias: self.qkv_bias,
            qk_norm: self.qk_norm,
            sandwich_norms: self.sandwich_norms,
            activation: self.activation().unwrap_or(GateActivation::Silu),
            window: self.sliding_window,
        }
    }

    pub fn recycle_shape(&self) -> Option<StackShape> {
        self.recycle.as_ref().map(|r| StackShape {
            hidden: self.hidden_size,
            intermediate: r.intermediate_size,
            layers: r.num_layers,
            heads: r.num_attention_heads,
            kv_heads: r.num_key_value_heads,
            head_dim: r.head_dim.unwrap_or(self.hidden_size / r.num_attention_heads.max(1)),
            eps: self.rms_norm_eps,
            qkv_bias: false,
            qk_norm: false,
            sandwich_norms: false,
            activation: GateActivation::Silu,
            window: None,
        })
    }

    /// A module shaped like one of the base model's layers, `layers` deep.
    pub fn default_recycle(&self, layers: usize) -> RecycleConfig {
        let base = self.base_shape();
        RecycleConfig {
            num_layers: layers,
            intermediate_size: base.intermediate,
            num_attention_heads: base.heads,
            num_key_value_heads: base.kv_heads,
            head_dim: self.head_dim,
            draft_vocab_size: None,
            max_draft_tokens: None,
            feature_layers: None,
        }
    }
}

#[cfg(test)]
mod tests;
