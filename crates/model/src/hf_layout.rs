//! Where an HF checkpoint of each family keeps the tensors this model names after Llama's layout:
//! Gemma's norms under names of their own and stored as `w - 1` (its RMSNorm multiplies by
//! `1 + w`), Phi-3's query, key and value projections in one matrix and its gate and up ones in
//! another.
use crate::config::{Family, LlamaConfig};

/// A family's HF layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum HfLayout {
    #[default]
    Llama,
    Gemma,
    /// Phi-3's fused rows: the query, key/value and feed-forward widths.
    Phi3 {
        q: usize,
        kv: usize,
        ff: usize,
    },
}

/// Where one tensor is stored: its name, the rows of it that are ours (all when `None`), and
/// whether 1 is added to it (a Gemma norm).
#[derive(Debug, PartialEq)]
pub(crate) struct Stored {
    pub name: String,
    pub rows: Option<(usize, usize)>,
    pub plus_one: bool,
}

impl HfLayout {
    pub(crate) fn of(config: &LlamaConfig) -> Self {
        match config.family {
            Family::Gemma3 => HfLayout::Gemma,
            Family::Phi3 => {
                let head_dim = config.head_dim();
                let kv_heads = config.num_key_value_heads.unwrap_or(config.num_attention_heads);
                HfLayout::Phi3 {
                    q: config.num_attention_heads * head_dim,
                    kv: kv_heads * head_dim,
                    ff: config.intermediate_size,
                }
            }
            _ => HfLayout::Llama,
        }
    }

    /// Where the tensor this model calls `name` is stored.
    pub(crate) fn locate(self, name: &str) -> Stored {
        let renamed = |from: &str, to: &str| name.strip_suffix(from).map(|stem| format!("{stem}{to}"));
        match self {
            HfLayout::Llama => Stored { name: name.to_string(), rows: None, plus_one: false },
            HfLayout::Gemma => {
                let stored = renamed("post_attention_layernorm.weight", "pre_feedforward_layernorm.weight")
                    .or_else(|| renamed("attention_output_norm.weight", "post_attention_layernorm.weight"))
                    .or_else(|| renamed("feedforward_output_norm.weight", "post_feedforward_layernorm.weight"))
                    .unwrap_or_else(|| name.to_string());
                // Every norm's name ends so (`input_layernorm`, `q_norm`, the final `norm`).
                let plus_one = stored.ends_with("norm.weight");
                Stored { name: stored, rows: None, plus_one }
            }
            HfLayout::Phi3 { q, kv, ff } => {
                let parts = [
                    ("self_attn.q_proj.weight", "self_attn.qkv_proj.weight", (0, q)),
                    ("self_attn.k_proj.weight", "self_attn.qkv_proj.weight", (q, kv)),
                    ("self_attn.v_proj.weight", "self_attn.qkv_proj.weight", (q + kv, kv)),
                    ("mlp.gate_proj.weight", "mlp.gate_up_proj.weight", (0, ff)),
                    ("mlp.up_proj.weight", "mlp.gate_up_proj.weight", (ff, ff)),
                ];
                parts
                    .iter()
                    .find_map(|(ours, theirs, rows)| {
                        renamed(ours, theirs).map(|name| Stored { name, rows: Some(*rows), plus_one: false })
                    })
                    .unwrap_or(Stored { name: name.to_string(), rows: None, plus_one: false })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_keeps_its_tensors_where_its_checkpoints_do() {
        let at = |layout: HfLayout, name: &str| layout.locate(name);
        assert_eq!(at(HfLayout::Llama, "model.norm.weight").name, "model.norm.weight");
        let gemma = at(HfLayout::Gemma, "model.layers.3.post_attention_layernorm.weight");
        assert_eq!((gemma.name.as_str(), gemma.plus_one), ("model.layers.3.pre_feedforward_layernorm.weight", true));
        let gemma = at(HfLayout::Gemma, "model.layers.3.attention_output_norm.weight");
        assert_eq!(gemma.name, "model.layers.3.post_attention_layernorm.weight");
        assert!(at(HfLayout::Gemma, "model.layers.0.self_attn.q_norm.weight").plus_one);
        assert!(!at(HfLayout::Gemma, "model.layers.0.self_attn.q_proj.weight").plus_one);
        let phi3 = HfLayout::Phi3 { q: 8, kv: 4, ff: 6 };
        assert_eq!(
            at(phi3, "model.layers.1.self_attn.v_proj.weight"),
            Stored { name: "model.layers.1.self_attn.qkv_proj.weight".into(), rows: Some((12, 4)), plus_one: false }
        );
        assert_eq!(at(phi3, "model.layers.1.mlp.up_proj.weight").rows, Some((6, 6)));
        assert_eq!(at(phi3, "model.layers.1.mlp.down_proj.weight").rows, None);
    }
}
