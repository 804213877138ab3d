//! GGUF files: SmolLM2-135M-Instruct (Q4_1, from ../shared) loads with its configuration,
//! tokenizer and chat template, answers a chat correctly over real HTTP, runs in its own Q4_1
//! blocks from the command line, answers as llama.cpp does on measured prompts, and broken files
//! get errors that say what is wrong.
mod common;

use candle_core::quantized::{gguf_file, GgmlDType};
use common::llamacpp::{assert_parting_only_at_near_ties_in, f32_tensor, ids, llamacpp_reference, rewritten};
use common::server::TestServer;
use common::smollm2;
use recyclegpt_engine::{generate, DecodeMode, SamplingParams, StopCriteria};
use recyclegpt_model::{LoadOptions, LoadedModel};
use serde_json::{json, Value};
use std::path::PathBuf;

#[test]
fn smollm2_loads_with_its_configuration_and_tokenizer() {
    let Some(path) = smollm2() else { return };
    let loaded = LoadedModel::load(&path, &LoadOptions::default()).expect("loads");
    let config = loaded.model.config();
    assert_eq!(
        (config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.vocab_size),
        (30, 576, 1536, 49152)
    );
    assert_eq!((config.num_attention_heads, config.num_key_value_heads), (9, Some(3)));
    assert_eq!((config.max_position_embeddings, config.rope_theta), (8192, 100_000.0));
    assert!(config.tie_word_embeddings);
    let tokenizer = &loaded.tokenizer;
    assert_eq!(tokenizer.eos_ids(), [2]);
    // Control tokens are parsed as such; no BOS is added (add_bos_token false).
    assert_eq!(tokenizer.encode("<|im_start|>user").unwrap()[0], 1);
    let hello = tokenizer.encode("Hello world").unwrap();
    let pieces: Vec<String> = hello.iter().map(|&id| tokenizer.inner().id_to_token(id).unwrap()).collect();
    assert_eq!(pieces, ["Hello", "Ġworld"]);
    // SmolLM's pre-tokenizer splits every digit.
    assert_eq!(tokenizer.encode("2024").unwrap().len(), 4);
    for text in [
        "Plain ASCII, with punctuation: 3.14!",
        "  two spaces,\ttabs\tand\nnew\n\nlines  ",
        "fn main() { println!(\"{}\", 1 + 2); }",
        "café naïve — “quoted”",
        "emoji 😀👍🏽 and CJK 日本語",
    ] {
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
        assert_eq!(tokenizer.decode_continuation(&ids), text);
    }
    let template = tokenizer.chat_template().expect("a chat template");
    assert!(template.contains("<|im_start|>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_answers_a_chat_from_its_gguf_file() {
    let Some(path) = smollm2() else { return };
    let server = TestServer::start(&path, |c| c.default_recycle = recyclegpt_engine::DecodeMode::Off).await;
    let body: Value = server
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 20, "temperature": 0}),
        )
        .await
        .json()
        .await
        .unwrap();
    let answer = body["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    assert!(answer.contains("Paris"), "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    server.shutdown().await.unwrap();
}

#[test]
fn broken_gguf_files_get_errors_that_say_what_is_wrong() {
    let dir = common::scratch("gguf-errors");
    // Not a GGUF file at all.
    let garbage = dir.join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model").unwrap();
    let error = LoadedModel::load(&garbage, &LoadOptions::default()).err().expect("refused").to_string();
    assert!(error.contains("GGUF"), "{error}");
    // Another architecture.
    let other = dir.join("gpt2.gguf");
    let mut file = std::fs::File::create(&other).unwrap();
    let metadata = [("general.architecture", gguf_file::Value::String("gpt2".into()))];
    let metadata: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut file, &metadata, &[]).unwrap();
    drop(file);
    let error = LoadedModel::load(&other, &LoadOptions::default()).err().expect("refused").to_string();
    assert!(error.contains("architecture `gpt2`") && error.contains("llama"), "{error}");
    // A real file cut short: its tensors are not all there.
    if let Some(path) = smollm2() {
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.join("cut.gguf");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let error = LoadedModel::load(&cut, &LoadOptions::default()).err().expect("refused").to_string();
        assert!(error.contains("blk.") && error.contains("remaining in file"), "{error}");
    }
}

