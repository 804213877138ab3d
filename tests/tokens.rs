//! Token endpoints (`/tokenize`, `/detokenize`, vLLM's shape) and log-probabilities of echoed
//! prompts, through the real server on 127.0.0.1: on the in-repo model (sentencepiece) and on
//! SmolLM2 (GGUF, byte-level BPE, where raw pieces such as `Ċ` must never reach a client).
mod common;

use common::server::{sse_chunks, TestServer};
use common::{random_module, smollm2};
use recyclegpt_model::{LoadOptions, LoadedModel};
use serde_json::{json, Value};
use std::path::PathBuf;

fn embedded() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare")
}

async fn json_of(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let response = server.post(path, body).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_counts_what_generation_counts_and_detokenize_inverts_it() {
    let server = TestServer::start(&embedded(), |_| {}).await;
    let text = "ROMEO:\nBut soft, what light";
    let (status, tokens) = json_of(&server, "/tokenize", json!({"prompt": text, "return_token_strs": true})).await;
    assert_eq!(status, 200, "{tokens}");
    let (_, completion) = json_of(&server, "/v1/completions", json!({"prompt": text, "max_tokens": 1})).await;
    assert_eq!(tokens["count"], completion["usage"]["prompt_tokens"]);
    assert_eq!(tokens["max_model_len"], common::embedded_context());
    let ids = tokens["tokens"].as_array().unwrap().clone();
    assert_eq!(tokens["token_strs"].as_array().unwrap().len(), ids.len());
    // Without special tokens, the BOS the tokenizer adds is gone.
    let (_, bare) = json_of(&server, "/tokenize", json!({"prompt": text, "add_special_tokens": false})).await;
    assert_eq!(bare["count"].as_u64().unwrap() + 1, tokens["count"].as_u64().unwrap());
    assert_eq!(bare["tokens"].as_array().unwrap()[..], ids[1..]);
    let (_, back) = json_of(&server, "/detokenize", json!({"tokens": ids})).await;
    assert_eq!(back["prompt"], text);
    // A chat counts what the chat endpoint counts.
    let messages = json!([{"role": "user", "content": "Who is there?"}]);
    let (_, chat_tokens) = json_of(&server, "/tokenize", json!({"messages": messages})).await;
    let (_, chat) = json_of(&server, "/v1/chat/completions", json!({"messages": messages, "max_tokens": 1})).await;
    assert_eq!(chat_tokens["count"], chat["usage"]["prompt_tokens"]);
    // Errors in OpenAI's shape.
    for (path, body) in [
        ("/detokenize", json!({"tokens": [1, 999_999]})),
        ("/tokenize", json!({})),
        ("/tokenize", json!({"prompt": "a", "messages": messages})),
    ] {
        let (status, error) = json_of(&server, path, body.clone()).await;
        assert_eq!(status, 400, "{body} → {error}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    let (status, _) = json_of(&server, "/tokenize", json!({"prompt": "a", "model": "another"})).await;
    assert_eq!(status, 404);
    server.shutdown().await.unwrap();
}

/// `echo` with `logprobs` scores the prompt: the first token `null`, and each later one the
/// log-probability the model gives it after the tokens before it (the same number generation
/// reports when it emits that token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_prompts_are_scored_token_by_token() {
    let server = TestServer::start(&embedded(), |c| c.prefill_chunk = 3).await;
    let prompt = "JULIET:\nO Romeo, Romeo";
    let (_, first) = json_of(
        &server,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 1}),
    )
    .await;
    let next = first["choices"][0]["logprobs"]["token_logprobs"][0].as_f64().unwrap();
    let (_, ids) = json_of(&server, "/tokenize", json!({"prompt": prompt})).await;
    let mut ids: Vec<Value> = ids["tokens"].as_array().unwrap().clone();
    // The generated token's id: the last of its text tokenized alone (the prompt and the text
    // tokenized together may merge differently; alone, a sentencepiece tokenizer puts its
    // word-start marker first).
    let text = first["choices"][0]["text"].as_str().unwrap();
    let (_, next_ids) = json_of(&server, "/tokenize", json!({"prompt": text, "add_special_tokens": false})).await;
    ids.push(next_ids["tokens"].as_array().unwrap().last().unwrap().clone());
    // The prompt is fed 3 tokens at a time: every chunk's rows are scored.
    let body = json!({"prompt": ids, "max_tokens": 2, "temperature": 0, "echo": true, "logprobs": 2});
    let (status, scored) = json_of(&server, "/v1/completions", body.clone()).await;
    assert_eq!(status, 200, "{scored}");
    let logprobs = &scored["choices"][0]["logprobs"];
    let values = logprobs["token_logprobs"].as_array().unwrap();
    assert_eq!(values.len(), ids.len() + 2, "every prompt token and both generated ones");
    assert!(values[0].is_null() && logprobs["top_logprobs"][0].is_null());
    for value in &values[1..] {
        assert!(value.as_f64().unwrap() <= 0.0, "{value}");
    }
    let last_prompt = values[ids.len() - 1].as_f64().unwrap();
    assert!((last_prompt - next).abs() < 1e-3, "scored {last_prompt}, generated {next}");
    assert_eq!(logprobs["tokens"].as_array().unwrap().len(), values.len());
    // Offsets run over the returned text, in order, the generated ones after the echo.
    let offsets: Vec<u64> = logprobs["text_offset"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
    let text = scored["choices"][0]["text"].as_str().unwrap();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]) && offsets[0] == 0, "{offsets:?}");
    assert!(*offsets.last().unwrap() < text.len() as u64, "{offsets:?} in {text:?}");
    // Streamed: the echo chunk carries the prompt's scores.
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let text = server.post("/v1/completions", streamed).await.text().await.unwrap();
    let chunks = sse_chunks(&text);
    let opening = &chunks[0]["choices"][0]["logprobs"]["token_logprobs"];
    assert_eq!(opening.as_array().unwrap()[..], values[..ids.len()]);
    server.shutdown().await.unwrap();
}

