//! The routes over a scripted backend, with no model: the seam between HTTP and generation
//! (`recyclegpt_server::Backend`) carries everything, so what the routes do with tokens,
//! failures and a dead worker can be checked exactly. The tokenizer is the embedded model's.
mod common;

use common::server::sse_json;
use recyclegpt_engine::scheduler::Finished;
use recyclegpt_engine::{FinishReason, SequenceStats, TokenLogprob};
use recyclegpt_model::{LlamaConfig, RecycleSource, TextTokenizer};
use recyclegpt_server::{AppState, Backend, LoopbackServer, ModelInfo, ServerConfig};
use recyclegpt_server::{Event, Failure, Job, SubmitError};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the scripted backend does with every job.
#[derive(Clone, Copy)]
enum Script {
    /// Emits the job's prompt back as its generated tokens, a token per event.
    EchoPrompt,
    /// Fails every job as an engine failure would.
    Fail,
    /// Emits the prompt's first token, then the output's grammar fails.
    GrammarFails,
    /// Says this text, a token per event (with log-probabilities when asked), then ends as
    /// if out of tokens.
    Say(&'static str),
    /// The same, then the end-of-sequence token (no text of its own), ending with `stop`.
    SayThenEnd(&'static str),
}

struct Scripted {
    script: Script,
    alive: AtomicBool,
    tokenizer: Arc<TextTokenizer>,
}

impl Backend for Scripted {
    fn submit(&self, jobs: Vec<Job>) -> Result<(), SubmitError> {
        for job in jobs {
            let send = |event| {
                let _ = job.events.send((job.index, event));
            };
            match self.script {
                Script::Fail => send(Event::Failed(Failure::Engine("the engine failed on this request".into()))),
                Script::GrammarFails => {
                    let tokens = vec![job.prompt[job.prompt.len() - 1]];
                    send(Event::Tokens {
                        tokens,
                        sources: Vec::new(),
                        logprobs: Vec::new(),
                        prompt_logprobs: Vec::new(),
                        cached_prompt_tokens: 0,
                    });
                    send(Event::Finished(Finished {
                        reason: FinishReason::ConstraintFailed,
                        prompt_tokens: job.prompt.len(),
                        completion_tokens: 1,
                        stats: SequenceStats::default(),
                    }));
                }
                Script::EchoPrompt | Script::Say(_) | Script::SayThenEnd(_) => {
                    let mut tokens: Vec<u32> = match self.script {
                        Script::Say(text) | Script::SayThenEnd(text) => self.tokenizer.encode(text).unwrap_or_default(),
                        _ => job.prompt.clone(),
                    };
                    let ends = matches!(self.script, Script::SayThenEnd(_));
                    if ends {
                        tokens.push(job.eos_ids[0]);
                    }
                    let tokens: Vec<u32> = tokens.into_iter().skip(1).take(job.max_tokens).collect();
                    for &token in &tokens {
                        let logprob = TokenLogprob { token, logprob: -0.5, top: Vec::new() };
                        send(Event::Tokens {
                            tokens: vec![token],
                            sources: Vec::new(),
                            logprobs: job.params.logprobs.map(|_| vec![logprob]).unwrap_or_default(),
                            prompt_logprobs: Vec::new(),
                            cached_prompt_tokens: 0,
                        });
                    }
                    send(Event::Finished(Finished {
                        reason: if ends { FinishReason::Stop } else { FinishReason::Length },
                        prompt_tokens: job.prompt.len(),
                        completion_tokens: tokens.len(),
                        stats: SequenceStats::default(),
                    }));
                }
            }
        }
        Ok(())
    }
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
    fn begin_drain(&self) {}
    fn abort_running(&self) {}
}

async fn serve(script: Script, alive: bool) -> (LoopbackServer, String, Arc<TextTokenizer>) {
    serve_with(script, alive, ServerConfig::default()).await
}

async fn serve_with(script: Script, alive: bool, server: ServerConfig) -> (LoopbackServer, String, Arc<TextTokenizer>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare");
    let config = LlamaConfig::from_file(&dir.join("config.json")).expect("config");
    let tokenizer = TextTokenizer::load(&dir, &config).expect("tokenizer");
    let model = ModelInfo {
        context_len: config.max_position_embeddings,
        vocab_size: config.vocab_size,
        has_recycle: false,
        recycle_source: RecycleSource::None,
    };
    // The backend's own copy, for `Say`.
    let spoken = Arc::new(TextTokenizer::load(&dir, &config).expect("tokenizer"));
    let backend = Arc::new(Scripted { script, alive: AtomicBool::new(alive), tokenizer: spoken });
    let server_config =
        ServerConfig { port: 0, shutdown_delay_seconds: 0.0, ..server }.validated().expect("a valid configuration");
    let state = AppState::with_backend(server_config, tokenizer, model, backend).expect("state");
    let tokenizer = state.tokenizer.clone();
    let server = LoopbackServer::start(state).await.expect("bind");
    let base = format!("http://{}", server.address);
    (server, base, tokenizer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_backend_become_text_and_stop_strings_end_a_choice() {
    let (server, base, tokenizer) = serve(Script::EchoPrompt, true).await;
    let client = reqwest::Client::new();
    let prompt = "Good morrow, café 😀 cousin; what news?";
    let ids = tokenizer.encode(prompt).unwrap();
    let expected = tokenizer.decode_continuation(&ids[1..]);
    let body: Value = client
        .post(format!("{base}/v1/completions"))
        .json(&json!({"prompt": prompt, "max_tokens": 100}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["choices"][0]["text"], expected.as_str());
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    // A stop string cuts the text before it, and the choice ends with `stop`.
    let body: Value = client
        .post(format!("{base}/v1/completions"))
        .json(&json!({"prompt": prompt, "max_tokens": 100, "stop": ["; what"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cut = &expected[..expected.find("; what").unwrap()];
    assert_eq!(body["choices"][0]["text"], cut);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() < ids.len() as u64 - 1);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_a_500_or_an_error_event_never_a_finish() {
    let (server, base, _) = serve(Script::Fail, true).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/v1/completions"))
        .json(&json!({"prompt": "Hi", "max_tokens": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");
    let raw = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(raw.contains("\"error\""), "{raw}");
    assert!(!raw.contains("\"finish_reason\":\"stop\"") && !raw.contains("\"finish_reason\":\"length\""), "{raw}");
    // The error event ends the stream: no `[DONE]` a client could take for a whole answer.
    assert!(!raw.contains("[DONE]"), "{raw}");
    server.stop().await.unwrap();
}

/// A grammar that fails mid-generation is an error on every route, streamed or not, never a
/// `stop` with half the output (the probe's finding 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grammar_that_fails_mid_generation_is_an_error_never_a_finish() {
    let (server, base, _) = serve(Script::GrammarFails, true).await;
    let client = reqwest::Client::new();
    let format = json!({"type": "json_object"});
    let post = |path: &str, body: Value| client.post(format!("{base}{path}")).json(&body).send();
    let r = post("/v1/completions", json!({"prompt": "Hi", "max_tokens": 5, "response_format": format})).await.unwrap();
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("grammar failed"), "{body}");
    let chat = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "response_format": format});
    let r = post("/v1/chat/completions", chat.clone()).await.unwrap();
    assert_eq!(r.status(), 500);
    let mut streamed = chat;
    streamed["stream"] = json!(true);
    let raw = post("/v1/chat/completions", streamed).await.unwrap().text().await.unwrap();
    assert!(raw.contains("\"error\"") && raw.contains("grammar failed"), "{raw}");
    assert!(!raw.contains("\"finish_reason\":\"stop\""), "{raw}");
    let responses = json!({"input": "Hi", "max_output_tokens": 5, "text": {"format": {"type": "json_object"}}});
    let r = post("/v1/responses", responses).await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert!(status == 500 || body["status"] == "failed", "{status}: {body}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_makes_health_say_so() {
    let (server, base, _) = serve(Script::EchoPrompt, false).await;
    let r = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "worker stopped");
    server.stop().await.unwrap();
}

/// A gzip body is a 415 that says so (it was parsed as JSON and failed as garbage), and
/// Responses' `metadata` must be an object of strings (a list was echoed back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_and_bad_metadata_get_clear_errors() {
    let (server, base, _) = serve(Script::EchoPrompt, true).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/v1/completions"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(vec![0x1f, 0x8b, 0x08, 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("Content-Encoding `gzip`"), "{body}");
    for (metadata, says) in
        [(json!([1, 2]), "an object"), (json!({"a": 1}), "strings"), (json!({"k": "x".repeat(600)}), "512")]
    {
        let r = client
            .post(format!("{base}/v1/responses"))
            .json(&json!({"input": "Hi", "max_output_tokens": 3, "metadata": metadata}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{metadata}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["param"], "metadata");
        assert!(body["error"]["message"].as_str().unwrap().contains(says), "{body}");
    }
    // An unknown role is named with the item it is in (it was "did not match any variant").
    let r = client
        .post(format!("{base}/v1/responses"))
        .json(&json!({"input": [{"role": "user", "content": "Hi"}, {"role": "wizard", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("input[1]") && message.contains("unknown variant `wizard`"), "{body}");
    server.stop().await.unwrap();
}

/// A context overflow names the field at fault in each dialect: the token limit by its own
/// name, the prompt when it alone is too long, the tools when only they make it so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_overflows_name_the_field_at_fault() {
    let (server, base, _) = serve(Script::EchoPrompt, true).await;
    let client = reqwest::Client::new();
    let param = |path: &'static str, body: Value| {
        let request = client.post(format!("{base}{path}")).json(&body).send();
        async move {
            let response = request.await.unwrap();
            assert_eq!(response.status(), 400, "{path}: {body}");
            let error: Value = response.json().await.unwrap();
            assert_eq!(error["error"]["code"], "context_length_exceeded", "{error}");
            error["error"]["param"].as_str().unwrap().to_string()
        }
    };
    let hi = json!([{"role": "user", "content": "Hi"}]);
    let huge = "word ".repeat(5_000);
    assert_eq!(param("/v1/completions", json!({"prompt": "Hi", "max_tokens": 100_000})).await, "max_tokens");
    assert_eq!(param("/v1/completions", json!({"prompt": huge.clone(), "max_tokens": 1})).await, "prompt");
    let chat = json!({"messages": hi, "max_completion_tokens": 100_000});
    assert_eq!(param("/v1/chat/completions", chat).await, "max_completion_tokens");
    let responses = json!({"input": "Hi", "max_output_tokens": 100_000});
    assert_eq!(param("/v1/responses", responses).await, "max_output_tokens");
    assert_eq!(param("/v1/responses", json!({"input": huge.clone()})).await, "input");
    let parameters = json!({"type": "object", "description": "x".repeat(20_000)});
    let tools = json!([{"type": "function", "function": {"name": "f", "parameters": parameters}}]);
    assert_eq!(param("/v1/chat/completions", json!({"messages": hi, "tools": tools})).await, "tools");
    server.stop().await.unwrap();
}

/// A reasoning model's template in small: with thinking on (the default) the prompt opens the
/// reasoning itself, as DeepSeek-R1 distills' templates do; off, it writes an empty one.
const THINKING_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}<think></think>{% else %}<think>\n{% endif %}";

/// What the scripted model says: its reasoning, the tag that ends it, then the answer.
const THOUGHTFUL: &str = "Plan: greet them, é 😀.\n</think>\n\nHello there.";

async fn post(client: &reqwest::Client, url: String, body: Value) -> reqwest::Response {
    client.post(url).json(&body).send().await.expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_comes_apart_from_the_answer_in_every_dialect() {
    let template = std::env::temp_dir().join(format!("recyclegpt-thinking-{}.jinja", std::process::id()));
    std::fs::write(&template, THINKING_TEMPLATE).unwrap();
    let config = ServerConfig { chat_template_file: Some(template.clone()), ..ServerConfig::default() };
    let (server, base, _) = serve_with(Script::Say(THOUGHTFUL), true, config).await;
    let client = reqwest::Client::new();
    let (reasoning, answer) = ("Plan: greet them, é 😀.\n", "Hello there.");
    let hi = json!([{"role": "user", "content": "Hi"}]);

    // Chat completions, whole and streamed.
    let body: Value =
        post(&client, format!("{base}/v1/chat/completions"), json!({"messages": hi})).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["reasoning_content"], reasoning);
    assert_eq!(body["choices"][0]["message"]["content"], answer);
    let text = post(&client, format!("{base}/v1/chat/completions"), json!({"messages": hi, "stream": true}))
        .await
        .text()
        .await
        .unwrap();
    let deltas: Vec<Value> = sse_json(&text).into_iter().filter_map(|c| c["choices"].get(0).cloned()).collect();
    let joined = |field: &str| -> String { deltas.iter().filter_map(|c| c["delta"][field].as_str()).collect() };
    assert_eq!((joined("reasoning_content").as_str(), joined("content").as_str()), (reasoning, answer));
    assert!(deltas.iter().all(|c| c["delta"]["content"].as_str().is_none_or(|t| !t.contains("</think>"))));

    // The effort reaches the template: with none, the prompt closes an empty reasoning, so what
    // the model says is all answer.
    let body: Value =
        post(&client, format!("{base}/v1/chat/completions"), json!({"messages": hi, "reasoning_effort": "none"}))
            .await
            .json()
            .await
            .unwrap();
    assert!(body["choices"][0]["message"].get("reasoning_content").is_none());
    // (The tokenizer puts a space before a text it starts, as sentencepiece does.)
    assert_eq!(body["choices"][0]["message"]["content"].as_str().map(str::trim_start), Some(THOUGHTFUL));
    let bad =
        post(&client, format!("{base}/v1/chat/completions"), json!({"messages": hi, "reasoning_effort": "max"})).await;
    assert_eq!(bad.status(), 400);
    let bad = post(
        &client,
        format!("{base}/v1/chat/completions"),
        json!({"messages": hi, "chat_template_kwargs": {"add_generation_prompt": false}}),
    )
    .await;
    assert_eq!(bad.status(), 400);

    // Responses: a reasoning item before the message, whole and streamed.
    let body: Value = post(&client, format!("{base}/v1/responses"), json!({"input": "Hi", "store": false}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["output"][0]["type"], "reasoning");
    assert_eq!(body["output"][0]["content"][0]["text"], reasoning);
    assert_eq!(body["output"][1]["content"][0]["text"], answer);
    let text = post(&client, format!("{base}/v1/responses"), json!({"input": "Hi", "stream": true, "store": false}))
        .await
        .text()
        .await
        .unwrap();
    let events = sse_json(&text);
    let of = |kind: &str| -> String {
        events.iter().filter(|e| e["type"] == kind).filter_map(|e| e["delta"].as_str()).collect()
    };
    assert_eq!(
        (of("response.reasoning_text.delta").as_str(), of("response.output_text.delta").as_str()),
        (reasoning, answer)
    );
    // (The script ends its answers as if out of tokens: `incomplete`.)
    let done = &events.iter().find(|e| e["type"] == "response.incomplete").expect("the last event")["response"];
    let kinds =
        |output: &Value| -> Vec<Value> { output.as_array().unwrap().iter().map(|i| i["type"].clone()).collect() };
    assert_eq!(kinds(&done["output"]), kinds(&body["output"]));
    assert_eq!(done["output"][0]["content"], body["output"][0]["content"]);
    assert_eq!(done["output"][1]["content"], body["output"][1]["content"]);

    // Anthropic's Messages: a thinking block before the text, whole and streamed.
    let request = json!({"model": "any", "max_tokens": 64, "messages": hi});
    let body: Value = post(&client, format!("{base}/v1/messages"), request.clone()).await.json().await.unwrap();
    assert_eq!(body["content"][0], json!({"type": "thinking", "thinking": reasoning, "signature": ""}));
    assert_eq!(body["content"][1], json!({"type": "text", "text": answer}));
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let text = post(&client, format!("{base}/v1/messages"), streamed).await.text().await.unwrap();
    let events = sse_json(&text);
    let deltas = |kind: &str, field: &str| -> String {
        events.iter().filter(|e| e["delta"]["type"] == kind).filter_map(|e| e["delta"][field].as_str()).collect()
    };
    assert_eq!(
        (deltas("thinking_delta", "thinking").as_str(), deltas("text_delta", "text").as_str()),
        (reasoning, answer)
    );
    let starts: Vec<&Value> = events.iter().filter(|e| e["type"] == "content_block_start").collect();
    assert_eq!((starts[0]["index"].clone(), starts[0]["content_block"]["type"].clone()), (json!(0), json!("thinking")));
    assert_eq!((starts[1]["index"].clone(), starts[1]["content_block"]["type"].clone()), (json!(1), json!("text")));
    // `thinking: disabled` turns it off through the template; an earlier turn's thinking block is dropped.
    let mut off = request.clone();
    off["thinking"] = json!({"type": "disabled"});
    off["messages"] = json!([{"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": ""}, {"type": "text", "text": "Yo."}]},
        {"role": "user", "content": "Again"}]);
    let body: Value = post(&client, format!("{base}/v1/messages"), off).await.json().await.unwrap();
    assert_eq!(body["content"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["content"][0]["text"].as_str().map(str::trim_start), Some(THOUGHTFUL));
    server.stop().await.unwrap();
    let _ = std::fs::remove_file(template);
}

/// A streamed chat carries a log-probability for every token the whole answer does, the
/// end-of-sequence token's included (it has no text of its own to go out with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_logprobs_count_every_token_up_to_the_end_of_sequence() {
    let (server, base, _) = serve(Script::SayThenEnd("Good morrow, cousin."), true).await;
    let client = reqwest::Client::new();
    let request = json!({"messages": [{"role": "user", "content": "Hi"}], "logprobs": true});
    let body: Value = post(&client, format!("{base}/v1/chat/completions"), request.clone()).await.json().await.unwrap();
    let whole = body["choices"][0]["logprobs"]["content"].as_array().unwrap().len();
    assert_eq!(whole as u64, body["usage"]["completion_tokens"].as_u64().unwrap(), "{body}");
    let mut streamed = request;
    streamed["stream"] = json!(true);
    let text = post(&client, format!("{base}/v1/chat/completions"), streamed).await.text().await.unwrap();
    let chunks = sse_json(&text);
    let count: usize =
        chunks.iter().filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array()).map(Vec::len).sum();
    assert_eq!(count, whole, "{text}");
    assert_eq!(chunks.iter().rev().find_map(|c| c["choices"][0]["finish_reason"].as_str()), Some("stop"));
    server.stop().await.unwrap();
}
