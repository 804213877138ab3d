//! The OpenAI-compatible server, over real HTTP on 127.0.0.1 with the real weights of the in-repo
//! model (`models/shakespeare`): response shapes, streams parsed as SSE, parity with
//! `recyclegpt generate`, batching, errors.
mod common;

use common::server::{sse_chunks, sse_data, TestServer};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use tokio::sync::Mutex;

/// The embedded model: always present, so these tests run on a fresh clone.
fn embedded() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare")
}

/// Metrics are process-wide: the tests of this file run one at a time (an async lock, held
/// across the whole test).
static SERIAL: Mutex<()> = Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// `recyclegpt generate --json` text for a prompt (random module seed 1, as the test server).
fn generate_text(model: &std::path::Path, prompt: &str, mode: &str, max_tokens: usize) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_recyclegpt"))
        .args(["generate", "--model"])
        .arg(model)
        .args(["--prompt", prompt, "--mode", mode, "--max-tokens", &max_tokens.to_string()])
        .args(["--recycle-init", "random", "--recycle-seed", "1", "--json"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    report["text"].as_str().expect("text").to_string()
}

fn completion_text(body: &Value) -> String {
    body["choices"][0]["text"].as_str().expect("text").to_string()
}

fn streamed_text(chunks: &[Value], field: &str) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .filter_map(|c| if field == "text" { c["text"].as_str() } else { c["delta"]["content"].as_str() })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_text_equals_generate_in_every_mode() {
    let _serial = serial().await;
    let model = embedded();
    let server = TestServer::start(&model, |_| {}).await;
    let prompt = "To be, or not to be, that is the question";
    let mut by_mode = Vec::new();
    for (mode, cli_mode) in [("off", "off"), ("alternate", "alternate"), ("verify", "verify")] {
        let want = generate_text(&model, prompt, cli_mode, 40);
        let body: Value = server
            .post(
                "/v1/completions",
                json!({"model": "stories", "prompt": prompt, "max_tokens": 40, "temperature": 0, "recycle": mode}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(completion_text(&body), want, "{mode}, not streamed");
        assert_eq!(body["object"], "text_completion");
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(body["usage"]["completion_tokens"], 40);
        assert_eq!(body["usage"]["total_tokens"], body["usage"]["prompt_tokens"].as_u64().unwrap() + 40);
        assert_eq!(body["recycle"]["mode"], cli_mode);

        let stream = server
            .post(
                "/v1/completions",
                json!({"prompt": prompt, "max_tokens": 40, "temperature": 0, "recycle": mode, "stream": true}),
            )
            .await;
        assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let chunks = sse_chunks(&stream.text().await.unwrap());
        assert_eq!(streamed_text(&chunks, "text"), want, "{mode}, streamed");
        assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");
        by_mode.push(want);
    }
    assert_eq!(by_mode[2], by_mode[0], "verify equals off");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_stream_has_role_content_finish_usage_and_done() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |_| {}).await;
    let request = json!({
        "messages": [{"role": "system", "content": "Tell a story."},
                     {"role": "user", "content": [{"type": "text", "text": "Once upon a time"}]}],
        "max_completion_tokens": 24, "temperature": 0
    });
    let whole: Value = server.post("/v1/chat/completions", request.clone()).await.json().await.unwrap();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    let content = whole["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(!content.is_empty());

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = sse_chunks(&server.post("/v1/chat/completions", streamed).await.text().await.unwrap());
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_text(&chunks, "content"), content);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 24);
    // The same prompt a second time: the prefix cache supplies all but its last tokens.
    for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage["usage"][count], whole["usage"][count]);
    }
    assert_eq!(whole["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert!(usage["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 0);
    server.shutdown().await.unwrap();
}

