//! What an HF `config.json` declares beside [`LlamaConfig`]'s own fields: the family, a sliding
//! window, and Gemma 3's names and options.
use super::{is_local, LlamaConfig, SlidingWindow};
use serde::Deserialize;

/// What an HF `config.json` says beside [`LlamaConfig`]'s own fields: the family, its sliding
/// window, and Gemma 3's names and options.
#[derive(Deserialize, Default)]
pub(super) struct Declared {
    pub(super) architectures: Option<Vec<String>>,
    pub(super) sliding_window: Option<usize>,
    /// Qwen2's configs name a window they do not use (`false`).
    pub(super) use_sliding_window: Option<bool>,
    /// Gemma's name for `hidden_act`.
    hidden_activation: Option<String>,
    /// Gemma 3: `sliding_attention` or `full_attention` per layer (newer configs), or every
    /// `sliding_window_pattern`-th layer full (older ones).
    layer_types: Option<Vec<String>>,
    /// Phi-4-mini's rotation of part of each head only.
    pub(super) partial_rotary_factor: Option<f64>,
    sliding_window_pattern: Option<usize>,
    rope_local_base_freq: Option<f64>,
    query_pre_attn_scalar: Option<f64>,
    final_logit_softcapping: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    tie_word_embeddings: Option<bool>,
}

impl Declared {
    /// What `text` declares. Its fields are read strictly for Gemma 3, whose options they are;
    /// another family's config with an odd value in one of them (a `sliding_window` of -1)
    /// loads as before, without them.
    pub(super) fn read(text: &str) -> Result<Self, String> {
        match serde_json::from_str::<Declared>(text) {
            Ok(declared) => Ok(declared),
            Err(e) if text.contains("Gemma3ForCausalLM") => Err(format!("invalid Gemma 3 config: {e}")),
            Err(_) => Ok(Declared::default()),
        }
    }

    /// Gemma 3's options on `config`, or why they cannot be served.
    pub(super) fn gemma3(&self, config: &mut LlamaConfig) -> std::result::Result<(), String> {
        if let Some(act) = &self.hidden_activation {
            config.hidden_act = act.clone();
        }
        // Gemma ties its head unless the config says otherwise.
        config.tie_word_embeddings = self.tie_word_embeddings.unwrap_or(true);
        if self.final_logit_softcapping.is_some() || self.attn_logit_softcapping.is_some() {
            return Err("Gemma 3 with logit soft-capping is not supported yet".into());
        }
        // Gemma 3 4B and larger scale the global layers' positions linearly (factor 8): their
        // frequencies divided by it, as a GGUF file's `rope_freqs` divides them.
        if let Some(scaling) = config.rope_scaling.take_if(|s| s.rope_type == "linear") {
            config.rope_freq_factors = Some(vec![scaling.factor as f32; config.head_dim() / 2]);
        }
        let head_dim = config.head_dim() as f64;
        if self.query_pre_attn_scalar.is_some_and(|scalar| scalar != head_dim) {
            return Err(format!("query_pre_attn_scalar other than head_dim ({head_dim}) is not supported yet"));
        }
        let Some(size) = self.sliding_window.filter(|&size| size > 0) else { return Ok(()) };
        let pattern = match &self.layer_types {
            Some(types) => {
                // The period: the first full layer's place, which every other layer must follow.
                let pattern = types.iter().position(|t| t == "full_attention").map_or(0, |i| i + 1);
                if types.len() != config.num_hidden_layers
                    || types.iter().enumerate().any(|(i, t)| is_local(pattern, i) != (t == "sliding_attention"))
                {
                    return Err(format!(
                        "layer_types {types:?} do not repeat one period of local layers then a full one"
                    ));
                }
                pattern
            }
            None => self.sliding_window_pattern.unwrap_or(6),
        };
        config.sliding_window =
            Some(SlidingWindow { size, pattern, rope_theta: self.rope_local_base_freq.unwrap_or(10_000.0) });
        Ok(())
    }
}
