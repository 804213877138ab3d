//! Where a GGUF file keeps each tensor of the HuggingFace layout, per family: llama.cpp's
//! names, Llama's interleaved Q and K rows, and Phi-3's fused projections. Gemma's two extra
//! norms have no Llama name; they are called `attention_output_norm` and
//! `feedforward_output_norm` here (HF Gemma's `post_attention_layernorm` would clash with
//! Llama's name for the norm before the feed-forward).
use crate::config::Family;
use candle_core::Tensor;

/// How a tensor's rows are laid out in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rows {
    AsStored,
    /// Q or K rows with each head's RoPE pairs interleaved (`kv`: K, with the KV head count),
    /// as llama.cpp stores Llama's.
    Interleaved {
        kv: bool,
    },
    /// One projection's rows of a fused matrix (Phi-3's `attn_qkv` and `ffn_up`).
    Part(Fused),
}

/// The projections a fused matrix stacks, in their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fused {
    Query,
    Key,
    Value,
    Gate,
    Up,
}

/// The GGUF name of a HuggingFace-layout tensor in a file of `family`; `fused_qkv`: the file
/// stacks each layer's query, key and value projections in `attn_qkv`.
pub(super) fn gguf_name(hf: &str, family: Family, fused_qkv: bool) -> Option<(String, Rows)> {
    let plain = |name: &str| Some((name.to_string(), Rows::AsStored));
    match hf {
        "model.embed_tokens.weight" => return plain("token_embd.weight"),
        "model.norm.weight" => return plain("output_norm.weight"),
        "lm_head.weight" => return plain("output.weight"),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let phi3 = family == Family::Phi3;
    let (name, rows) = match part {
        "input_layernorm.weight" => ("attn_norm.weight", Rows::AsStored),
        "post_attention_layernorm.weight" => ("ffn_norm.weight", Rows::AsStored),
        "self_attn.q_proj.weight" if fused_qkv => ("attn_qkv.weight", Rows::Part(Fused::Query)),
        "self_attn.k_proj.weight" if fused_qkv => ("attn_qkv.weight", Rows::Part(Fused::Key)),
        "self_attn.v_proj.weight" if fused_qkv => ("attn_qkv.weight", Rows::Part(Fused::Value)),
        "self_attn.q_proj.weight" => ("attn_q.weight", Rows::Interleaved { kv: false }),
        "self_attn.k_proj.weight" => ("attn_k.weight", Rows::Interleaved { kv: true }),
        "self_attn.v_proj.weight" => ("attn_v.weight", Rows::AsStored),
        "self_attn.o_proj.weight" => ("attn_output.weight", Rows::AsStored),
        // Qwen2's biases and Qwen3's head norms.
        "self_attn.q_proj.bias" => ("attn_q.bias", Rows::AsStored),
        "self_attn.k_proj.bias" => ("attn_k.bias", Rows::AsStored),
        "self_attn.v_proj.bias" => ("attn_v.bias", Rows::AsStored),
        "self_attn.q_norm.weight" => ("attn_q_norm.weight", Rows::AsStored),
        "self_attn.k_norm.weight" => ("attn_k_norm.weight", Rows::AsStored),
        // Gemma's norms on the outputs of attention and of the feed-forward.
        "attention_output_norm.weight" => ("post_attention_norm.weight", Rows::AsStored),
        "feedforward_output_norm.weight" => ("post_ffw_norm.weight", Rows::AsStored),
        // Phi-3 stacks the gate above the up projection in `ffn_up`.
        "mlp.gate_proj.weight" if phi3 => ("ffn_up.weight", Rows::Part(Fused::Gate)),
        "mlp.up_proj.weight" if phi3 => ("ffn_up.weight", Rows::Part(Fused::Up)),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", Rows::AsStored),
        "mlp.up_proj.weight" => ("ffn_up.weight", Rows::AsStored),
        "mlp.down_proj.weight" => ("ffn_down.weight", Rows::AsStored),
        _ => return None,
    };
    Some((format!("blk.{layer}.{name}"), rows))
}

/// Undoes llama.cpp's permutation: within each head, stored row `2j + t` is HF row
/// `t · head_dim/2 + j` (pairs back into halves).
pub(super) fn rotate_half_order(tensor: &Tensor, heads: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = tensor.dims2()?;
    tensor.reshape((heads, head_dim / 2, 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn hf_names_map_to_gguf_names() {
        let llama = |hf| gguf_name(hf, Family::Llama, false);
        assert_eq!(llama("model.embed_tokens.weight").unwrap().0, "token_embd.weight");
        assert_eq!(
            llama("model.layers.12.self_attn.k_proj.weight").unwrap(),
            ("blk.12.attn_k.weight".into(), Rows::Interleaved { kv: true })
        );
        assert_eq!(llama("model.layers.3.mlp.down_proj.weight").unwrap().0, "blk.3.ffn_down.weight");
        assert!(llama("model.layers.x.mlp.down_proj.weight").is_none());
        assert_eq!(
            gguf_name("model.layers.0.self_attn.q_proj.bias", Family::Qwen2, false).unwrap().0,
            "blk.0.attn_q.bias"
        );
        let phi3 = |hf| gguf_name(hf, Family::Phi3, true).unwrap();
        assert_eq!(
            phi3("model.layers.1.self_attn.v_proj.weight"),
            ("blk.1.attn_qkv.weight".into(), Rows::Part(Fused::Value))
        );
        assert_eq!(
            phi3("model.layers.1.mlp.gate_proj.weight"),
            ("blk.1.ffn_up.weight".into(), Rows::Part(Fused::Gate))
        );
        assert_eq!(phi3("model.layers.1.mlp.up_proj.weight"), ("blk.1.ffn_up.weight".into(), Rows::Part(Fused::Up)));
    }

    #[test]
    fn the_rope_rows_go_back_to_rotate_half_order() {
        // One head of 4 dims, 1 column: stored (interleaved) rows are [x0, y0, x1, y1]; HF wants [x0, x1, y0, y1].
        let stored = Tensor::new(&[[0f32], [10.], [1.], [11.]], &Device::Cpu).unwrap();
        let hf = rotate_half_order(&stored, 1, 4).unwrap();
        assert_eq!(hf.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [0., 1., 10., 11.]);
    }
}
