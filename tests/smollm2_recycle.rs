//! The module shipped for SmolLM2-135M-Instruct (`models/smollm2-135m-instruct-recycle`) beside
//! its GGUF file from ../shared: it loads, agrees with the model often enough to pay (verify's
//! tokens per full forward), and `verify` and `auto` answer chat prompts exactly as `off` does,
//! alone and batched, in the engine and over real HTTP.
mod common;

use common::server::TestServer;
use common::smollm2;
use recyclegpt_engine::{generate, step, CostModel, DecodeMode, SamplingParams, Sequence, StopCriteria};
use recyclegpt_model::{LoadOptions, LoadedModel, RecycleInit, RecycleSource};
use serde_json::{json, Value};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn module_dir() -> PathBuf {
    root().join("models/smollm2-135m-instruct-recycle")
}

fn load() -> Option<LoadedModel> {
    let path = smollm2()?;
    let options = LoadOptions { recycle_init: RecycleInit::FromDir(module_dir()), ..LoadOptions::default() };
    Some(LoadedModel::load(&path, &options).expect("SmolLM2 loads with its shipped module"))
}

/// Questions the tests ask, written for them.
const QUESTIONS: [&str; 4] = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Write a short poem about the sea.",
    "How do I boil an egg?",
];

/// A user question in SmolLM2's chat format (ChatML with its default system prompt), as token ids.
fn chat_prompt(loaded: &LoadedModel, question: &str) -> Vec<u32> {
    let text = format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    );
    loaded.tokenizer.encode(&text).expect("encodes")
}

fn stop(loaded: &LoadedModel, max_tokens: usize) -> StopCriteria {
    StopCriteria { max_tokens, eos_ids: loaded.tokenizer.eos_ids().to_vec() }
}

#[test]
fn the_shipped_module_pays_and_never_changes_greedy_answers() {
    let Some(loaded) = load() else { return };
    assert_eq!(loaded.model.recycle_source(), RecycleSource::Trained);
    let (mut tokens, mut forwards) = (0, 0);
    for question in QUESTIONS {
        let prompt = chat_prompt(&loaded, question);
        for max_tokens in [1, 9, 48, 160] {
            let run = |mode| {
                generate(&loaded.model, prompt.clone(), mode, SamplingParams::greedy(), stop(&loaded, max_tokens))
                    .expect("generates")
            };
            let off = run(DecodeMode::Off);
            for mode in [DecodeMode::Verify, DecodeMode::Auto] {
                let out = run(mode);
                assert_eq!(out.ids, off.ids, "{question:?}, {max_tokens} tokens, {mode:?}");
                assert_eq!(out.finish_reason, off.finish_reason);
                if mode == DecodeMode::Verify && max_tokens == 160 {
                    tokens += out.ids.len();
                    forwards += out.stats.full_forwards;
                }
            }
        }
    }
    let per_forward = tokens as f64 / forwards as f64;
    assert!(per_forward > 1.4, "verify emits {per_forward:.2} tokens per full forward on chat answers");
}

#[test]
fn batched_auto_and_verify_answer_as_each_does_alone() {
    let Some(loaded) = load() else { return };
    let model = &loaded.model;
    let cases: Vec<(usize, DecodeMode, usize)> = vec![
        (0, DecodeMode::Auto, 60),
        (1, DecodeMode::Verify, 40),
        (2, DecodeMode::Auto, 90),
        (3, DecodeMode::Off, 30),
        (1, DecodeMode::Auto, 5),
    ];
    let mut costs = CostModel::measure(model, cases.len()).expect("measures");
    let mut seqs: Vec<Sequence> = cases
        .iter()
        .enumerate()
        .map(|(i, &(q, mode, max))| {
            let prompt = chat_prompt(&loaded, QUESTIONS[q]);
            Sequence::new(i as u64, model, prompt, mode, SamplingParams::greedy(), stop(&loaded, max)).unwrap()
        })
        .collect();
    // Prompts fed 16 tokens at a time, so that prefill and decode share steps.
    while seqs.iter().any(|s| !s.is_finished()) {
        let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
        step(model, &mut refs, 16, costs.as_mut()).unwrap();
    }
    for (seq, &(q, mode, max)) in seqs.iter().zip(&cases) {
        let alone = generate(
            model,
            chat_prompt(&loaded, QUESTIONS[q]),
            DecodeMode::Off,
            SamplingParams::greedy(),
            stop(&loaded, max),
        )
        .unwrap();
        assert_eq!(seq.generated(), alone.ids.as_slice(), "{:?} in {mode:?}", QUESTIONS[q]);
    }
}

/// `serve --model FILE.gguf --recycle DIR` answers a chat in `auto` (the default) exactly as in
/// `off`, and says which mode it used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_the_module_beside_the_gguf_file_in_auto() {
    let Some(path) = smollm2() else { return };
    let Some(loaded) = load() else { return };
    let server = TestServer::start_loaded(&path, loaded, |c| {
        c.recycle = Some(module_dir());
        c.max_running_sequences = 4;
    })
    .await;
    let client = reqwest::Client::new();
    let ask = |recycle: Option<&str>| {
        let mut body = json!({
            "messages": [{"role": "user", "content": QUESTIONS[1]}],
            "max_tokens": 64, "temperature": 0,
        });
        if let Some(mode) = recycle {
            body["recycle"] = json!(mode);
        }
        client.post(server.url("/v1/chat/completions")).json(&body).send()
    };
    let off: Value = ask(Some("off")).await.unwrap().json().await.unwrap();
    let auto: Value = ask(None).await.unwrap().json().await.unwrap();
    assert_eq!(auto["recycle"]["mode"], "auto", "{auto}");
    assert_eq!(auto["choices"][0]["message"]["content"], off["choices"][0]["message"]["content"]);
    let models: Value = client.get(server.url("/v1/models")).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["data"][0]["recycle"]["module"], "trained", "{models}");
    assert_eq!(models["data"][0]["recycle"]["default"], "auto", "{models}");
}
