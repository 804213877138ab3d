//! llama.cpp as the reference: its answers and tokens, stored in `tests/data` (made once with a
//! CPU build, a measuring tool only), the check that ours agree, and GGUF files rewritten from
//! SmolLM2's for the cases `../shared` has no file of.
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use recyclegpt_model::LoadedModel;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Reference data written by llama.cpp on the same file (a file in `tests/data`).
pub fn llamacpp_reference(name: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference JSON")
}

pub fn ids(value: &Value) -> Vec<u32> {
    value.as_array().expect("an id list").iter().map(|v| v.as_u64().expect("an id") as u32).collect()
}

/// Logits between our choice and llama.cpp's where the greedy answers part. The 20 partings
/// measured on an AVX2 machine (f32, q8_0 and q4_1 paths, 2026-11-30) were 0.008-0.30 logits; a
/// token the model is sure of leads the next by several.
const NEAR_TIE: f32 = 0.5;

/// llama.cpp's own margin (its top two log-probabilities) under which a step is a tie for it:
/// where llama.cpp itself hesitates, its answer turns on its rounding, and ours may part from it
/// whatever our margin (measured on Gemma 3 270M: llama.cpp chose one digit over another by
/// 0.015 while decoding; prefilling the same tokens, it ranked them the other way by 0.4).
const LLAMACPP_TIE: f64 = 0.05;

/// Greedy answers part from llama.cpp's only at near-ties, where the summation order decides:
/// llama.cpp rounds activations to 8 bits before its quantized dot products and keeps its KV
/// cache in f16, and the vector width changes the order of every sum. So every prompt's answer
/// in `reference` equals llama.cpp's, or parts from it where llama.cpp's token is within
/// [`NEAR_TIE`] of ours (logits at the parting, after the shared tokens) or where llama.cpp's
/// own top two were within [`LLAMACPP_TIE`] (if the reference kept them), and at least one
/// agrees over all its tokens. A real fault (a wrong weight, scale or rounding) parts where the
/// model is sure.
pub fn assert_parting_only_at_near_ties_in(loaded: &LoadedModel, label: &str, reference: &str) {
    use recyclegpt_engine::{generate, DecodeMode, SamplingParams, StopCriteria};
    use recyclegpt_model::SeqInput;
    let mut agreeing = 0;
    for case in llamacpp_reference(reference) {
        let prompt = case["prompt"].as_str().unwrap_or_default();
        let prompt_ids = ids(&case["prompt_ids"]);
        let expected: Vec<u32> = ids(&case["ids"]);
        let stop = StopCriteria { max_tokens: expected.len(), eos_ids: loaded.tokenizer.eos_ids().to_vec() };
        let ours = generate(&loaded.model, prompt_ids.clone(), DecodeMode::Off, SamplingParams::greedy(), stop)
            .expect("generates");
        let same = ours.ids.iter().zip(&expected).take_while(|(a, b)| a == b).count();
        if ours.ids == expected {
            agreeing += 1;
            eprintln!("{label}: {prompt:?}: all {same} tokens agree with llama.cpp");
            continue;
        }
        assert!(same < ours.ids.len().min(expected.len()), "{prompt:?}: one answer stops early: {ours:?}");
        let context: Vec<u32> = prompt_ids.iter().chain(&expected[..same]).copied().collect();
        let mut cache = loaded.model.new_cache(context.len()).expect("a cache");
        let input = SeqInput { tokens: &context, cache: &mut cache, logits_rows: vec![context.len() - 1] };
        let logits = loaded.model.forward(&mut [input]).expect("a forward").logits.remove(0);
        let margin = logits[ours.ids[same] as usize] - logits[expected[same] as usize];
        let theirs =
            case["top2_logprobs"][same].as_array().and_then(|top| Some(top.first()?.as_f64()? - top.get(1)?.as_f64()?));
        eprintln!(
            "{label}: {prompt:?}: the first {same} of {} tokens agree; parted by {margin:.3} (llama.cpp's own margin there: {theirs:?})",
            expected.len()
        );
        assert!(
            margin <= NEAR_TIE || theirs.is_some_and(|m| m <= LLAMACPP_TIE),
            "{label}: {prompt:?} parts from llama.cpp after {same} tokens by {margin} logits (llama.cpp's margin: {theirs:?})"
        );
    }
    assert!(agreeing >= 1, "{label}: no answer equals llama.cpp's");
}

/// A 1-D F32 tensor of `values`, to add to a rewritten file.
pub fn f32_tensor(values: &[f32]) -> QTensor {
    let tensor = candle_core::Tensor::new(values, &candle_core::Device::Cpu).unwrap();
    QTensor::quantize(&tensor, GgmlDType::F32).unwrap()
}

/// `source` (a GGUF file) with its metadata and tensors changed by `change`, written once as
/// `name` under the target directory (a later run reuses it).
pub fn rewritten(
    source: &Path,
    name: &str,
    change: impl FnOnce(&mut Vec<(String, gguf_file::Value)>, &mut Vec<(String, QTensor)>),
) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    if path.exists() {
        return path;
    }
    let mut reader = std::io::BufReader::new(std::fs::File::open(source).unwrap());
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let device = candle_core::Device::Cpu;
    let mut tensors: Vec<(String, QTensor)> = content
        .tensor_infos
        .keys()
        .map(|name| (name.clone(), content.tensor(&mut reader, name, &device).unwrap()))
        .collect();
    let mut metadata: Vec<(String, gguf_file::Value)> = content.metadata.into_iter().collect();
    change(&mut metadata, &mut tensors);
    let metadata: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    // Written aside under a name of this writer's own and renamed, so that a run cut short
    // leaves no half file behind and tests writing the same file at once do not mix.
    static WRITERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let writer = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = path.with_extension(format!("{}-{writer}.partial", std::process::id()));
    gguf_file::write(&mut std::fs::File::create(&partial).unwrap(), &metadata, &tensors).unwrap();
    std::fs::rename(&partial, &path).unwrap();
    path
}
