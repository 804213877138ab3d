//! `--quantize` on the in-repo model: a quantized base stays close to f32 (teacher-forced top-1
//! agreement), and verified recycling over it still equals plain decoding token for token; the
//! K-quants of values, on a model wide enough for their blocks.
mod common;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use common::run;
use recyclegpt_engine::{argmax, generate, DecodeMode, SamplingParams, StopCriteria};
use recyclegpt_model::{LlamaConfig, LoadOptions, LoadedModel, Quantization, RecycleConfig, RecycleGpt, SeqInput};
use std::path::PathBuf;

fn embedded(quantize: Option<Quantization>) -> LoadedModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare");
    LoadedModel::load(&dir, &LoadOptions { quantize, ..LoadOptions::default() }).expect("loads")
}

/// The argmax at every position of `text`, teacher-forced.
fn greedy_choices(loaded: &LoadedModel, text: &[u32]) -> Vec<u32> {
    let mut cache = loaded.model.new_cache(text.len()).unwrap();
    let rows = (0..text.len()).collect();
    let out = loaded.model.forward(&mut [SeqInput { tokens: text, cache: &mut cache, logits_rows: rows }]).unwrap();
    out.logits.iter().map(|row| argmax(row)).collect()
}

/// Teacher-forced top-1 agreement with f32 along a text, for each format, at least `floor`.
#[test]
fn quantized_bases_stay_close_to_f32() {
    let f32_model = embedded(None);
    let text = f32_model
        .tokenizer
        .encode("ROMEO:\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun.\nJULIET:\nO Romeo, Romeo, wherefore art thou Romeo?")
        .unwrap();
    let reference = greedy_choices(&f32_model, &text);
    for (format, floor) in [(Quantization::Q8_0, 0.9), (Quantization::Q4_1, 0.8), (Quantization::Q4_0, 0.7)] {
        let quantized = embedded(Some(format));
        assert_eq!(quantized.model.quantization(), Some(format));
        let choices = greedy_choices(&quantized, &text);
        let same = reference.iter().zip(&choices).filter(|(x, y)| x == y).count();
        let agreement = same as f64 / reference.len() as f64;
        eprintln!("teacher-forced top-1 agreement, {format:?} vs f32: {same}/{} = {agreement:.3}", reference.len());
        assert!(agreement >= floor, "{format:?}: {agreement}");
    }
}

#[test]
fn verify_over_a_quantized_base_equals_plain_decoding() {
    for format in [Quantization::Q8_0, Quantization::Q4_1] {
        let base = embedded(Some(format));
        for prompt in ["KING HENRY:\n", "First Citizen:\nBefore we proceed", "ROMEO:\nWhat light"] {
            let off = run(&base, prompt, DecodeMode::Off, SamplingParams::greedy(), 60);
            let verify = run(&base, prompt, DecodeMode::Verify, SamplingParams::greedy(), 60);
            assert_eq!(verify.ids, off.ids, "{format:?} {prompt:?}");
            assert!(verify.stats.accepted > 0, "{format:?}: the trained module never agreed: {prompt:?}");
        }
    }
}

/// `values` (`rows × cols`) through candle's port of llama.cpp's quantizer and back.
fn llama_cpp_round_trip(values: &[f32], rows: usize, cols: usize, ggml: GgmlDType) -> Vec<f32> {
    let tensor = Tensor::from_slice(values, (rows, cols), &Device::Cpu).unwrap();
    let blocks = QTensor::quantize(&tensor, ggml).unwrap();
    blocks.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// `--quantize q4_k|q5_k|q6_k` of values (a safetensors model): each matrix whose rows are whole
/// blocks of 256 in llama.cpp's K blocks, value for value as its reference quantizer makes them;
/// a narrower one in the neighbour llama.cpp falls back to (Q4_1, Q5_1, Q8_0).
#[test]
fn k_quants_of_values_are_llama_cpp_s_blocks() {
    let (rows, wide, narrow) = (16, 512, 288);
    let values: Vec<f32> =
        (0..rows * wide).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.45) * (1.0 + (i % 5) as f32)).collect();
    let narrow_values = &values[..rows * narrow];
    for (format, ggml, fallback) in [
        (Quantization::Q4K, GgmlDType::Q4K, Quantization::Q4_1),
        (Quantization::Q5K, GgmlDType::Q5K, Quantization::Q5_1),
        (Quantization::Q6K, GgmlDType::Q6K, Quantization::Q8_0),
    ] {
        let quant = format.quantize(&values, rows, wide).unwrap();
        assert_eq!(quant.dequantize(), llama_cpp_round_trip(&values, rows, wide, ggml), "{format}");
        // Within a few percent of llama.cpp's bytes for the same values (its blocks of 256).
        let file_bytes = (rows * wide / ggml.block_size() * ggml.type_size()) as f64;
        assert!(
            (quant.bytes() as f64 / file_bytes - 1.0).abs() < 0.1,
            "{format}: {} against {file_bytes}",
            quant.bytes()
        );
        let quant = format.quantize(narrow_values, rows, narrow).unwrap();
        let instead = fallback.quantize(narrow_values, rows, narrow).unwrap();
        assert_eq!((quant.dequantize(), quant.bytes()), (instead.dequantize(), instead.bytes()), "{format}");
    }
    assert_eq!("Q5_K".parse::<Quantization>().unwrap(), Quantization::Q5K);
}