#[test]
fn smollm2_tokenizes_as_llama_cpp_does() {
    let Some(path) = smollm2() else { return };
    let loaded = LoadedModel::load(&path, &LoadOptions::default()).expect("loads");
    let cases = llamacpp_reference("smollm2_llamacpp_tokens.json");
    assert!(cases.len() >= 10);
    for case in &cases {
        let text = case["text"].as_str().expect("text");
        assert_eq!(loaded.tokenizer.encode(text).unwrap(), ids(&case["ids"]), "{text:?}");
    }
}

/// Greedy answers part from llama.cpp's only at near-ties, where the summation order decides:
/// llama.cpp rounds activations to 8 bits before its Q4_1 dot products and keeps its KV cache in
/// f16, this path computes in f32 on the dequantized weights, and the vector width (AVX2 or
/// AVX-512, here and in llama.cpp) changes the order of every sum. Which prompts agree over all
/// their tokens therefore depends on the CPU (each is printed); where one parts, llama.cpp's
/// token must be within [`NEAR_TIE`] of our choice. A real fault (a wrong weight, scale or
/// rounding) parts where the model is sure.
#[test]
fn smollm2_greedy_answers_match_llama_cpp() {
    let Some(path) = smollm2() else { return };
    let loaded = LoadedModel::load(&path, &LoadOptions::default()).expect("loads");
    assert_parting_only_at_near_ties(&loaded, "f32");
}

/// `--quantize q8_0` requantizes the Q4_1 file's layers as llama.cpp's quantizer does (scales
/// in f16): the same answers as the file that quantizer writes, kept as stored, and those equal
/// llama.cpp's on that file or part from them at near-ties.
#[test]
fn smollm2_q8_0_greedy_answers_match_llama_cpp() {
    let Some(source) = smollm2() else { return };
    let requantized = LoadOptions { quantize: Some(recyclegpt_model::Quantization::Q8_0), ..LoadOptions::default() };
    let requantized = LoadedModel::load(&source, &requantized).expect("loads");
    let stored = LoadOptions { quantize: Some(recyclegpt_model::Quantization::AsStored), ..LoadOptions::default() };
    let stored = LoadedModel::load(&smollm2_in(&source, GgmlDType::Q8_0), &stored).expect("loads");
    for prompt in ["What is the capital of France?", "Write a haiku about the sea."] {
        let ids = stored.tokenizer.encode(prompt).unwrap();
        let run = |loaded: &LoadedModel| {
            let stop = StopCriteria { max_tokens: 24, eos_ids: Vec::new() };
            generate(&loaded.model, ids.clone(), DecodeMode::Off, SamplingParams::greedy(), stop).unwrap().ids
        };
        assert_eq!(run(&requantized), run(&stored), "{prompt:?}");
    }
    assert_parting_only_at_near_ties_in(&stored, "q8_0", "smollm2_q8_0_llamacpp_greedy.json");
}

/// `--quantize q4_1` (what `auto` picks for this file) keeps the file's own Q4_1 blocks (and its
/// Q8_0 embedding, the tied head, in Q8_0), so weights and activation rounding are llama.cpp's;
/// what remains is summation order and llama.cpp's f16 KV cache.
#[test]
fn smollm2_q4_1_greedy_answers_match_llama_cpp() {
    let Some(path) = smollm2() else { return };
    let options = LoadOptions { quantize: Some(recyclegpt_model::Quantization::Q4_1), ..LoadOptions::default() };
    let loaded = LoadedModel::load(&path, &options).expect("loads");
    assert_parting_only_at_near_ties(&loaded, "q4_1");
}

