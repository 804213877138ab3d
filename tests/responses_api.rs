//! OpenAI's Responses API through the real server on 127.0.0.1 with the in-repo model: the
//! `response` object, the typed stream events in their order, `text.format` constraining the
//! output, the refusals (bad tools and items), and stored responses (continued with
//! `previous_response_id` as the whole conversation would run, read back, deleted, bounded and
//! expiring). Function calls on this endpoint are tested on SmolLM2 in `tools.rs`.
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

async fn get(server: &TestServer, id: &str) -> reqwest::Response {
    reqwest::get(server.url(&format!("/v1/responses/{id}"))).await.unwrap()
}

async fn delete(server: &TestServer, id: &str) -> reqwest::Response {
    reqwest::Client::new().delete(server.url(&format!("/v1/responses/{id}"))).send().await.unwrap()
}

/// A 404 in OpenAI's shape for a response the store does not hold.
async fn assert_not_found(response: reqwest::Response, param: Option<&str>) {
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "response_not_found", "{error}");
    assert_eq!(error["error"]["param"].as_str(), param, "{error}");
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
    assert_eq!(whole["store"], true, "stored by default, as in OpenAI's API");
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
    // Both were stored, as they were returned.
    for body in [&whole, last] {
        let read = get(&server, body["id"].as_str().unwrap()).await;
        assert_eq!(read.status(), 200);
        let read: Value = read.json().await.unwrap();
        assert_eq!((&read["id"], &read["output"], &read["usage"]), (&body["id"], &body["output"], &body["usage"]));
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_response_continues_reads_back_and_is_deleted() {
    let server = TestServer::start(&embedded(), |_| {}).await;
    let ask = |input: Value, extra: Value| {
        let mut request =
            json!({"input": input, "instructions": "Answer as a king.", "max_output_tokens": 12, "temperature": 0});
        request.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        request
    };
    let first: Value =
        server.post("/v1/responses", ask(json!("My name is Hamlet."), json!({}))).await.json().await.unwrap();
    let id = first["id"].as_str().unwrap();
    let answer = first["output"][0]["content"][0]["text"].as_str().unwrap();
    let next: Value = server
        .post("/v1/responses", ask(json!("What is my name?"), json!({"previous_response_id": id})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(next["previous_response_id"], id);
    // The same as sending the whole conversation: the same prompt, the same greedy answer.
    let turn = |role: &str, kind: &str, text: &str| json!({"type": "message", "role": role, "content": [{"type": kind, "text": text}]});
    let whole = json!([
        turn("user", "input_text", "My name is Hamlet."),
        turn("assistant", "output_text", answer),
        turn("user", "input_text", "What is my name?")
    ]);
    let sent: Value = server.post("/v1/responses", ask(whole, json!({"store": false}))).await.json().await.unwrap();
    assert_eq!(next["usage"]["input_tokens"], sent["usage"]["input_tokens"], "{next} / {sent}");
    assert_eq!(next["output"][0]["content"], sent["output"][0]["content"]);
    assert!(next["usage"]["input_tokens"].as_u64() > first["usage"]["input_tokens"].as_u64());
    assert_eq!(sent["store"], false);
    assert_not_found(get(&server, sent["id"].as_str().unwrap()).await, None).await;

    let read: Value = get(&server, id).await.json().await.unwrap();
    assert_eq!(read["output"], first["output"]);
    let deleted = delete(&server, id).await;
    assert_eq!(deleted.status(), 200);
    let deleted: Value = deleted.json().await.unwrap();
    assert_eq!(deleted, json!({"id": id, "object": "response.deleted", "deleted": true}));
    assert_not_found(get(&server, id).await, None).await;
    assert_not_found(delete(&server, id).await, None).await;
    let after = server.post("/v1/responses", ask(json!("And now?"), json!({"previous_response_id": id}))).await;
    assert_not_found(after, Some("previous_response_id")).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_bounded_and_responses_expire() {
    let server = TestServer::start(&embedded(), |c| {
        c.response_store_max_responses = 2;
        c.response_store_ttl_seconds = 1.0;
    })
    .await;
    let mut ids = Vec::new();
    for question in ["Who is there?", "Who goes?", "Who speaks?"] {
        let body: Value = server
            .post("/v1/responses", json!({"input": question, "max_output_tokens": 4}))
            .await
            .json()
            .await
            .unwrap();
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    assert_not_found(get(&server, &ids[0]).await, None).await;
    for id in &ids[1..] {
        assert_eq!(get(&server, id).await.status(), 200, "the two most recent are kept");
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for id in &ids[1..] {
        assert_not_found(get(&server, id).await, None).await;
    }
    server.shutdown().await.unwrap();
}
