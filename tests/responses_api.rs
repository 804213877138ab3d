//! `POST /v1/responses` (stateless) through the real server on 127.0.0.1 with the in-repo model:
//! the `response` object, the typed stream events in their order, `text.format` constraining
//! the output, and the refusals (`store`, `previous_response_id`, bad tools and items). Function
//! calls on this endpoint are tested on SmolLM2 in `tools.rs`.
mod common;

use common::server::TestServer;
use serde_json::{json, Value};
use std::path::PathBuf;

fn embedded() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare")
}

/// Each SSE event's name and JSON data.
fn events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ").or_else(|| line.strip_prefix("event:")) {
                    name = Some(v.trim().to_string());
                }
                if let Some(v) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                    data = serde_json::from_str(v.trim()).ok();
                }
            }
            Some((name?, data?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_whole_and_streamed() {
    let server = TestServer::start(&embedded(), |_| {}).await;
    let request = json!({"input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Who comes here?"}]}],
        "instructions": "Speak as a guard.", "max_output_tokens": 24, "temperature": 0, "metadata": {"case": "1"}});
    let response = server.post("/v1/responses", request.clone()).await;
    assert_eq!(response.status(), 200);
    let whole: Value = response.json().await.unwrap();
    assert_eq!(whole["object"], "response");
    assert!(whole["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(whole["status"], "incomplete", "24 tokens run out: {whole}");
    assert_eq!(whole["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(whole["metadata"]["case"], "1");
    assert_eq!(whole["store"], false);
    let message = &whole["output"][0];
    assert_eq!((message["type"].as_str(), message["role"].as_str()), (Some("message"), Some("assistant")));
    let text = message["content"][0]["text"].as_str().unwrap();
    assert_eq!(message["content"][0]["type"], "output_text");
    assert!(!text.is_empty());
    assert_eq!(whole["usage"]["output_tokens"], 24);
    assert_eq!(whole["usage"]["total_tokens"].as_u64(), Some(whole["usage"]["input_tokens"].as_u64().unwrap() + 24));

    // The stream: the API's events in order, numbered, whose deltas add up to the same text.
    let mut streamed = request;
    streamed["stream"] = json!(true);
    let body = server.post("/v1/responses", streamed).await.text().await.unwrap();
    let events = events(&body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let deltas = names.iter().filter(|n| **n == "response.output_text.delta").count();
    let expected_head =
        ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"];
    let expected_tail =
        ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.incomplete"];
    assert_eq!(names[..4], expected_head);
    assert_eq!(names[names.len() - 4..], expected_tail);
    assert_eq!(names.len(), 8 + deltas);
    for (k, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str());
        assert_eq!(data["sequence_number"], k);
    }
    let joined: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(joined, text);
    let last = &events.last().unwrap().1["response"];
    assert_eq!(last["output"][0]["content"][0]["text"], text);
    assert_eq!(last["usage"]["output_tokens"], 24);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_format_constrains_and_unsupported_fields_are_refused() {
    let server = TestServer::start(&embedded(), |_| {}).await;
    let schema = json!({"type": "object", "properties": {"verdict": {"enum": ["guilty", "free"]}},
        "required": ["verdict"], "additionalProperties": false});
    let body: Value = server
        .post(
            "/v1/responses",
            json!({"input": "Judge him.", "temperature": 0, "max_output_tokens": 80,
            "text": {"format": {"type": "json_schema", "name": "verdict", "schema": schema, "strict": true}}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "completed", "{body}");
    let answer: Value = serde_json::from_str(body["output"][0]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert!(["guilty", "free"].contains(&answer["verdict"].as_str().unwrap()), "{answer}");
    assert_eq!(body["text"]["format"]["type"], "json_schema");

    for (request, param) in [
        (json!({"input": "hi", "store": true}), "store"),
        (json!({"input": "hi", "previous_response_id": "resp_1"}), "previous_response_id"),
        (
            json!({"input": "hi", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}}),
            "tool_choice",
        ),
        (json!({"input": "hi", "tools": [{"type": "function", "name": "bad name"}]}), "tools"),
        (json!({"input": "hi", "max_output_tokens": 0}), "max_output_tokens"),
        (json!({"input": []}), "input"),
        (json!({"input": [{"type": "reasoning", "summary": []}]}), "input"),
        (json!({"input": [{"type": "function_call_output", "output": "1"}]}), "input"),
        (
            json!({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 3}}}}),
            "response_format",
        ),
    ] {
        let response = server.post("/v1/responses", request.clone()).await;
        assert_eq!(response.status(), 400, "{request}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{request}: {error}");
    }
    server.shutdown().await.unwrap();
}