/// Every prompt's greedy answer equals llama.cpp's, or parts from it at a near-tie (see
/// [`common::llamacpp::assert_parting_only_at_near_ties_in`]).
fn assert_parting_only_at_near_ties(loaded: &LoadedModel, label: &str) {
    assert_parting_only_at_near_ties_in(loaded, label, "smollm2_llamacpp_greedy.json")
}

/// SmolLM2's file with `rope_freqs.weight` added, as Llama 3.x GGUF files carry their RoPE
/// scaling: a divisor per rotary frequency (here 1 to 8.75, far stronger than Llama 3's, so
/// that ignoring them changes every answer). Written once under the target directory.
fn smollm2_with_rope_factors(source: &std::path::Path) -> PathBuf {
    rewritten(source, "smollm2-rope-freqs.gguf", |_metadata, tensors| {
        let factors: Vec<f32> = (0..32).map(|i| 1.0 + i as f32 / 4.0).collect();
        tensors.push(("rope_freqs.weight".into(), f32_tensor(&factors)));
    })
}

/// A GGUF file's `rope_freqs.weight` (Llama 3's RoPE scaling) is applied as llama.cpp applies
/// it: the answers on a file that carries strong factors match llama.cpp's on the same file
/// (`tests/data/smollm2_rope_freqs_llamacpp_greedy.json`, from llama-server), and differ from
/// the file's answers without them.
#[test]
fn rope_frequency_factors_are_applied_as_llama_cpp_applies_them() {
    let Some(source) = smollm2() else { return };
    let path = smollm2_with_rope_factors(&source);
    let options = LoadOptions { quantize: Some(recyclegpt_model::Quantization::Q4_1), ..LoadOptions::default() };
    let scaled = LoadedModel::load(&path, &options).expect("loads");
    assert_eq!(scaled.model.config().rope_freq_factors.as_ref().map(Vec::len), Some(32));
    assert_parting_only_at_near_ties_in(&scaled, "rope_freqs", "smollm2_rope_freqs_llamacpp_greedy.json");
    let plain = LoadedModel::load(&source, &options).expect("loads");
    let answer = |loaded: &LoadedModel, prompt: &[u32]| {
        let stop = StopCriteria { max_tokens: 16, eos_ids: Vec::new() };
        generate(&loaded.model, prompt.to_vec(), DecodeMode::Off, SamplingParams::greedy(), stop).expect("runs").ids
    };
    let differ = llamacpp_reference("smollm2_rope_freqs_llamacpp_greedy.json")
        .iter()
        .filter(|case| {
            let prompt = ids(&case["prompt_ids"]);
            answer(&scaled, &prompt) != answer(&plain, &prompt)
        })
        .count();
    assert!(differ > 0, "the factors changed no answer: they are not applied");
}

