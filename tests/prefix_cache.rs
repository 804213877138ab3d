//! Prefix caching in the scheduler, on the in-repo model and its trained module: a prompt that
//! starts like an earlier request's text reuses its keys and values (full model and module),
//! greedy output stays what it is without the cache in every mode, and the cache keeps within
//! the part of the KV budget the running sequences leave free. Then the same over HTTP.
mod common;

use common::server::TestServer;
use recyclegpt_engine::scheduler::{Budget, Finished};
use recyclegpt_engine::{DecodeMode, SamplingParams, Scheduler, SchedulerConfig, SequenceRequest, StopCriteria};
use recyclegpt_model::{LoadOptions, LoadedModel};
use serde_json::{json, Value};
use std::path::PathBuf;

fn embedded() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare")
}

fn config(prefix_caching: bool, kv_tokens: usize) -> SchedulerConfig {
    SchedulerConfig {
        budget: Budget { max_running: 4, kv_tokens },
        prefill_chunk: 16,
        prefix_caching,
        prompt_lookup: true,
    }
}

/// Runs one request to its end; its tokens and how it finished.
fn run(
    scheduler: &mut Scheduler,
    loaded: &LoadedModel,
    id: u64,
    prompt: &[u32],
    mode: DecodeMode,
) -> (Vec<u32>, Finished) {
    let stop = StopCriteria { max_tokens: 24, eos_ids: loaded.tokenizer.eos_ids().to_vec() };
    scheduler.enqueue(SequenceRequest {
        id,
        prompt: prompt.to_vec(),
        mode,
        params: SamplingParams::greedy(),
        stop,
        constraint: None,
    });
    let mut tokens = Vec::new();
    loop {
        let outcome = scheduler.step(&loaded.model).expect("a step");
        for update in outcome.updates {
            tokens.extend(update.tokens);
            if let Some(finished) = update.finished {
                return (tokens, finished);
            }
        }
    }
}

#[test]
fn reused_prefixes_never_change_greedy_output() {
    let loaded = LoadedModel::load(&embedded(), &LoadOptions::default()).expect("the in-repo model loads");
    let encode = |text: &str| loaded.tokenizer.encode(text).unwrap();
    let first = encode("ROMEO:\nBut soft, what light through yonder window breaks?");
    for mode in [DecodeMode::Off, DecodeMode::Verify, DecodeMode::Auto, DecodeMode::Alternate] {
        let mut cached = Scheduler::new(config(true, 4096), 128, None);
        let mut plain = Scheduler::new(config(false, 4096), 128, None);
        let (answer, finished) = run(&mut cached, &loaded, 1, &first, mode);
        assert_eq!(finished.stats.cached_prompt_tokens, 0);
        assert!(cached.prefix_cache_tokens() > 0, "the finished request's caches are kept");
        // The next turn: the first prompt, its answer, and more text.
        let mut second = first.clone();
        second.extend(&answer);
        second.extend(encode("JULIET:\nIt is my lady").into_iter().skip(1));
        let (with_cache, finished) = run(&mut cached, &loaded, 2, &second, mode);
        let (without, _) = run(&mut plain, &loaded, 2, &second, mode);
        assert_eq!(with_cache, without, "{mode:?}");
        let reused = finished.stats.cached_prompt_tokens;
        assert!(
            reused >= first.len(),
            "{mode:?}: reused {reused} of a {}-token shared prefix",
            first.len() + answer.len()
        );
        // The same prompt again: all but its last token come from the cache (and one more with
        // a module, whose next pair needs the hidden state of the last reused position).
        let (again, finished) = run(&mut cached, &loaded, 3, &second, mode);
        assert_eq!(again, without);
        let computed = if mode == DecodeMode::Off { 1 } else { 2 };
        assert_eq!(finished.stats.cached_prompt_tokens, second.len() - computed, "{mode:?}");
        assert_eq!(plain.prefix_cache_tokens(), 0);
    }
}

#[test]
fn the_cache_fits_the_free_part_of_the_kv_budget() {
    let loaded = LoadedModel::load(&embedded(), &LoadOptions::default()).unwrap();
    let mut scheduler = Scheduler::new(config(true, 200), 128, None);
    for (i, text) in
        ["ROMEO:\nO, she doth teach", "JULIET:\nGood night, good night", "MERCUTIO:\nA plague o"].iter().enumerate()
    {
        let prompt = loaded.tokenizer.encode(text).unwrap();
        run(&mut scheduler, &loaded, i as u64, &prompt, DecodeMode::Off);
        assert!(scheduler.prefix_cache_tokens() <= 200, "{}", scheduler.prefix_cache_tokens());
    }
    // Each entry holds about 40 positions: the oldest were evicted to keep within 200.
    assert!(scheduler.prefix_cache_tokens() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_metrics_report_cached_tokens() {
    let server = TestServer::start(&embedded(), |_| {}).await;
    let messages = json!([{"role": "system", "content": "Speak as the prince."}, {"role": "user", "content": "Who rules Verona?"}]);
    let ask = || json!({"messages": messages, "max_tokens": 8, "temperature": 0});
    let first: Value = server.post("/v1/chat/completions", ask()).await.json().await.unwrap();
    let second: Value = server.post("/v1/chat/completions", ask()).await.json().await.unwrap();
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let prompt = second["usage"]["prompt_tokens"].as_u64().unwrap();
    // All but the last two prompt tokens (the module's next pair needs one more hidden state).
    assert_eq!(second["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(), Some(prompt - 2));
    assert_eq!(first["choices"][0]["message"], second["choices"][0]["message"]);
    assert!(server.metric("vllm:prefix_cache_hits_total").await >= (prompt - 2) as f64);
    assert!(server.metric("vllm:prefix_cache_queries_total").await >= 2.0 * prompt as f64);
    server.shutdown().await.unwrap();
}
