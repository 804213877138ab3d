//! `recyclegpt bench serve`: concurrent streaming clients against a running server; aggregate
//! generated tokens/s, time to first token and inter-token latency, per decode mode.
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub url: String,
    pub clients: usize,
    pub requests: usize,
    pub max_tokens: usize,
    pub prompt: String,
    /// Send the prompt as one user message to `/v1/chat/completions` (the model's chat
    /// template applies) instead of as raw text to `/v1/completions`.
    pub chat: bool,
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServeReport {
    pub mode: String,
    pub clients: usize,
    pub requests: usize,
    pub failed: usize,
    pub generated_tokens: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub itl_p50_ms: f64,
    pub itl_p99_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeBenchError {
    #[error("request to {0} failed: {1}")]
    Http(String, String),
}

/// Timings of one streamed request.
#[derive(Default)]
struct Sample {
    ttft: Option<Duration>,
    last_text: Option<Duration>,
    tokens: usize,
}

impl Sample {
    /// Mean time between tokens after the first (several events can arrive in one read, so
    /// per-event gaps would mostly measure the network stack).
    fn inter_token(&self) -> Option<Duration> {
        let (first, last) = (self.ttft?, self.last_text?);
        (self.tokens > 1).then(|| (last - first) / (self.tokens as u32 - 1))
    }
}

async fn one_request(client: &reqwest::Client, options: &ServeOptions, mode: &str) -> Result<Sample, ServeBenchError> {
    let endpoint = if options.chat { "chat/completions" } else { "completions" };
    let url = format!("{}/v1/{endpoint}", options.url.trim_end_matches('/'));
    let mut body = serde_json::json!({
        "max_tokens": options.max_tokens, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true}, "recycle": mode,
    });
    if options.chat {
        body["messages"] = serde_json::json!([{"role": "user", "content": options.prompt}]);
    } else {
        body["prompt"] = serde_json::json!(options.prompt);
    }
    let mut request = client.post(&url).json(&body);
    if let Some(key) = &options.api_key {
        request = request.bearer_auth(key);
    }
    let start = Instant::now();
    let fail = |e: String| ServeBenchError::Http(url.clone(), e);
    let mut response = request.send().await.map_err(|e| fail(e.to_string()))?;
    if !response.status().is_success() {
        return Err(fail(format!("status {}", response.status())));
    }
    let mut sample = Sample::default();
    let mut buffer = String::new();
    while let Some(bytes) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
        buffer.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
            if data == "[DONE]" {
                continue;
            }
            let chunk: serde_json::Value = serde_json::from_str(data).map_err(|e| fail(e.to_string()))?;
            if let Some(tokens) = chunk["usage"]["completion_tokens"].as_u64() {
                sample.tokens = tokens as usize;
            }
            let choice = &chunk["choices"][0];
            let text = if options.chat { &choice["delta"]["content"] } else { &choice["text"] };
            if text.as_str().is_some_and(|t| !t.is_empty()) {
                let at = start.elapsed();
                sample.ttft.get_or_insert(at);
                sample.last_text = Some(at);
            }
        }
    }
    Ok(sample)
}

fn percentile_ms(values: &mut [Duration], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort();
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)].as_secs_f64() * 1e3
}

/// `requests` requests spread over `clients` concurrent clients, all in `mode`.
pub async fn run(options: &ServeOptions, mode: &str) -> ServeReport {
    // A fresh connection per request, as a chat client behind a proxy makes them: a pooled
    // connection that the server closed in between would otherwise fail the next request.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap_or_default();
    let clients = options.clients.max(1);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, options, mode) = (client.clone(), options.clone(), mode.to_string());
            let count = options.requests / clients + usize::from(c < options.requests % clients);
            tokio::spawn(async move {
                let mut results = Vec::with_capacity(count);
                for _ in 0..count {
                    results.push(one_request(&client, &options, &mode).await);
                }
                results
            })
        })
        .collect();
    let (mut ttfts, mut gaps, mut tokens, mut failed) = (Vec::new(), Vec::new(), 0, 0);
    for task in tasks {
        for result in task.await.unwrap_or_default() {
            match result {
                Ok(sample) => {
                    ttfts.extend(sample.ttft);
                    gaps.extend(sample.inter_token());
                    tokens += sample.tokens;
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    failed += 1;
                }
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    ServeReport {
        mode: mode.to_string(),
        clients,
        requests: options.requests,
        failed,
        generated_tokens: tokens,
        seconds,
        tokens_per_second: tokens as f64 / seconds,
        ttft_p50_ms: percentile_ms(&mut ttfts, 50.0),
        ttft_p99_ms: percentile_ms(&mut ttfts, 99.0),
        itl_p50_ms: percentile_ms(&mut gaps, 50.0),
        itl_p99_ms: percentile_ms(&mut gaps, 99.0),
    }
}