/// The command line runs a GGUF file in its own Q4_1 blocks by default (`--quantize auto`): its
/// greedy ids are the library's with Q4_1, token for token.
#[test]
fn the_cli_runs_a_q4_1_file_in_q4_1_by_default() {
    let Some(path) = smollm2() else { return };
    let prompt = "The capital of France is";
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recyclegpt"))
        .args(["generate", "--model"])
        .arg(&path)
        .args(["--prompt", prompt, "--max-tokens", "24", "--temperature", "0", "--json"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let options = LoadOptions { quantize: Some(recyclegpt_model::Quantization::Q4_1), ..LoadOptions::default() };
    let loaded = LoadedModel::load(&path, &options).expect("loads");
    let stop = StopCriteria { max_tokens: 24, eos_ids: loaded.tokenizer.eos_ids().to_vec() };
    let ours = generate(
        &loaded.model,
        loaded.tokenizer.encode(prompt).unwrap(),
        DecodeMode::Off,
        SamplingParams::greedy(),
        stop,
    )
    .expect("generates");
    assert_eq!(ids(&cli["ids"]), ours.ids, "{cli}");
    assert!(cli["text"].as_str().unwrap_or_default().contains("Paris"), "{cli}");
}

/// `train-recycle` on a GGUF file writes the module alone to `--out`, here with a reduced draft
/// vocabulary; `--recycle DIR` serves it beside the file (verify equals off, drafts come from the
/// draft vocabulary only), and a base it was not trained for refuses it, saying why.
#[test]
fn a_module_trained_for_a_gguf_file_loads_beside_it() {
    use recyclegpt_model::RecycleInit;
    let Some(path) = smollm2() else { return };
    let out = common::scratch("gguf-module");
    let trained = std::process::Command::new(env!("CARGO_BIN_EXE_recyclegpt"))
        .args(["train-recycle", "--model"])
        .arg(&path)
        .args(["--self-distill", "8", "--length", "24", "--steps", "2", "--batch", "2", "--draft-vocab", "1024"])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("runs");
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));
    assert!(out.join("recycle.safetensors").is_file() && out.join("config.json").is_file());
    let module_config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(module_config["recycle"]["draft_vocab_size"], 1024, "{module_config}");

    let options = LoadOptions { recycle_init: RecycleInit::FromDir(out.clone()), ..LoadOptions::default() };
    let loaded = LoadedModel::load(&path, &options).expect("loads with the module");
    assert!(loaded.model.has_recycle());
    let prompt = loaded.tokenizer.encode("The capital of France is").unwrap();
    let stop = StopCriteria { max_tokens: 16, eos_ids: loaded.tokenizer.eos_ids().to_vec() };
    let run = |mode| generate(&loaded.model, prompt.clone(), mode, SamplingParams::greedy(), stop.clone()).unwrap();
    let (off, verify) = (run(DecodeMode::Off), run(DecodeMode::Verify));
    assert_eq!(verify.ids, off.ids);
    assert!(verify.stats.recycle_steps > 0);
    // In `alternate`, every second token is the module's: each one is in the draft vocabulary.
    let tensors = candle_core::safetensors::load(out.join("recycle.safetensors"), &candle_core::Device::Cpu).unwrap();
    let draft_vocab: Vec<u32> =
        tensors["draft_vocab"].to_vec1::<f32>().unwrap().into_iter().map(|v| v as u32).collect();
    let alternate = run(DecodeMode::Alternate);
    assert!(alternate.stats.recycle_steps > 0);
    for recycled in alternate.ids.iter().skip(1).step_by(2) {
        assert!(draft_vocab.contains(recycled), "{recycled} was drafted from outside the draft vocabulary");
    }

    let embedded = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare");
    let error = LoadedModel::load(&embedded, &options).err().expect("refused").to_string();
    assert!(error.contains("trained for another base model") && error.contains("hidden_size 576"), "{error}");
}

/// A small Llama GGUF file's metadata (no tensors), with `changes` written over it.
fn llama_metadata_file(dir: &std::path::Path, name: &str, changes: &[(&str, gguf_file::Value)]) -> PathBuf {
    llama_file_with(dir, name, changes, &[])
}

/// The same, with these tensors.
fn llama_file_with(
    dir: &std::path::Path,
    name: &str,
    changes: &[(&str, gguf_file::Value)],
    tensors: &[(&str, &candle_core::quantized::QTensor)],
) -> PathBuf {
    use gguf_file::Value as V;
    let tokens = ["<unk>", "<s>", "</s>", "a", "b", "c"];
    let mut metadata: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("llama.embedding_length", V::U32(64)),
        ("llama.feed_forward_length", V::U32(128)),
        ("llama.block_count", V::U32(1)),
        ("llama.attention.head_count", V::U32(4)),
        ("llama.attention.head_count_kv", V::U32(4)),
        ("llama.context_length", V::U32(256)),
        ("tokenizer.ggml.model", V::String("llama".into())),
        ("tokenizer.ggml.tokens", V::Array(tokens.iter().map(|t| V::String(t.to_string())).collect())),
        ("tokenizer.ggml.scores", V::Array(tokens.iter().map(|_| V::F32(0.0)).collect())),
        ("tokenizer.ggml.token_type", V::Array([2, 3, 3, 1, 1, 1].into_iter().map(V::I32).collect())),
        ("tokenizer.ggml.bos_token_id", V::U32(1)),
        ("tokenizer.ggml.eos_token_id", V::U32(2)),
    ];
    for (key, value) in changes {
        metadata.retain(|(k, _)| k != key);
        metadata.push((key, value.clone()));
    }
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    let refs: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut file, &refs, tensors).unwrap();
    path
}

