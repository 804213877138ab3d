//! A real server on 127.0.0.1 (port 0) in this process, and a small SSE client.
use super::{load, random_module};
use recyclegpt_server::{AppState, LoopbackServer, ServerConfig};
use std::path::Path;
use std::sync::Arc;

pub struct TestServer {
    pub base: String,
    pub state: Arc<AppState>,
    server: LoopbackServer,
}

impl TestServer {
    /// Serves `model_dir` with a random module (seed 1).
    pub async fn start(model_dir: &Path, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start_loaded(model_dir, load(model_dir, random_module(1)), tweak).await
    }

    /// Serves a model already loaded from `model_dir`.
    pub async fn start_loaded(
        model_dir: &Path,
        loaded: recyclegpt_model::LoadedModel,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let mut config = ServerConfig {
            model: model_dir.to_path_buf(),
            served_model_name: Some("stories".into()),
            port: 0,
            shutdown_delay_seconds: 0.0,
            ..ServerConfig::default()
        };
        tweak(&mut config);
        let state = AppState::start(config.validated().expect("a valid configuration"), loaded).expect("server state");
        let server = LoopbackServer::start(state.clone()).await.expect("bind 127.0.0.1");
        Self { base: format!("http://{}", server.address), state, server }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends the shutdown signal and waits for the server to return.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.server.stop().await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        reqwest::Client::new().post(self.url(path)).json(&body).send().await.expect("request")
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.url("/metrics")).await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| {
                let mut parts = l.split_whitespace();
                (parts.next() == Some(name)).then(|| parts.next()).flatten()
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// Parses a `text/event-stream` body into its `data:` payloads, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter(|l| !l.starts_with(':'))
                .filter_map(|l| l.strip_prefix("data:").map(|d| d.strip_prefix(' ').unwrap_or(d)))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// The JSON payloads of a stream, in order (`[DONE]`, which OpenAI's chat and completions
/// streams end with, left out): for streams of any dialect.
pub fn sse_json(body: &str) -> Vec<serde_json::Value> {
    sse_data(body)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("event {d:?} is not JSON: {e}")))
        .collect()
}

/// The JSON chunks of a stream, asserting it ends with `[DONE]`.
pub fn sse_chunks(body: &str) -> Vec<serde_json::Value> {
    let data = sse_data(body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "stream must end with [DONE]: {body}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk {d:?} is not JSON: {e}")))
        .collect()
}
