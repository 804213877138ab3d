//! Decoder families beside Llama's, from GGUF files: Qwen2 (biases on the query, key and value
//! projections, Qwen's pre-tokenizer), Qwen3 (an RMSNorm on each query and key head) and Phi-3
//! (the query, key and value projections stacked in one matrix, the gate and up ones in another).
//! `../shared` holds no Qwen file, so SmolLM2's is rewritten as each: its metadata under the
//! architecture's names and the family's extra tensors added with fixed values. The same
//! weights then make another model, which llama.cpp's loader for that architecture runs too
//! (Qwen's files keep the Q and K rows in rotate-half order, so SmolLM2's interleaved rows are
//! put in that order). llama.cpp's greedy answers and tokens on the rewritten files, from
//! `llama-server` (`/completion` with the prompt's ids, `/tokenize`), are the reference in
//! `tests/data/smollm2_as_qwen*_llamacpp_*.json`.
mod common;

use candle_core::quantized::{gguf_file, QTensor};
use common::llamacpp::{assert_parting_only_at_near_ties_in, f32_tensor, ids, llamacpp_reference, rewritten};
use common::smollm2;
use recyclegpt_engine::{generate, DecodeMode, SamplingParams, StopCriteria};
use recyclegpt_model::{LoadOptions, LoadedModel, Quantization, RecycleInit};
use std::path::{Path, PathBuf};