/// Hostile metadata (the probe's findings 5-8) is refused at load with a message that names
/// the key, where it used to panic, abort on an allocation, or load and fail every request.
#[test]
fn hostile_gguf_metadata_is_refused_at_load() {
    use gguf_file::Value as V;
    let dir = common::scratch("gguf-hostile");
    let load = |changes: &[(&str, V)], name: &str| {
        let path = llama_metadata_file(&dir, name, changes);
        let started = std::time::Instant::now();
        let error = LoadedModel::load(&path, &LoadOptions::default()).err().expect("refused").to_string();
        assert!(started.elapsed().as_secs() < 5, "{name}: {:?} to refuse", started.elapsed());
        error
    };
    // The untouched file gets as far as its (absent) tensors.
    let error = load(&[], "plain.gguf");
    assert!(error.contains("token_embd.weight") && error.contains("missing"), "{error}");
    let error = load(&[("general.alignment", V::U32(0))], "alignment.gguf");
    assert!(error.contains("general.alignment") && error.contains("power of two"), "{error}");
    let error = load(&[("general.alignment", V::U32(24))], "alignment24.gguf");
    assert!(error.contains("general.alignment"), "{error}");
    let error = load(&[("llama.attention.head_count", V::U32(0))], "heads.gguf");
    assert!(error.contains("head"), "{error}");
    let error = load(
        &[("llama.attention.head_count", V::U32(0)), ("llama.attention.key_length", V::U32(16))],
        "heads-keylength.gguf",
    );
    assert!(error.contains("head counts must be positive"), "{error}");
    for (context, name) in [(1u64 << 40, "ctx40.gguf"), (30_000_000, "ctx30m.gguf"), (1 << 59, "ctx59.gguf")] {
        let error = load(&[("llama.context_length", V::U64(context))], name);
        assert!(error.contains(&format!("context of {context} positions")), "{error}");
    }
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id"] {
        let error = load(&[(key, V::U32(1_000_000_000))], "ids.gguf");
        assert!(error.contains(key) && error.contains("outside the vocabulary of 6 tokens"), "{error}");
    }
    // A tensor type candle cannot read (here IQ2_XXS, ggml's 16) is named as such, not taken
    // for a corrupt file: the type field of an F32 tensor's header is rewritten.
    let device = candle_core::Device::Cpu;
    let embedding = candle_core::Tensor::zeros((6, 64), candle_core::DType::F32, &device).unwrap();
    let embedding =
        candle_core::quantized::QTensor::quantize(&embedding, candle_core::quantized::GgmlDType::F32).unwrap();
    let path = llama_file_with(&dir, "iq2.gguf", &[], &[("token_embd.weight", &embedding)]);
    let mut bytes = std::fs::read(&path).unwrap();
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).expect("the tensor's header");
    // After the name: its dimension count (u32) and dimensions (u64 each), then the type (u32).
    let kind = at + name.len() + 4 + 2 * 8;
    bytes[kind..kind + 4].copy_from_slice(&16u32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let error = LoadedModel::load(&path, &LoadOptions::default()).err().expect("refused").to_string();
    assert!(error.contains("ggml type 16 (IQ2_XXS), which is not supported") && error.contains("Q8_0"), "{error}");
    // RoPE factors (head size 16: 8 of them) of the wrong length, or not above 0.
    for (factors, expected, name) in
        [(vec![1.0f32; 3], "expected [8]", "factors3.gguf"), (vec![-1.0f32; 8], "above 0", "negative.gguf")]
    {
        let device = candle_core::Device::Cpu;
        let tensor = candle_core::Tensor::new(factors.as_slice(), &device).unwrap();
        let tensor =
            candle_core::quantized::QTensor::quantize(&tensor, candle_core::quantized::GgmlDType::F32).unwrap();
        let path = llama_file_with(&dir, name, &[], &[("rope_freqs.weight", &tensor)]);
        let error = LoadedModel::load(&path, &LoadOptions::default()).err().expect("refused").to_string();
        assert!(error.contains("rope_freqs.weight") && error.contains(expected), "{error}");
    }
}