/// A model of values (random, 256 wide) under each K-quant: its layers read the K-quant's bytes,
/// its logits come nearer to f32's the more bits (beside Q4_1 and Q8_0), and verified recycling
/// equals plain decoding.
#[test]
fn a_model_of_values_runs_in_k_quants() {
    let config: LlamaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128
    }))
    .unwrap();
    let recycle = RecycleConfig { max_draft_tokens: Some(2), ..config.default_recycle(1) };
    let load = |quantize| {
        RecycleGpt::random(config.clone(), Some(recycle.clone()), 7, &Device::Cpu, DType::F32, quantize).unwrap()
    };
    let prompt: Vec<u32> = (0..24).map(|i| (i * 37 % 500) as u32).collect();
    let logits = |model: &RecycleGpt| {
        let mut cache = model.new_cache(prompt.len()).unwrap();
        let rows = (0..prompt.len()).collect();
        let out = model.forward(&mut [SeqInput { tokens: &prompt, cache: &mut cache, logits_rows: rows }]).unwrap();
        out.logits.concat()
    };
    let reference = logits(&load(None));
    let norm = reference.iter().map(|x| x * x).sum::<f32>().sqrt();
    // Per layer: query and output 256 × 256, key and value 128 × 256, gate and up 512 × 256,
    // down 256 × 512.
    let values_per_layer = 2 * 256 * 256 + 2 * 128 * 256 + 3 * 512 * 256;
    let mut errors = Vec::new();
    for (format, ggml) in [
        (Quantization::Q4_1, GgmlDType::Q4_1),
        (Quantization::Q8_0, GgmlDType::Q8_0),
        (Quantization::Q4K, GgmlDType::Q4K),
        (Quantization::Q5K, GgmlDType::Q5K),
        (Quantization::Q6K, GgmlDType::Q6K),
    ] {
        let model = load(Some(format));
        let file_bytes = (2 * values_per_layer / ggml.block_size() * ggml.type_size()) as f64;
        assert!(
            (model.layer_bytes() as f64 / file_bytes - 1.0).abs() < 0.1,
            "{format}: {} against {file_bytes}",
            model.layer_bytes()
        );
        let error = reference.iter().zip(logits(&model)).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt() / norm;
        eprintln!("{format}: logits' relative error against f32 {error:.4}");
        errors.push(error);
        let run = |mode| {
            let stop = StopCriteria { max_tokens: 32, eos_ids: Vec::new() };
            generate(&model, prompt.clone(), mode, SamplingParams::greedy(), stop).unwrap().ids
        };
        assert_eq!(run(DecodeMode::Verify), run(DecodeMode::Off), "{format}");
    }
    // Q4_K in 4.5 bits per value as near as Q4_1 in 5, each further bit about halving the error
    // (Q4_K 0.27, Q5_K 0.13, Q6_K 0.07 on this model), Q8_0 nearer still.
    let [q4_1, q8_0, q4_k, q5_k, q6_k] = errors[..] else { unreachable!() };
    assert!(q4_k < q4_1 * 1.1 && q5_k < q4_k / 1.5 && q6_k < q5_k / 1.5 && q8_0 < q6_k, "{errors:?}");
}
