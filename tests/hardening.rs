//! The hostile-but-honest client probes of connections and the worker, on the in-repo model
//! (no ../shared needed): stalled and half-open connections, shutdown phases, many streams
//! with disconnects, a failing engine step. Every test serves over real HTTP on 127.0.0.1.
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
        constraint: None,
        events,
        cancel: Arc::new(AtomicBool::new(false)),
        arrived: std::time::Instant::now(),
        span: tracing::Span::none(),
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