/// A tensor a family adds per layer: GGUF name, length, and the centre and spread of its values
/// `centre + spread·sin(...)`.
type Added = (&'static str, usize, f32, f32);

/// The families, with the tensors each adds.
const FAMILIES: [(&str, &[Added]); 3] = [
    ("qwen2", &[("attn_q.bias", 576, 0.0, 0.1), ("attn_k.bias", 192, 0.0, 0.1), ("attn_v.bias", 192, 0.0, 0.1)]),
    ("qwen3", &[("attn_q_norm.weight", 64, 2.0, 0.3), ("attn_k_norm.weight", 64, 2.0, 0.3)]),
    ("phi3", &[]),
];

/// SmolLM2's heads: (query heads, key/value heads, head size).
const HEADS: (usize, usize, usize) = (9, 3, 64);

/// SmolLM2's file as a `family` file (written once under the target directory).
fn smollm2_as(source: &Path, family: &str) -> PathBuf {
    let (_, added) = FAMILIES.iter().find(|(name, _)| *name == family).expect("a family");
    rewritten(source, &format!("smollm2-as-{family}.gguf"), |metadata, tensors| {
        relabel(metadata, family);
        if family == "qwen2" {
            // Qwen2's split differs from SmolLM's where text has contractions and numbers.
            let pre = metadata.iter_mut().find(|(key, _)| key == "tokenizer.ggml.pre").expect("a pre-tokenizer");
            pre.1 = gguf_file::Value::String("qwen2".into());
        }
        for (name, tensor) in tensors.iter_mut() {
            let heads = match name.rsplit('.').nth(1) {
                Some("attn_q") => HEADS.0,
                Some("attn_k") => HEADS.1,
                _ => continue,
            };
            *tensor = rotate_half_rows(tensor, heads, HEADS.2);
        }
        if family == "phi3" {
            fuse(tensors, &["attn_q", "attn_k", "attn_v"], "attn_qkv");
            fuse(tensors, &["ffn_gate", "ffn_up"], "ffn_up");
        }
        for layer in 0..30 {
            for &(name, len, centre, spread) in added.iter() {
                let values: Vec<f32> =
                    (0..len).map(|i| centre + spread * ((i * 7 + layer * 13) as f32 * 0.61).sin()).collect();
                tensors.push((format!("blk.{layer}.{name}"), f32_tensor(&values)));
            }
        }
    })
}

/// Llama metadata as `family`'s: the architecture, and its keys under the family's prefix.
fn relabel(metadata: &mut [(String, gguf_file::Value)], family: &str) {
    for (key, value) in metadata.iter_mut() {
        if let Some(rest) = key.strip_prefix("llama.") {
            *key = format!("{family}.{rest}");
        } else if key == "general.architecture" {
            *value = gguf_file::Value::String(family.into());
        }
    }
}

/// A Q or K matrix of llama.cpp's Llama layout (each head's rows interleaved in RoPE pairs) in
/// rotate-half order, in its own type: within each head, row `2j + t` moves to `t·size/2 + j`.
fn rotate_half_rows(tensor: &QTensor, heads: usize, size: usize) -> QTensor {
    let values = tensor.dequantize(&candle_core::Device::Cpu).unwrap();
    let (rows, cols) = values.dims2().unwrap();
    let reordered = values
        .reshape((heads, size / 2, 2, cols))
        .and_then(|t| t.transpose(1, 2))
        .and_then(|t| t.contiguous())
        .and_then(|t| t.reshape((rows, cols)))
        .unwrap();
    QTensor::quantize(&reordered, tensor.dtype()).unwrap()
}

/// Replaces each layer's `parts` (`blk.N.PART.weight`) with one matrix `into` of their rows
/// stacked in order, in the first part's type.
fn fuse(tensors: &mut Vec<(String, QTensor)>, parts: &[&str], into: &str) {
    for layer in 0..30 {
        let names: Vec<String> = parts.iter().map(|part| format!("blk.{layer}.{part}.weight")).collect();
        let mut taken = Vec::new();
        for name in &names {
            let at = tensors.iter().position(|(n, _)| n == name).expect("the part");
            taken.push(tensors.remove(at).1);
        }
        let rows: Vec<candle_core::Tensor> =
            taken.iter().map(|t| t.dequantize(&candle_core::Device::Cpu).unwrap()).collect();
        let stacked = candle_core::Tensor::cat(&rows, 0).unwrap();
        tensors.push((format!("blk.{layer}.{into}.weight"), QTensor::quantize(&stacked, taken[0].dtype()).unwrap()));
    }
}

fn load(path: &Path, recycle_init: RecycleInit) -> LoadedModel {
    let options = LoadOptions { quantize: Some(Quantization::Q4_1), recycle_init, ..LoadOptions::default() };
    LoadedModel::load(path, &options).expect("loads")
}

#[test]
fn qwen2_qwen3_and_phi3_files_answer_as_llama_cpp_does() {
    let Some(source) = smollm2() else { return };
    for (family, _) in FAMILIES {
        let loaded = load(&smollm2_as(&source, family), RecycleInit::FromFiles);
        let config = loaded.model.config();
        assert_eq!((config.qkv_bias, config.qk_norm), (family == "qwen2", family == "qwen3"), "{family}");
        assert_parting_only_at_near_ties_in(&loaded, family, &format!("smollm2_as_{family}_llamacpp_greedy.json"));
    }
}

#[test]
fn qwen2_tokenizes_as_llama_cpp_does() {
    let Some(source) = smollm2() else { return };
    let loaded = load(&smollm2_as(&source, "qwen2"), RecycleInit::FromFiles);
    let cases = llamacpp_reference("smollm2_as_qwen2_llamacpp_tokens.json");
    assert!(cases.len() >= 10);
    for case in &cases {
        let text = case["text"].as_str().expect("text");
        assert_eq!(loaded.tokenizer.encode(text).unwrap(), ids(&case["ids"]), "{text:?}");
    }
    // Qwen's split takes digits one by one.
    let pieces = |text: &str| loaded.tokenizer.encode(text).unwrap().len();
    assert_eq!(pieces("2024"), 4);
}

/// A random module attaches to each family, and greedy `verify` emits what `off` does.
#[test]
fn verify_equals_off_on_every_family() {
    let Some(source) = smollm2() else { return };
    for (family, _) in FAMILIES {
        let loaded = load(&smollm2_as(&source, family), RecycleInit::Random { layers: 1, seed: 5 });
        assert!(loaded.model.has_recycle(), "{family}");
        for prompt in ["The capital of France is", "def fib(n):", "Once upon a time"] {
            let prompt = loaded.tokenizer.encode(prompt).unwrap();
            let run = |mode| {
                let stop = StopCriteria { max_tokens: 24, eos_ids: loaded.tokenizer.eos_ids().to_vec() };
                generate(&loaded.model, prompt.clone(), mode, SamplingParams::greedy(), stop).expect("runs")
            };
            let (off, verify) = (run(DecodeMode::Off), run(DecodeMode::Verify));
            assert_eq!(verify.ids, off.ids, "{family}");
            assert!(verify.stats.recycle_steps > 0, "{family}: the module never drafted");
        }
    }
}

/// A family's file without a tensor the family needs, or with one it does not serve, is refused
/// at load with the tensor named, never a panic.
#[test]
fn a_family_file_missing_its_tensors_is_refused_with_them_named() {
    let Some(source) = smollm2() else { return };
    let options = LoadOptions::default();
    // Qwen2 without its biases.
    let bare = rewritten(&source, "smollm2-as-qwen2-without-biases.gguf", |metadata, _| relabel(metadata, "qwen2"));
    let error = LoadedModel::load(&bare, &options).err().expect("refused").to_string();
    assert!(error.contains("blk.0.attn_q.bias") && error.contains("missing"), "{error}");
    // Phi-3 with LongRoPE factors.
    let phi3 = smollm2_as(&source, "phi3");
    let longrope = rewritten(&phi3, "smollm2-as-phi3-longrope.gguf", |_, tensors| {
        tensors.push(("rope_factors_long.weight".into(), f32_tensor(&[1.0; 32])));
    });
    let error = LoadedModel::load(&longrope, &options).err().expect("refused").to_string();
    assert!(error.contains("rope_factors_long.weight") && error.contains("LongRoPE"), "{error}");
}

/// One tensor of a tiny model written both ways: its HF name, its GGUF name, its shape, and
/// whether it is a norm that Gemma's HF checkpoints store as `w - 1`.
type Twin = (String, String, Vec<usize>, bool);

/// Writes a tiny model with random weights as an HF directory (`config` and `tensors` under
/// their HF names) and as a GGUF file (`metadata`, the tensors under their GGUF names, norms as
/// `w`), then checks that both load to the same logits, bit for bit, over 12 tokens.
fn loads_alike(name: &str, config: serde_json::Value, metadata: &[(String, gguf_file::Value)], tensors: &[Twin]) {
    use candle_core::{Device, Tensor};
    use recyclegpt_model::gguf::GgufFile;
    use recyclegpt_model::{RecycleGpt, SeqInput};
    let dir = common::scratch(name);
    let vocab = config["vocab_size"].as_u64().expect("vocab_size") as u32;
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let (mut hf, mut gguf) = (std::collections::HashMap::new(), Vec::new());
    for (i, (hf_name, gguf_name, shape, shifted)) in tensors.iter().enumerate() {
        let len: usize = shape.iter().product();
        let centre = if *shifted { 0.1 } else { 0.0 };
        let stored: Vec<f32> = (0..len).map(|j| centre + 0.3 * (j as f32 * 0.77 + i as f32 * 1.3).sin()).collect();
        hf.insert(hf_name.clone(), Tensor::from_vec(stored.clone(), shape.as_slice(), &Device::Cpu).unwrap());
        let effective: Vec<f32> = stored.iter().map(|v| if *shifted { v + 1.0 } else { *v }).collect();
        let effective = Tensor::from_vec(effective, shape.as_slice(), &Device::Cpu).unwrap();
        gguf.push((gguf_name.clone(), QTensor::quantize(&effective, candle_core::quantized::GgmlDType::F32).unwrap()));
    }
    candle_core::safetensors::save(&hf, dir.join("model.safetensors")).unwrap();
    let gguf_path = dir.join(format!("{name}.gguf"));
    let metadata: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let gguf: Vec<(&str, &QTensor)> = gguf.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut std::fs::File::create(&gguf_path).unwrap(), &metadata, &gguf).unwrap();
    let options = LoadOptions::default();
    let from_hf = RecycleGpt::load(&dir, &options).expect("the HF directory loads");
    let from_gguf = RecycleGpt::from_gguf(GgufFile::open(&gguf_path).unwrap(), &options).expect("the GGUF file loads");
    let tokens: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % vocab).collect();
    let logits = |model: &RecycleGpt| {
        let mut cache = model.new_cache(tokens.len()).unwrap();
        let input = SeqInput { tokens: &tokens, cache: &mut cache, logits_rows: (0..tokens.len()).collect() };
        model.forward(&mut [input]).unwrap().logits
    };
    assert_eq!(logits(&from_hf), logits(&from_gguf), "{name}: the two files of one model give different logits");
    // The directory in BF16, as stored (`--quantize auto` on the CPU): every layer reads half
    // f32's bytes, fused ones (Phi-3's `qkv_proj`, `gate_up_proj`) included.
    let half = common::scratch(&format!("{name}-bf16"));
    std::fs::write(half.join("config.json"), config.to_string()).unwrap();
    let bf16: std::collections::HashMap<String, Tensor> =
        hf.iter().map(|(k, t)| (k.clone(), t.to_dtype(candle_core::DType::BF16).unwrap())).collect();
    candle_core::safetensors::save(&bf16, half.join("model.safetensors")).unwrap();
    let as_stored = LoadOptions { quantize: Some(recyclegpt_model::Quantization::AsStored), ..LoadOptions::default() };
    let stored = RecycleGpt::load(&half, &as_stored).expect("the BF16 directory loads");
    let ratio = stored.layer_bytes() as f64 / from_hf.layer_bytes() as f64;
    assert!((0.45..=0.55).contains(&ratio), "{name}: BF16 layers read {ratio} of f32's bytes");
}