/// Byte-level BPE pieces are decoded: a newline is `"\n"` in `tokens`, `top_logprobs` keys and
/// `token_strs`, never the vocabulary's `Ċ`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_level_tokens_are_reported_as_text() {
    let Some(path) = smollm2() else { return };
    let loaded = LoadedModel::load(&path, &LoadOptions { recycle_init: random_module(1), ..LoadOptions::default() });
    let server = TestServer::start_loaded(&path, loaded.expect("SmolLM2 loads"), |c| c.served_model_name = None).await;
    let prompt = "Line one.\nLine two.\n\nLine";
    let (_, scored) = json_of(
        &server,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 4, "temperature": 0, "echo": true, "logprobs": 3}),
    )
    .await;
    let logprobs = &scored["choices"][0]["logprobs"];
    let tokens: Vec<&str> = logprobs["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(tokens.contains(&"\n") || tokens.contains(&"\n\n"), "{tokens:?}");
    let mut everything: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    for top in logprobs["top_logprobs"].as_array().unwrap().iter().filter_map(Value::as_object) {
        everything.extend(top.keys().cloned());
    }
    let (_, chat) = json_of(
        &server,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Write two short lines."}], "max_tokens": 24,
               "temperature": 0, "logprobs": true, "top_logprobs": 3}),
    )
    .await;
    for token in chat["choices"][0]["logprobs"]["content"].as_array().unwrap() {
        everything.push(token["token"].as_str().unwrap().to_string());
        assert_eq!(token["bytes"].as_array().unwrap().len(), token["token"].as_str().unwrap().len());
        everything
            .extend(token["top_logprobs"].as_array().unwrap().iter().map(|t| t["token"].as_str().unwrap().to_string()));
    }
    let (_, strs) = json_of(&server, "/tokenize", json!({"prompt": prompt, "return_token_strs": true})).await;
    everything.extend(strs["token_strs"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()));
    for piece in ["Ċ", "Ġ"] {
        assert!(!everything.iter().any(|t| t.contains(piece)), "a raw piece {piece} in {everything:?}");
    }
    server.shutdown().await.unwrap();
}
