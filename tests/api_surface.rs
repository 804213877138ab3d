//! The API surface against a hostile-but-honest client, on the in-repo model (no ../shared
//! needed): text that must survive, admission limits, authentication, media types, error
//! shapes and the OpenAPI document. Every test serves over real HTTP on 127.0.0.1.
mod common;

use common::server::{sse_chunks, TestServer};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
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