/// The shape every tiny model below shares: vocabulary, width, feed-forward, layers, heads,
/// key/value heads and head size.
const TINY: (usize, usize, usize, usize, usize, usize, usize) = (64, 64, 96, 3, 2, 1, 32);

/// GGUF metadata of the tiny shape under `arch`'s prefix, plus `extra`.
fn tiny_metadata(arch: &str, extra: Vec<(&'static str, gguf_file::Value)>) -> Vec<(String, gguf_file::Value)> {
    use gguf_file::Value;
    let (vocab, hidden, ff, layers, heads, kv_heads, head_dim) = TINY;
    let mut metadata = vec![
        ("general.architecture".to_string(), Value::String(arch.into())),
        ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(2)),
        ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(1)),
    ];
    for (key, value) in [
        ("vocab_size", vocab),
        ("embedding_length", hidden),
        ("feed_forward_length", ff),
        ("block_count", layers),
        ("attention.head_count", heads),
        ("attention.head_count_kv", kv_heads),
        ("attention.key_length", head_dim),
        ("attention.value_length", head_dim),
        ("context_length", 64),
    ] {
        metadata.push((format!("{arch}.{key}"), Value::U32(value as u32)));
    }
    metadata.push((format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(1e-6)));
    metadata.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
    metadata
}

/// A tiny Gemma 3 written as an HF directory (`Gemma3ForCausalLM`, its norms stored as `w - 1`
/// under Gemma's names, `layer_types`) and as a GGUF file in llama.cpp's layout loads to the
/// same logits, past its sliding window. (The GGUF path is the one checked against llama.cpp,
/// on Gemma 3 270M: `tests/gemma3.rs`.)
#[test]
fn an_hf_gemma3_directory_loads_as_its_gguf_file_does() {
    let (vocab, hidden, ff, layers, heads, _, head_dim) = TINY;
    let config = serde_json::json!({
        "architectures": ["Gemma3ForCausalLM"], "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": 1, "head_dim": head_dim, "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0, "sliding_window": 4, "query_pre_attn_scalar": head_dim,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
        "bos_token_id": 2, "eos_token_id": 1
    });
    use gguf_file::Value;
    let extra = vec![
        ("gemma3.rope.freq_base", Value::F32(1_000_000.0)),
        ("gemma3.attention.sliding_window", Value::U32(4)),
        ("gemma3.attention.sliding_window_pattern", Value::U32(3)),
    ];
    let metadata = tiny_metadata("gemma3", extra);
    let mut tensors: Vec<Twin> = vec![
        ("model.embed_tokens.weight".into(), "token_embd.weight".into(), vec![vocab, hidden], false),
        ("model.norm.weight".into(), "output_norm.weight".into(), vec![hidden], true),
    ];
    for l in 0..layers {
        let twin = |hf: &str, gguf: &str, shape: Vec<usize>, norm: bool| {
            (format!("model.layers.{l}.{hf}.weight"), format!("blk.{l}.{gguf}.weight"), shape, norm)
        };
        tensors.extend([
            twin("input_layernorm", "attn_norm", vec![hidden], true),
            twin("self_attn.q_proj", "attn_q", vec![heads * head_dim, hidden], false),
            twin("self_attn.k_proj", "attn_k", vec![head_dim, hidden], false),
            twin("self_attn.v_proj", "attn_v", vec![head_dim, hidden], false),
            twin("self_attn.o_proj", "attn_output", vec![hidden, heads * head_dim], false),
            twin("self_attn.q_norm", "attn_q_norm", vec![head_dim], true),
            twin("self_attn.k_norm", "attn_k_norm", vec![head_dim], true),
            twin("post_attention_layernorm", "post_attention_norm", vec![hidden], true),
            twin("pre_feedforward_layernorm", "ffn_norm", vec![hidden], true),
            twin("post_feedforward_layernorm", "post_ffw_norm", vec![hidden], true),
            twin("mlp.gate_proj", "ffn_gate", vec![ff, hidden], false),
            twin("mlp.up_proj", "ffn_up", vec![ff, hidden], false),
            twin("mlp.down_proj", "ffn_down", vec![hidden, ff], false),
        ]);
    }
    loads_alike("tiny-gemma3", config, &metadata, &tensors);
}

