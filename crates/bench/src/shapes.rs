//! The benchmark shapes: random-weight Llama models built in memory with a fixed seed.
use recyclegpt_model::{LlamaConfig, RecycleConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// dim 288, 6 layers, 6 heads, hidden 768 (llama2.c's 15M).
    M1,
    /// dim 768, 12 layers, 12 heads, hidden 2048.
    M3,
    /// dim 2048, 22 layers, 32 heads, 4 KV heads, hidden 5632 (TinyLlama-1.1B).
    M4,
}

impl std::str::FromStr for Shape {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "M1" => Ok(Shape::M1),
            "M3" => Ok(Shape::M3),
            "M4" => Ok(Shape::M4),
            other => Err(format!("unknown shape `{other}` (M1, M3 or M4)")),
        }
    }
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::M1 => "M1",
            Shape::M3 => "M3",
            Shape::M4 => "M4",
        }
    }

    /// The base config and a one-layer module shaped like one of its layers.
    pub fn config(self) -> (LlamaConfig, RecycleConfig) {
        let (dim, layers, heads, kv_heads, hidden) = match self {
            Shape::M1 => (288, 6, 6, 6, 768),
            Shape::M3 => (768, 12, 12, 12, 2048),
            Shape::M4 => (2048, 22, 32, 4, 5632),
        };
        let config = LlamaConfig {
            vocab_size: 32000,
            hidden_size: dim,
            intermediate_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim: None,
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            rope_freq_factors: None,
            tie_word_embeddings: false,
            hidden_act: "silu".into(),
            bos_token_id: Some(1),
            eos_token_id: None,
            recycle: None,
            qkv_bias: false,
            qk_norm: false,
            sandwich_norms: false,
            scale_embeddings: false,
            sliding_window: None,
            family: Default::default(),
        };
        let recycle = config.default_recycle(1);
        (config, recycle)
    }
}