/// SmolLM2's file with every layer matrix in `dtype` (candle's writer implements llama.cpp's
/// reference quantizer; Q5_0 is what a Q4_K_M file mostly is on small models). Written once
/// under the target directory.
fn smollm2_in(source: &std::path::Path, dtype: GgmlDType) -> PathBuf {
    let name = format!("smollm2-{}.gguf", format!("{dtype:?}").to_lowercase());
    rewritten(source, &name, |_metadata, tensors| {
        for (name, tensor) in tensors.iter_mut() {
            if name.starts_with("blk.") && tensor.shape().rank() == 2 {
                let values = tensor.dequantize(&candle_core::Device::Cpu).unwrap();
                *tensor = candle_core::quantized::QTensor::quantize(&values, dtype).unwrap();
            }
        }
    })
}

/// `--quantize auto` keeps a Q5_0 file's blocks as they are: the layers' weights a token reads
/// come to the file's tensor bytes (within 10%: the f16 minimum the kernels keep beside each
/// scale), not Q8_0's 1.5 times that, and greedy answers equal llama.cpp's on
/// the same file or part from them at near-ties.
#[test]
fn a_q5_0_file_is_kept_in_its_own_blocks() {
    let Some(source) = smollm2() else { return };
    let path = smollm2_in(&source, GgmlDType::Q5_0);
    let options = LoadOptions { quantize: Some(recyclegpt_model::Quantization::AsStored), ..LoadOptions::default() };
    let loaded = LoadedModel::load(&path, &options).expect("loads");
    let mut reader = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let stored: usize = content
        .tensor_infos
        .iter()
        .filter(|(name, info)| name.starts_with("blk.") && info.shape.rank() == 2)
        .map(|(_, info)| info.shape.elem_count() / 32 * 22)
        .sum();
    let read = loaded.model.layer_bytes();
    assert!(
        (read as f64) < 1.1 * stored as f64,
        "the layers read {read} bytes per token against the file's {stored}: not kept as Q5_0"
    );
    assert_parting_only_at_near_ties_in(&loaded, "q5_0", "smollm2_q5_0_llamacpp_greedy.json");
}

/// A file whose layers are in K-quants (Q4_K, Q5_K, Q6_K, as candle's writer quantizes them)
/// is kept in their blocks, Llama's interleaved query and key rows reordered and projections
/// of different types (the value projection in Q6_K beside Q4_K, as in llama.cpp's Q4_K_M)
/// stacked each in its own: its layers read about the file's tensor bytes, and its logits equal
/// those of the same weights dequantized to f32 within the int8 rounding of the activations.
#[test]
fn k_quant_layers_are_kept_in_their_blocks() {
    use GgmlDType::{Q4K, Q5K, Q6K};
    layers_kept_as_stored("gguf-k-quants", [Q4K, Q4K, Q6K, Q6K, Q5K, Q4K, Q4K], GgmlDType::F32, 0.02);
}

/// A tiny Llama file in F16 and BF16 (the value and output projections in BF16 beside F16, the
/// embedding and tied head in F16) is kept in its 16-bit floats: its layers read the file's
/// tensor bytes, and its logits are those of the same weights in f32 but for summation order
/// (the activations are not rounded).
#[test]
fn half_float_layers_are_kept_as_stored() {
    use GgmlDType::{BF16, F16};
    layers_kept_as_stored("gguf-half", [F16, F16, BF16, BF16, F16, F16, BF16], F16, 1e-4);
}