/// A tiny Phi-3 written as an HF directory (`Phi3ForCausalLM`: `qkv_proj` and `gate_up_proj`
/// stacked) and as a GGUF file (`attn_qkv`, `ffn_up` holding gate and up) loads to the same
/// logits.
#[test]
fn an_hf_phi3_directory_loads_as_its_gguf_file_does() {
    let (vocab, hidden, ff, layers, heads, kv_heads, head_dim) = TINY;
    let config = serde_json::json!({
        "architectures": ["Phi3ForCausalLM"], "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim, "hidden_act": "silu",
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10_000.0,
        "tie_word_embeddings": false, "bos_token_id": 2, "eos_token_id": 1
    });
    let metadata = tiny_metadata("phi3", vec![]);
    let qkv = (heads + 2 * kv_heads) * head_dim;
    let mut tensors: Vec<Twin> = vec![
        ("model.embed_tokens.weight".into(), "token_embd.weight".into(), vec![vocab, hidden], false),
        ("model.norm.weight".into(), "output_norm.weight".into(), vec![hidden], false),
        ("lm_head.weight".into(), "output.weight".into(), vec![vocab, hidden], false),
    ];
    for l in 0..layers {
        let twin = |hf: &str, gguf: &str, shape: Vec<usize>| {
            (format!("model.layers.{l}.{hf}.weight"), format!("blk.{l}.{gguf}.weight"), shape, false)
        };
        tensors.extend([
            twin("input_layernorm", "attn_norm", vec![hidden]),
            twin("self_attn.qkv_proj", "attn_qkv", vec![qkv, hidden]),
            twin("self_attn.o_proj", "attn_output", vec![hidden, heads * head_dim]),
            twin("post_attention_layernorm", "ffn_norm", vec![hidden]),
            twin("mlp.gate_up_proj", "ffn_up", vec![2 * ff, hidden]),
            twin("mlp.down_proj", "ffn_down", vec![hidden, ff]),
        ]);
    }
    loads_alike("tiny-phi3", config, &metadata, &tensors);
}
