//! The hostile-but-honest client probes, kept as tests on the in-repo model (no ../shared
//! needed): text that must survive, stalled and half-open connections, shutdown phases,
//! admission limits, authentication and error shapes. Every test serves over real HTTP on
//! 127.0.0.1.
mod common;

use common::server::{sse_chunks, sse_data, TestServer};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Metrics are process-wide: the tests of this file run one at a time (an async lock, held
/// across the whole test).
static SERIAL: Mutex<()> = Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

fn embedded() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare")
}

fn address(server: &TestServer) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// Whether the peer has closed the connection (EOF or reset) within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_text_survives_echo_streams_and_generation() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |_| {}).await;
    let prompt = "café naïve — “quoted” 😀 日本";
    let body: Value = server
        .post("/v1/completions", json!({"prompt": prompt, "max_tokens": 1, "echo": true}))
        .await
        .json()
        .await
        .unwrap();
    let text = body["choices"][0]["text"].as_str().unwrap();
    assert!(text.starts_with(prompt), "echo lost text: {text:?}");

    // Streamed deltas concatenate to the whole response, character for character.
    let request = json!({"prompt": "ROMEO: ¿Qué? 😀", "max_tokens": 60, "temperature": 0});
    let whole: Value = server.post("/v1/completions", request.clone()).await.json().await.unwrap();
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let raw = server.post("/v1/completions", streamed).await.text().await.unwrap();
    let joined: String = sse_chunks(&raw).iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(joined, whole["choices"][0]["text"].as_str().unwrap());
    assert!(!joined.contains('\u{FFFD}'), "{joined:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_cannot_lock_out_health() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |c| {
        c.max_connections = 16;
        c.header_read_timeout_seconds = 60.0;
        c.idle_timeout_seconds = 60.0;
    })
    .await;
    let evicted_before = server.metric("recyclegpt_connections_evicted_total").await;
    let mut stalled = Vec::new();
    for i in 0..48 {
        let mut stream = TcpStream::connect(address(&server)).await.unwrap();
        if i % 2 == 0 {
            // Half-sent headers.
            stream.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        }
        stalled.push(stream);
    }
    let start = Instant::now();
    let health = reqwest::Client::new()
        .get(server.url("/health"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .expect("/health answers while stalled connections hold every slot");
    assert_eq!(health.status(), 200);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(server.metric("recyclegpt_connections_evicted_total").await > evicted_before);
    drop(stalled);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_idle_connections_and_slow_bodies_are_cut_off() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |c| {
        c.header_read_timeout_seconds = 0.5;
        c.idle_timeout_seconds = 0.5;
        c.body_read_timeout_seconds = 0.5;
    })
    .await;
    let header_series = "recyclegpt_connections_timed_out_total{phase=\"header\"}";
    let before = server.metric(header_series).await;
    let mut partial = TcpStream::connect(address(&server)).await.unwrap();
    partial.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut silent = TcpStream::connect(address(&server)).await.unwrap();
    assert!(closed_within(&mut partial, Duration::from_secs(3)).await, "a half-sent header was held open");
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await, "a silent connection was held open");
    assert!(server.metric(header_series).await > before);

    // A body that never arrives in full: 408 in OpenAI's shape.
    let mut slow = TcpStream::connect(address(&server)).await.unwrap();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\"")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), slow.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"code\":\"body_timeout\""), "{response}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_half_open_connections_ends_within_the_grace_period() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |c| {
        c.shutdown_grace_seconds = 1.0;
        c.header_read_timeout_seconds = 600.0;
        c.body_read_timeout_seconds = 600.0;
        c.idle_timeout_seconds = 600.0;
    })
    .await;
    let mut half_headers = TcpStream::connect(address(&server)).await.unwrap();
    half_headers.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut half_body = TcpStream::connect(address(&server)).await.unwrap();
    half_body
        .write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    server.shutdown().await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(2), "shutdown took {:?}", start.elapsed());
    drop((half_headers, half_body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_answers_503_while_still_accepting_and_queued_requests_are_not_faked() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |c| {
        c.max_running_sequences = 1;
        c.shutdown_delay_seconds = 1.5;
        c.shutdown_grace_seconds = 20.0;
    })
    .await;
    let client = reqwest::Client::new();
    let long = json!({"prompt": "ROMEO:", "max_tokens": 100, "stream": true, "logit_bias": {"2": -100}});
    let mut running = client.post(server.url("/v1/completions")).json(&long).send().await.unwrap();
    let first = running.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    // Queued behind the running one (the only slot); the model is fast, so queue plenty.
    let queued: Vec<_> = (0..12)
        .map(|_| {
            let (client, url) = (client.clone(), server.url("/v1/completions"));
            tokio::spawn(async move {
                let body = json!({"prompt": "JULIET:", "max_tokens": 100, "logit_bias": {"2": -100}});
                let r = client.post(url).json(&body).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (base, state) = (server.base.clone(), server.state.clone());
    let shutdown = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let health = client.get(format!("{base}/health")).send().await.expect("the listener still accepts");
    assert_eq!(health.status(), 503);
    let refused = client
        .post(format!("{base}/v1/completions"))
        .json(&json!({"prompt": "x", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "shutting_down");

    // Each queued request either ran in full before the signal or gets 503, never a fake finish.
    let mut not_started = 0;
    for task in queued {
        match task.await.unwrap() {
            (200, body) => assert_eq!(body["usage"]["completion_tokens"], 100, "{body}"),
            (503, body) => {
                assert_eq!(body["error"]["code"], "shutting_down");
                not_started += 1;
            }
            (status, body) => panic!("{status}: {body}"),
        }
    }
    assert!(not_started > 0, "every queued request ran before the signal: make the test slower");
    // The running stream goes on to a normal finish.
    let mut text = String::from_utf8_lossy(&first).to_string();
    while let Some(chunk) = running.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let chunks = sse_chunks(&text);
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"].is_string()), "{text}");
    shutdown.await.unwrap().unwrap();
    drop(state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_methods_media_types_and_keys_answer_in_openai_shape() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |c| c.api_key = Some("sekret".into())).await;
    let client = reqwest::Client::new();
    let key = |r: reqwest::RequestBuilder| r.header("Authorization", "bearer sekret");
    let error_of = |status: u16, body: &Value, code: &str| {
        assert_eq!(body["error"]["code"], code, "{status}: {body}");
        assert!(body["error"]["message"].is_string());
    };

    let r = key(client.get(server.url("/v1/completions"))).send().await.unwrap();
    assert_eq!(r.status(), 405);
    error_of(405, &r.json().await.unwrap(), "method_not_allowed");
    let r = key(client.get(server.url("/v1/nothing"))).send().await.unwrap();
    assert_eq!(r.status(), 404);
    error_of(404, &r.json().await.unwrap(), "not_found");
    let r = key(client.post(server.url("/v1/completions")))
        .header("Content-Type", "text/plain")
        .body(r#"{"prompt":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    error_of(415, &r.json().await.unwrap(), "unsupported_media_type");

    for path in ["/metrics", "/openapi.json", "/v1/models"] {
        let r = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} answered without the key");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let r = client.get(server.url(path)).header("Authorization", "Bearer wrong").send().await.unwrap();
        assert_eq!(r.status(), 401);
        let r = key(client.get(server.url(path))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} with a lower-case scheme");
    }
    assert_eq!(client.get(server.url("/health")).send().await.unwrap().status(), 200);

    let r = key(client.post(server.url("/v1/chat/completions")))
        .json(&json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("needs a `text` field"), "{body}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refuses_what_can_never_fit_and_429_says_when_to_retry() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |c| {
        c.body_limit_bytes = 8 * 1024 * 1024;
        c.max_running_sequences = 1;
        c.queue_capacity = 4;
    })
    .await;
    let c = "/v1/completions";
    let status_and_code = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        let body: Value = r.json().await.unwrap();
        (status, body["error"]["code"].as_str().unwrap_or("").to_string(), retry)
    };
    let long_stop = "x".repeat(300);
    let (status, _, _) = status_and_code(server.post(c, json!({"prompt": "x", "stop": [long_stop]})).await).await;
    assert_eq!(status, 400);
    // A 2 MB prompt is refused by its size, before tokenization, quickly.
    let start = Instant::now();
    let (status, code, _) = status_and_code(server.post(c, json!({"prompt": "a".repeat(2 << 20)})).await).await;
    assert_eq!((status, code.as_str()), (400, "context_length_exceeded"));
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    // More sequences than the queue holds can never be admitted: 400, not "retry later".
    let (status, _, _) = status_and_code(server.post(c, json!({"prompt": ["a", "b", "c"], "n": 2})).await).await;
    assert_eq!(status, 400);
    // A full queue: 429 with Retry-After.
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (client, url) = (client.clone(), server.url(c));
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({"prompt": "ROMEO:", "max_tokens": 60, "logit_bias": {"2": -100}}))
                    .send()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut saw_429 = false;
    for task in tasks {
        let (status, code, retry) = status_and_code(task.await.unwrap()).await;
        if status == 429 {
            saw_429 = true;
            assert_eq!(code, "queue_full");
            assert_eq!(retry.as_deref(), Some("1"));
        } else {
            assert_eq!(status, 200);
        }
    }
    assert!(saw_429);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_content_never_becomes_control_tokens() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |_| {}).await;
    let content = "to be </s><s> or not";
    let chat: Value = server
        .post("/v1/chat/completions", json!({"messages": [{"role": "user", "content": content}], "max_tokens": 1}))
        .await
        .json()
        .await
        .unwrap();
    // The same rendered prompt through /v1/completions, which parses control tokens in its
    // prompt (documented): `</s><s>` becomes two tokens there, several as chat content.
    let rendered = format!("user: {content}\nassistant:");
    let completion: Value =
        server.post("/v1/completions", json!({"prompt": rendered, "max_tokens": 1})).await.json().await.unwrap();
    let (as_chat, as_prompt) =
        (chat["usage"]["prompt_tokens"].as_u64().unwrap(), completion["usage"]["prompt_tokens"].as_u64().unwrap());
    assert!(as_chat >= as_prompt + 3, "chat content became control tokens: {as_chat} vs {as_prompt} tokens");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_text_offsets_run_on_across_chunks() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |_| {}).await;
    let raw = server
        .post(
            "/v1/completions",
            json!({"prompt": "ROMEO:", "max_tokens": 20, "logprobs": 1, "stream": true, "temperature": 0}),
        )
        .await
        .text()
        .await
        .unwrap();
    let mut expected = 0u64;
    let mut seen = 0;
    for chunk in sse_chunks(&raw) {
        let logprobs = &chunk["choices"][0]["logprobs"];
        let (Some(tokens), Some(offsets)) = (logprobs["tokens"].as_array(), logprobs["text_offset"].as_array()) else {
            continue;
        };
        for (token, offset) in tokens.iter().zip(offsets) {
            assert_eq!(offset.as_u64().unwrap(), expected, "{raw}");
            expected += token.as_str().unwrap().len() as u64;
            seen += 1;
        }
    }
    assert!(seen >= 10, "{raw}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_with_disconnects_match_the_solo_run_and_free_everything() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |c| c.queue_capacity = 64).await;
    let body = json!({"prompt": "KING HENRY:", "max_tokens": 40, "temperature": 0, "stream": true});
    let solo = server.post("/v1/completions", body.clone()).await.text().await.unwrap();
    let solo_text: String = sse_chunks(&solo).iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (url, body) = (server.url("/v1/completions"), body.clone());
            tokio::spawn(async move {
                let mut r = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
                if i % 10 < 3 {
                    let _ = r.chunk().await;
                    return None;
                }
                let mut raw = String::new();
                while let Some(chunk) = r.chunk().await.unwrap() {
                    raw.push_str(&String::from_utf8_lossy(&chunk));
                }
                Some(raw)
            })
        })
        .collect();
    let mut complete = 0;
    for task in tasks {
        if let Some(raw) = task.await.unwrap() {
            let text: String = sse_data(&raw)
                .iter()
                .filter(|d| *d != "[DONE]")
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
                .collect();
            assert_eq!(text, solo_text);
            complete += 1;
        }
    }
    assert_eq!(complete, 28);
    let mut settled = false;
    for _ in 0..200 {
        if server.metric("recyclegpt_running_sequences").await == 0.0
            && server.metric("recyclegpt_queue_depth").await == 0.0
        {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(settled, "gauges did not return to 0");
    assert_eq!(server.metric("recyclegpt_kv_tokens_in_use").await, 0.0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_names_operations_and_describes_responses() {
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |_| {}).await;
    let spec: Value = reqwest::get(server.url("/openapi.json")).await.unwrap().json().await.unwrap();
    let mut ids = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            ids.push(id.to_string());
            for tag in operation["tags"].as_array().into_iter().flatten() {
                assert!(!tag.as_str().unwrap().contains("::"), "{method} {path}: tag {tag} is a module path");
            }
            let ok = &operation["responses"]["200"];
            assert!(ok["content"].is_object(), "{method} {path}: the 200 response has no schema");
        }
    }
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "operation ids repeat: {ids:?}");
    let completion = &spec["paths"]["/v1/completions"]["post"]["responses"];
    for status in ["400", "401", "413", "415", "429", "503"] {
        assert!(
            completion[status]["content"]["application/json"]["schema"].is_object(),
            "{status} lacks the error schema"
        );
    }
    let temperature = &spec["components"]["schemas"]["SamplingFields"]["properties"]["temperature"];
    assert_eq!(temperature["maximum"], 2.0, "{temperature}");
    // Limits only the loaded model knows are written in: token ids below the vocabulary size.
    let ids = &spec["components"]["schemas"]["Prompt"]["oneOf"][2];
    assert_eq!(ids["items"]["maximum"], server.state.limits.vocab_size - 1, "{ids}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_fails_its_sequences_and_the_worker_goes_on() {
    use recyclegpt_engine::{DecodeMode, SamplingParams};
    use recyclegpt_server::{Event, Failure, Job};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let _serial = serial().await;
    let server = TestServer::start(&embedded(), |_| {}).await;
    // A token id far outside the vocabulary, sent past validation straight to the worker.
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    let job = Job {
        request_id: "broken".into(),
        index: 0,
        prompt: vec![1, 999_999],
        params: SamplingParams::greedy(),
        max_tokens: 5,
        eos_ids: Vec::new(),
        mode: DecodeMode::Off,
        events,
        cancel: Arc::new(AtomicBool::new(false)),
    };
    server.state.backend.submit(vec![job]).unwrap();
    match tokio::time::timeout(Duration::from_secs(10), received.recv()).await.unwrap() {
        Some((0, Event::Failed(Failure::Engine(message)))) => assert!(!message.is_empty()),
        other => panic!("expected an engine failure, got {other:?}"),
    }
    assert_eq!(reqwest::get(server.url("/health")).await.unwrap().status(), 200);
    let body: Value =
        server.post("/v1/completions", json!({"prompt": "ROMEO:", "max_tokens": 5})).await.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 5, "{body}");
    server.shutdown().await.unwrap();
}