/// A tiny Llama GGUF file whose layer matrices (query, key, value, output, gate, up, down) are
/// stored in `types` (its embedding, the tied head, in `embedding`) loads with `--quantize
/// auto` to layers that read within 10% of the file's tensor bytes, and logits within
/// `tolerance` (of the largest) of the same weights in f32.
fn layers_kept_as_stored(scratch: &str, types: [GgmlDType; 7], embedding: GgmlDType, tolerance: f32) {
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};
    use gguf_file::Value as V;
    use recyclegpt_model::{Quantization, SeqInput};
    let dir = common::scratch(scratch);
    let (hidden, ff) = (256, 512);
    let shapes: [(&str, (usize, usize)); 7] = [
        ("blk.0.attn_q.weight", (hidden, hidden)),
        ("blk.0.attn_k.weight", (hidden / 2, hidden)),
        ("blk.0.attn_v.weight", (hidden / 2, hidden)),
        ("blk.0.attn_output.weight", (hidden, hidden)),
        ("blk.0.ffn_gate.weight", (ff, hidden)),
        ("blk.0.ffn_up.weight", (ff, hidden)),
        ("blk.0.ffn_down.weight", (hidden, ff)),
    ];
    let mut quantized: Vec<(String, QTensor)> = shapes
        .iter()
        .zip(types)
        .map(|((name, shape), dtype)| {
            let values = Tensor::randn(0f32, 0.08, *shape, &Device::Cpu).unwrap();
            (name.to_string(), QTensor::quantize(&values, dtype).unwrap())
        })
        .collect();
    for (name, len) in
        [("blk.0.attn_norm.weight", hidden), ("blk.0.ffn_norm.weight", hidden), ("output_norm.weight", hidden)]
    {
        quantized.push((name.into(), f32_tensor(&vec![1.0; len])));
    }
    let values = Tensor::randn(0f32, 1.0, (6, hidden), &Device::Cpu).unwrap();
    quantized.push(("token_embd.weight".into(), QTensor::quantize(&values, embedding).unwrap()));
    let dequantized: Vec<(String, QTensor)> = quantized
        .iter()
        .map(|(name, t)| {
            (name.clone(), QTensor::quantize(&t.dequantize(&Device::Cpu).unwrap(), GgmlDType::F32).unwrap())
        })
        .collect();
    let changes = [
        ("llama.embedding_length", V::U32(hidden as u32)),
        ("llama.feed_forward_length", V::U32(ff as u32)),
        ("llama.attention.head_count_kv", V::U32(2)),
    ];
    let write = |name: &str, tensors: &[(String, QTensor)]| {
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        llama_file_with(&dir, name, &changes, &tensors)
    };
    let load = |path: PathBuf, quantize| LoadedModel::load(&path, &LoadOptions { quantize, ..LoadOptions::default() });
    let kept = load(write("k.gguf", &quantized), Some(Quantization::AsStored)).expect("the K-quant file loads");
    let plain = load(write("f32.gguf", &dequantized), None).expect("the f32 file loads");
    let stored: usize =
        quantized.iter().filter(|(n, _)| n.starts_with("blk.")).map(|(_, t)| t.storage_size_in_bytes()).sum();
    let read = kept.model.layer_bytes();
    assert!((read as f64) < 1.1 * stored as f64, "the layers read {read} bytes per token against the file's {stored}");
    let tokens = [1u32, 3, 4, 5, 3, 4];
    let logits = |loaded: &LoadedModel| {
        let mut cache = loaded.model.new_cache(tokens.len()).unwrap();
        let input = SeqInput { tokens: &tokens, cache: &mut cache, logits_rows: (0..tokens.len()).collect() };
        loaded.model.forward(&mut [input]).unwrap().logits.concat()
    };
    let (got, want) = (logits(&kept), logits(&plain));
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= tolerance * scale, "logit {g} against {w} (largest {scale})");
    }
}
