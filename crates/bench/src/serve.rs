//! `recyclegpt bench serve`: concurrent streaming clients against a running server; aggregate
//! generated tokens/s, time to first token and inter-token latency, per decode mode. Options:
//! a `response_format` on every request (what constrained decoding costs), and a multi-turn
//! chat (a long system prompt, then a second turn that repeats the first: what prefix caching
//! saves in time to first token).
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Sent as `response_format` with every request.
    pub response_format: Option<serde_json::Value>,
    /// Each request is a chat of two turns under a ~500-token system prompt: the second turn
    /// sends the first turn, its answer and a follow-up question.
    pub multi_turn: bool,
}

/// About 500 tokens of system prompt for the multi-turn scenario: what applications send on
/// every turn of a chat. Each conversation's differs from its first line on, so that its first
/// turn finds nothing cached and only its second turn can reuse a prefix.
fn system_prompt() -> String {
    static CONVERSATIONS: AtomicU64 = AtomicU64::new(0);
    const TOPICS: [&str; 8] = ["cooking", "gardening", "travel", "history", "music", "sport", "science", "health"];
    let id = CONVERSATIONS.fetch_add(1, Ordering::Relaxed);
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut text = format!("Conversation {id} of session {}.\n", started.as_micros());
    text.push_str("You are a helpful assistant. Follow these rules in every answer.\n");
    for k in 1..=32 {
        let topic = TOPICS[k % TOPICS.len()];
        text.push_str(&format!("Rule {k}: when asked about {topic}, answer briefly, politely and accurately.\n"));
    }
    text
}

#[derive(Debug, Clone, Serialize)]
pub struct ServeReport {
    /// Whose server answered: `recyclegpt`, or the name a peer was given (`bench report
    /// --peer`).
    pub server: String,
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
    /// Multi-turn: the second turns' median time to first token (`ttft_*` are the first turns').
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn2_ttft_p50_ms: Option<f64>,
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
    /// The streamed text (the answer a second turn repeats).
    text: String,
    /// Multi-turn: the second turn's time to first token.
    turn2_ttft: Option<Duration>,
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
    let chat = options.chat || options.multi_turn;
    let endpoint = if chat { "chat/completions" } else { "completions" };
    let url = format!("{}/v1/{endpoint}", options.url.trim_end_matches('/'));
    let mut body = serde_json::json!({
        "max_tokens": options.max_tokens, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true}, "recycle": mode,
    });
    if let Some(format) = &options.response_format {
        body["response_format"] = format.clone();
    }
    if !options.multi_turn {
        if chat {
            body["messages"] = serde_json::json!([{"role": "user", "content": options.prompt}]);
        } else {
            body["prompt"] = serde_json::json!(options.prompt);
        }
        return stream_once(client, options, &url, &body, chat).await;
    }
    let mut messages = serde_json::json!([
        {"role": "system", "content": system_prompt()},
        {"role": "user", "content": options.prompt},
    ]);
    body["messages"] = messages.clone();
    let mut first = stream_once(client, options, &url, &body, chat).await?;
    if let Some(turns) = messages.as_array_mut() {
        turns.push(serde_json::json!({"role": "assistant", "content": first.text}));
        turns.push(serde_json::json!({"role": "user", "content": "Thank you. Can you say more?"}));
    }
    body["messages"] = messages;
    let second = stream_once(client, options, &url, &body, chat).await?;
    first.turn2_ttft = second.ttft;
    Ok(first)
}

async fn stream_once(
    client: &reqwest::Client,
    options: &ServeOptions,
    url: &str,
    body: &serde_json::Value,
    chat: bool,
) -> Result<Sample, ServeBenchError> {
    let url = url.to_string();
    let mut request = client.post(&url).json(body);
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
            let text = if chat { &choice["delta"]["content"] } else { &choice["text"] };
            if let Some(text) = text.as_str().filter(|t| !t.is_empty()) {
                let at = start.elapsed();
                sample.ttft.get_or_insert(at);
                sample.last_text = Some(at);
                sample.text.push_str(text);
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
    let mut second_ttfts = Vec::new();
    for task in tasks {
        for result in task.await.unwrap_or_default() {
            match result {
                Ok(sample) => {
                    ttfts.extend(sample.ttft);
                    second_ttfts.extend(sample.turn2_ttft);
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
        server: "recyclegpt".to_string(),
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
        turn2_ttft_p50_ms: options.multi_turn.then(|| percentile_ms(&mut second_ttfts, 50.0)),
    }
}