/// The chat page marks what accepted drafts wrote: a stream's chunks say so (`draft`), and the
/// marked text is there exactly when the stream's own counters (its usage chunk) say drafts
/// were accepted. (Not another request's counters: how long chains run follows the timings,
/// so two runs of one greedy answer accept drafts differently while writing the same text.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chunks_mark_what_accepted_drafts_wrote() {
    let _serial = serial().await;
    let model = embedded();
    let loaded = common::load(&model, recyclegpt_model::RecycleInit::FromFiles);
    let server = TestServer::start_loaded(&model, loaded, |_| {}).await;
    let request = json!({
        "messages": [{"role": "user", "content": "The king said to the king: the king, the king, the king"}],
        "max_tokens": 48, "temperature": 0, "recycle": "verify"
    });
    let whole: Value = server.post("/v1/chat/completions", request.clone()).await.json().await.unwrap();
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = sse_chunks(&server.post("/v1/chat/completions", streamed).await.text().await.unwrap());
    assert_eq!(streamed_text(&chunks, "content"), whole["choices"][0]["message"]["content"].as_str().unwrap());
    let marked = |kind: &str| chunks.iter().filter(|c| c["choices"][0]["draft"] == kind).count();
    let recycle = &chunks[chunks.len() - 1]["recycle"];
    let accepted = recycle["accepted"].as_u64().unwrap();
    let from_text = recycle["accepted_from_text"].as_u64().unwrap();
    assert!(accepted > 0, "the trained module and the repeated text get drafts accepted: {recycle}");
    assert_eq!(marked("module") > 0, accepted > from_text, "{recycle}");
    assert_eq!(marked("lookup") > 0, from_text > 0, "{recycle}");
    // Without drafts nothing is marked.
    let mut off = request.clone();
    off["stream"] = json!(true);
    off["recycle"] = json!("off");
    let chunks = sse_chunks(&server.post("/v1/chat/completions", off).await.text().await.unwrap());
    assert!(chunks.iter().all(|c| c["choices"][0].get("draft").is_none()));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_streams_match_their_solo_runs() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |c| c.prefill_chunk = 6).await;
    let cases: Vec<(String, usize, &str)> = (0..8)
        .map(|i| {
            let prompt =
                ["Once upon a time", "The dog", "Lily and Tom went to the park to play with a ball", "Tim"][i % 4];
            (format!("{prompt}{}", " and".repeat(i)), 10 + 7 * i, ["off", "alternate", "verify"][i % 3])
        })
        .collect();
    let request = |(prompt, max, mode): &(String, usize, &str)| json!({"prompt": prompt, "max_tokens": max, "temperature": 0, "recycle": mode, "stream": true});
    let mut solo = Vec::new();
    for case in &cases {
        solo.push(streamed_text(
            &sse_chunks(&server.post("/v1/completions", request(case)).await.text().await.unwrap()),
            "text",
        ));
    }
    let client = reqwest::Client::new();
    let tasks: Vec<_> = cases
        .iter()
        .map(|case| {
            let (client, url, body) = (client.clone(), server.url("/v1/completions"), request(case));
            tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap().text().await.unwrap() })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let text = streamed_text(&sse_chunks(&task.await.unwrap()), "text");
        assert_eq!(text, solo[i], "request {i} ({:?})", cases[i]);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_stream_frees_its_slot() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |c| c.max_running_sequences = 1).await;
    let cancelled_before = server.metric("recyclegpt_cancelled_total").await;
    // The model writes thousands of tokens a second: eight prompts of 120 tokens each, one after
    // another in the only slot, keep the stream going well past the moment its client leaves.
    let body = json!({"prompt": vec!["Once"; 8], "max_tokens": 120, "temperature": 0, "stream": true, "logit_bias": {"1": -100, "2": -100}});
    let mut response = server.post("/v1/completions", body).await;
    let first = response.chunk().await.unwrap().expect("a first chunk");
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    drop(response);
    let mut freed = false;
    for _ in 0..200 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        if server.metric("recyclegpt_cancelled_total").await > cancelled_before
            && server.metric("recyclegpt_running_sequences").await == 0.0
        {
            freed = true;
            break;
        }
    }
    assert!(freed, "the sequence of a disconnected client was not cancelled");
    assert_eq!(server.metric("recyclegpt_kv_tokens_in_use").await, 0.0);
    // The only slot serves the next request.
    let next: Value =
        server.post("/v1/completions", json!({"prompt": "Hi", "max_tokens": 3})).await.json().await.unwrap();
    assert_eq!(next["usage"]["completion_tokens"], 3);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_the_rest_complete() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |c| {
        c.max_running_sequences = 1;
        c.queue_capacity = 1;
    })
    .await;
    let client = reqwest::Client::new();
    // One runs, one waits, the rest find the queue full: many at once, since each takes only
    // tens of milliseconds.
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let (client, url) = (client.clone(), server.url("/v1/completions"));
            let body = json!({"prompt": "Once", "max_tokens": 120, "logit_bias": {"1": -100, "2": -100}});
            tokio::spawn(async move {
                let r = client.post(url).json(&body).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            200 => assert_eq!(body["usage"]["completion_tokens"], 120),
            429 => assert_eq!(body["error"]["type"], "rate_limit_error"),
            other => panic!("unexpected status {other}: {body}"),
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    server.shutdown().await.unwrap();
}

async fn expect_error(server: &TestServer, path: &str, body: Value, status: u16, param: Option<&str>) -> String {
    let response = server.post(path, body.clone()).await;
    assert_eq!(response.status().as_u16(), status, "{body}");
    let error: Value = response.json().await.unwrap();
    let e = &error["error"];
    assert!(e["message"].is_string() && e["type"].is_string() && e.get("code").is_some(), "{error}");
    if let Some(param) = param {
        assert_eq!(e["param"], param, "{error}");
    }
    e["message"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_status_in_openai_shape() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |c| c.body_limit_bytes = 4096).await;
    let c = "/v1/completions";
    expect_error(&server, c, json!({"prompt": "x", "temperature": 3}), 400, Some("temperature")).await;
    expect_error(&server, c, json!({"prompt": "x", "n": 0}), 400, Some("n")).await;
    expect_error(&server, c, json!({"prompt": "x", "max_tokens": -5}), 400, Some("max_tokens")).await;
    expect_error(&server, c, json!({"prompt": "x", "best_of": 3}), 400, Some("best_of")).await;
    expect_error(&server, c, json!({"prompt": "x", "recycle": "sometimes"}), 400, Some("recycle")).await;
    expect_error(&server, c, json!({"prompt": [[1, 99999]]}), 400, Some("prompt")).await;
    let (context, too_many) = (common::embedded_context(), common::embedded_context() + 72);
    let message =
        expect_error(&server, c, json!({"prompt": "x", "max_tokens": too_many}), 400, Some("max_tokens")).await;
    assert!(message.contains(&context.to_string()) && message.contains(&too_many.to_string()), "{message}");
    expect_error(&server, c, json!({"prompt": "x", "model": "gpt-4"}), 404, Some("model")).await;
    expect_error(&server, "/v1/chat/completions", json!({"messages": []}), 400, Some("messages")).await;
    expect_error(&server, c, json!({"prompt": "x".repeat(5000)}), 413, None).await;
    let response = reqwest::Client::new()
        .post(server.url(c))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 422);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "malformed_json");

    server.state.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    expect_error(&server, c, json!({"prompt": "x"}), 503, None).await;
    assert_eq!(reqwest::get(server.url("/health")).await.unwrap().status().as_u16(), 503);
    server.state.draining.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(reqwest::get(server.url("/health")).await.unwrap().status().as_u16(), 200);
    server.shutdown().await.unwrap();

    let keyed = TestServer::start(&embedded(), |c| c.api_key = Some("sesame".into())).await;
    expect_error(&keyed, c, json!({"prompt": "x"}), 401, None).await;
    let ok = reqwest::Client::new()
        .post(keyed.url(c))
        .bearer_auth("sesame")
        .json(&json!({"prompt": "x", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(reqwest::get(keyed.url("/health")).await.unwrap().status().as_u16(), 200, "health needs no key");
    keyed.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_malformed_bodies_get_4xx_and_the_server_keeps_serving() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |_| {}).await;
    let client = reqwest::Client::new();
    let mut bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"42".to_vec(),
        b"\"prompt\"".to_vec(),
        vec![0xff, 0xfe, 0x7b],
        b"{\"prompt\": \"\xff\"}".to_vec(),
    ];
    let bad_json = [
        json!({}),
        json!({"prompt": 5}),
        json!({"prompt": null}),
        json!({"prompt": [1.5]}),
        json!({"prompt": [-1]}),
        json!({"prompt": "x", "max_tokens": "ten"}),
        json!({"prompt": "x", "max_tokens": 1e30}),
        json!({"prompt": "x", "max_tokens": -1}),
        json!({"prompt": "x", "max_tokens": 0}),
        json!({"prompt": "x", "n": 0}),
        json!({"prompt": "x", "n": 1000}),
        json!({"prompt": "x", "temperature": -1}),
        json!({"prompt": "x", "temperature": "hot"}),
        json!({"prompt": "x", "top_p": 0}),
        json!({"prompt": "x", "top_p": 7}),
        json!({"prompt": "x", "top_k": -7}),
        json!({"prompt": "x", "min_p": 2}),
        json!({"prompt": "x", "stop": 5}),
        json!({"prompt": "x", "stop": ["", "a"]}),
        json!({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}),
        json!({"prompt": "x", "logit_bias": {"abc": 1}}),
        json!({"prompt": "x", "logit_bias": {"5": 1000}}),
        json!({"prompt": "x", "seed": "s"}),
        json!({"prompt": "x", "stream": "yes"}),
        json!({"prompt": "x", "frequency_penalty": 9}),
        json!({"prompt": "x", "presence_penalty": -9}),
        json!({"prompt": "x", "repetition_penalty": 0}),
        json!({"prompt": "x", "recycle": 1}),
        json!({"prompt": []}),
        json!({"prompt": [[]]}),
        json!({"prompt": ["a", 5]}),
        json!({"prompt": "x", "suffix": "y"}),
        json!({"prompt": "x", "logprobs": 9}),
        json!({"prompt": "x", "max_tokens": 99999999999u64}),
        json!({"prompt": "x", "model": 7}),
    ];
    bodies.extend(bad_json.iter().map(|b| b.to_string().into_bytes()));
    let chat = [
        json!({"messages": []}),
        json!({"messages": "hi"}),
        json!({"messages": [{"role": "robot", "content": "x"}]}),
        json!({"messages": [{"content": "x"}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
        json!({"messages": [{"role": "user", "content": 5}]}),
        json!({"messages": [{"role": "user", "content": "x"}], "n": 0}),
    ];
    assert!(bodies.len() + chat.len() >= 50, "{}", bodies.len() + chat.len());
    for (path, body) in bodies
        .into_iter()
        .map(|b| ("/v1/completions", b))
        .chain(chat.iter().map(|b| ("/v1/chat/completions", b.to_string().into_bytes())))
    {
        let response = client
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{path} {}: {status}", String::from_utf8_lossy(&body));
        let error: Value = response.json().await.unwrap();
        assert!(error["error"]["message"].is_string(), "{error}");
    }
    let body: Value =
        server.post("/v1/completions", json!({"prompt": "Once", "max_tokens": 5})).await.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 5);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_fields_prompts_echo_stop_n_and_seed() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |_| {}).await;
    let post = |body: Value| {
        let server = &server;
        async move { server.post("/v1/completions", body).await.json::<Value>().await.unwrap() }
    };
    let base = post(json!({"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0})).await;
    let text = completion_text(&base);
    assert_eq!(base["usage"]["completion_tokens"], 30);
    assert!(!text.trim().is_empty(), "{text:?}");

    // Token ids (BOS first), and a list of prompts: choices in prompt order.
    let prompt_ids = server.state.tokenizer.encode("Once upon a time").unwrap();
    assert_eq!(prompt_ids[0], 1, "{prompt_ids:?}");
    let ids = post(json!({"prompt": prompt_ids, "max_tokens": 30, "temperature": 0})).await;
    assert_eq!(completion_text(&ids), text);
    let many = post(json!({"prompt": ["Once upon a time", "The cat"], "max_tokens": 30, "temperature": 0})).await;
    assert_eq!(many["choices"].as_array().unwrap().len(), 2);
    assert_eq!(many["choices"][0]["text"], text.as_str());
    assert_eq!(many["choices"][1]["index"], 1);
    let lists = post(json!({"prompt": [prompt_ids, prompt_ids[..2]], "max_tokens": 5, "temperature": 0})).await;
    assert_eq!(lists["choices"].as_array().unwrap().len(), 2);

    // Echo puts the prompt in front.
    let echoed = post(json!({"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0, "echo": true})).await;
    assert_eq!(completion_text(&echoed), format!("Once upon a time{text}"));

    // A stop string spanning tokens cuts the text before it, with finish_reason stop. The string:
    // the last two characters of a token and the first two of the next, where it first occurs.
    let with_tokens =
        post(json!({"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0, "logprobs": 0})).await;
    assert_eq!(completion_text(&with_tokens), text);
    let tokens: Vec<&str> = with_tokens["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.concat(), text);
    let mut boundary = 0;
    let (stop, stop_at) = tokens
        .windows(2)
        .find_map(|pair| {
            boundary += pair[0].len();
            let (a, b) = (pair[0], pair[1]);
            let spanning = a.len() >= 2 && b.len() >= 2 && a.is_ascii() && b.is_ascii();
            let stop = spanning.then(|| format!("{}{}", &a[a.len() - 2..], &b[..2]))?;
            (boundary > 2 && text.find(&stop) == Some(boundary - 2)).then_some((stop, boundary - 2))
        })
        .expect("two neighbouring tokens of two characters or more");
    assert!(!text.contains("zzz"));
    for stream in [false, true] {
        let body = json!({"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0, "stop": [stop, "zzz"], "stream": stream});
        let (got, finish) = if stream {
            let chunks = sse_chunks(&server.post("/v1/completions", body).await.text().await.unwrap());
            (streamed_text(&chunks, "text"), chunks.last().unwrap()["choices"][0]["finish_reason"].clone())
        } else {
            let b = post(body).await;
            (completion_text(&b), b["choices"][0]["finish_reason"].clone())
        };
        assert_eq!(got, text[..stop_at], "stream {stream}, stop {stop:?}");
        assert_eq!(finish, "stop");
    }

    // n samples differ; the same seed repeats; different seeds differ.
    let sampled = |seed: u64, n: u64| {
        post(json!({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 1.0, "seed": seed, "n": n}))
    };
    let a = sampled(5, 2).await;
    let b = sampled(5, 2).await;
    let c = sampled(6, 2).await;
    assert_eq!(a["choices"], b["choices"]);
    assert_ne!(a["choices"][0]["text"], a["choices"][1]["text"]);
    assert_ne!(a["choices"][0]["text"], c["choices"][0]["text"]);
    assert_eq!(a["usage"]["completion_tokens"], 48);

    // /v1/models, /health, /metrics.
    let models: Value = reqwest::get(server.url("/v1/models")).await.unwrap().json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "stories");
    assert_eq!(models["data"][0]["recycle"]["module"], "random");
    assert_eq!(models["data"][0]["recycle"]["default"], "auto");
    assert_eq!(reqwest::get(server.url("/health")).await.unwrap().status().as_u16(), 200);
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    let spec: Value = reqwest::get(server.url("/openapi.json")).await.unwrap().json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with('3'));
    for path in ["/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"] {
        assert!(spec["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    assert!(spec["components"]["schemas"]["CompletionRequest"].is_object());
    for name in [
        "recyclegpt_requests_total",
        "recyclegpt_queue_depth",
        "recyclegpt_running_sequences",
        "recyclegpt_kv_tokens_in_use",
        "recyclegpt_prompt_tokens_total",
        "recyclegpt_generated_tokens_total",
        "recyclegpt_time_to_first_token_seconds_bucket",
        "recyclegpt_inter_token_seconds_bucket",
        "recyclegpt_full_forwards_total",
        "recyclegpt_recycle_accepted_total",
        "vllm:spec_decode_num_drafts_total",
        "vllm:spec_decode_num_accepted_tokens_per_pos_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    server.shutdown().await.unwrap();
}

/// Opens `count` streams of `body`, waits until each has sent its first chunk (all are running),
/// shuts the server down, and returns every stream's whole body.
async fn streams_across_shutdown(server: TestServer, body: &Value, count: usize) -> Vec<String> {
    let started = std::sync::Arc::new(tokio::sync::Barrier::new(count + 1));
    let mut readers = Vec::new();
    for _ in 0..count {
        let mut response = server.post("/v1/completions", body.clone()).await;
        let started = started.clone();
        readers.push(tokio::spawn(async move {
            let mut text = String::from_utf8(response.chunk().await.unwrap().unwrap().to_vec()).unwrap();
            started.wait().await;
            while let Some(chunk) = response.chunk().await.unwrap() {
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
            text
        }));
    }
    started.wait().await;
    let shutdown = tokio::spawn(server.shutdown());
    let mut bodies = Vec::new();
    for reader in readers {
        bodies.push(reader.await.unwrap());
    }
    shutdown.await.unwrap().expect("serve returns Ok");
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_streams_finish_then_ends_them_after_the_grace_period() {
    let _serial = serial().await;
    // The model writes thousands of tokens a second: sixteen streams in one batch keep each of
    // them running long enough for the shutdown to find them mid-way.
    let body = json!({"prompt": "Once", "max_tokens": 120, "stream": true, "logit_bias": {"1": -100, "2": -100}});
    let streams = 16;
    // Grace 0: the running streams are ended at once with an error event, never a normal finish.
    let server = TestServer::start(&embedded(), |c| c.shutdown_grace_seconds = 0.0).await;
    for text in streams_across_shutdown(server, &body, streams).await {
        // The error event ends the stream: no `[DONE]` after it.
        let data = sse_data(&text);
        assert!(data.iter().all(|d| d != "[DONE]"), "{text}");
        let chunks: Vec<Value> = data.iter().map(|d| serde_json::from_str(d).unwrap()).collect();
        assert_eq!(chunks.last().unwrap()["error"]["code"], "interrupted", "{text}");
        assert!(
            chunks.iter().all(|c| c["choices"][0]["finish_reason"].is_null()),
            "a cut stream must not look finished"
        );
        let pieces = chunks.iter().filter(|c| c["choices"][0]["finish_reason"].is_null()).count();
        assert!(pieces < 100, "the stream was ended early, not run to 120 tokens ({pieces} pieces)");
    }

    // A long grace period: the streams run to their end.
    let server = TestServer::start(&embedded(), |c| c.shutdown_grace_seconds = 60.0).await;
    for text in streams_across_shutdown(server, &body, streams).await {
        let chunks = sse_chunks(&text);
        assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length", "{text}");
        let pieces = chunks.iter().filter(|c| c["choices"][0]["finish_reason"].is_null()).count();
        assert!(pieces >= 100, "{pieces} text chunks");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_for_completions_and_chat() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |_| {}).await;
    for mode in ["off", "verify"] {
        let body: Value = server
            .post("/v1/completions", json!({"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "logprobs": 3, "recycle": mode}))
            .await
            .json()
            .await
            .unwrap();
        let lp = &body["choices"][0]["logprobs"];
        let tokens: Vec<&str> = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(tokens.len(), 12, "{mode}");
        assert_eq!(tokens.concat(), completion_text(&body), "{mode}: tokens spell the text");
        for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
            let top = top.as_object().unwrap();
            assert_eq!(top.len(), 3);
            let best = top.values().map(|v| v.as_f64().unwrap()).fold(f64::NEG_INFINITY, f64::max);
            let chosen = lp["token_logprobs"][i].as_f64().unwrap();
            assert!(chosen <= 0.0);
            assert!((chosen - best).abs() < 1e-5, "{mode}: greedy picks the most likely token");
        }
        assert_eq!(lp["text_offset"][0], 0);
    }
    let request = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0,
                         "logprobs": true, "top_logprobs": 2, "stream": true});
    let chunks = sse_chunks(&server.post("/v1/chat/completions", request).await.text().await.unwrap());
    let entries: Vec<&Value> =
        chunks.iter().filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array()).flatten().collect();
    assert_eq!(entries.len(), 8);
    assert!(entries.iter().all(|e| e["top_logprobs"].as_array().unwrap().len() == 2 && e["bytes"].is_array()));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_uses_the_models_template() {
    let _serial = serial().await;
    let dir = common::scratch("chat-template");
    for entry in std::fs::read_dir(embedded()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let template = "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{{ m.content.strip() }}\n\
{% elif m.role == 'user' %}Q: {{ m.content | trim }}\n{% elif m.role == 'assistant' %}A: {{ m.content }}\n\
{% else %}{{ raise_exception('unknown role ' ~ m.role) }}{% endif %}{% endfor %}{% if add_generation_prompt %}A:{% endif %}";
    let config_path = dir.join("tokenizer_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["chat_template"] = json!(template);
    std::fs::write(&config_path, config.to_string()).unwrap();

    let server = TestServer::start(&dir, |_| {}).await;
    let chat: Value = server
        .post(
            "/v1/chat/completions",
            json!({"messages": [
            {"role": "system", "content": "  Once upon a time  "},
            {"role": "user", "content": " Who was there? "}], "max_tokens": 20, "temperature": 0}),
        )
        .await
        .json()
        .await
        .unwrap();
    // The same prompt as plain text, with the one BOS the tokenizer adds.
    let rendered = "Once upon a time\nQ: Who was there?\nA:";
    let plain: Value = server
        .post("/v1/completions", json!({"prompt": rendered, "max_tokens": 20, "temperature": 0}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(chat["usage"]["prompt_tokens"], plain["usage"]["prompt_tokens"]);
    assert_eq!(chat["choices"][0]["message"]["content"], plain["choices"][0]["text"]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_serve_reports_throughput_and_latency() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |_| {}).await;
    let base = server.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_recyclegpt"))
            .args([
                "bench",
                "serve",
                "--url",
                &base,
                "--clients",
                "2",
                "--requests",
                "4",
                "--max-tokens",
                "8",
                "--json",
            ])
            .output()
            .expect("runs")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reports: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        reports.iter().map(|r| r["mode"].as_str().unwrap()).collect::<Vec<_>>(),
        ["off", "auto", "verify", "alternate"]
    );
    for r in &reports {
        assert_eq!(r["failed"], 0);
        assert_eq!(r["generated_tokens"], 32);
        assert!(r["tokens_per_second"].as_f64().unwrap() > 0.0);
        assert!(r["ttft_p50_ms"].as_f64().unwrap() > 0.0 && r["ttft_p99_ms"].as_f64() >= r["ttft_p50_ms"].as_f64());
        assert!(r["itl_p50_ms"].as_f64().unwrap() > 0.0);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_max_tokens_generation_runs_to_the_context_at_most() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |c| c.default_max_tokens = 100_000).await;
    let body: Value = server
        .post(
            "/v1/completions",
            json!({"prompt": [1, 403, 407], "logit_bias": {"1": -100, "2": -100}, "recycle": "off"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["usage"]["completion_tokens"], common::embedded_context() - 3, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    server.shutdown().await.unwrap();
}
