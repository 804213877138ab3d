//! Anthropic's Messages API through the real server on 127.0.0.1, in the wire format of
//! Anthropic's SDKs (`x-api-key`, `anthropic-version`): the `message` whole and streamed (the
//! events in Anthropic's order, their text equal to the whole answer), `stop_sequences` and the
//! `max_tokens` ending, `count_tokens`, and errors in Anthropic's shape on the in-repo model;
//! forced tool use, its streamed `input_json_delta`, and a `tool_result` round trip on SmolLM2
//! with its module.
mod common;

use common::server::TestServer;
use common::smollm2;
use recyclegpt_model::{LoadOptions, LoadedModel, RecycleInit};
use serde_json::{json, Value};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const KEY: &str = "sk-ant-test";

/// A request as Anthropic's SDK sends it.
async fn send(server: &TestServer, path: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.url(path))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Each SSE event's name and JSON data; each event's `type` is its name.
fn events(body: &str) -> Vec<(String, Value)> {
    let events: Vec<(String, Value)> = body
        .split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event: "))?.to_string();
            let data = serde_json::from_str(block.lines().find_map(|l| l.strip_prefix("data: "))?).ok()?;
            Some((name, data))
        })
        .collect();
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str(), "{data}");
    }
    events
}

/// The text blocks' deltas joined, and each tool block's `input_json_delta` pieces joined.
fn streamed_content(events: &[(String, Value)]) -> (String, Vec<String>) {
    let (mut text, mut inputs) = (String::new(), Vec::new());
    for (name, data) in events {
        match (name.as_str(), data["delta"]["type"].as_str(), data["content_block"]["type"].as_str()) {
            ("content_block_delta", Some("text_delta"), _) => text.push_str(data["delta"]["text"].as_str().unwrap()),
            ("content_block_start", _, Some("tool_use")) => inputs.push(String::new()),
            ("content_block_delta", Some("input_json_delta"), _) => {
                inputs.last_mut().unwrap().push_str(data["delta"]["partial_json"].as_str().unwrap())
            }
            _ => {}
        }
    }
    (text, inputs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whole_streamed_stopped_and_counted() {
    let server = TestServer::start(&root().join("models/shakespeare"), |c| c.api_key = Some(KEY.into())).await;
    let request = json!({"model": "claude-sonnet-4-5", "max_tokens": 24, "system": [{"type": "text", "text": "Speak as a guard."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Who comes here?"}]}], "temperature": 0,
        "metadata": {"user_id": "u-1"}});
    let response = send(&server, "/v1/messages", &request).await;
    assert_eq!(response.status(), 200);
    let whole: Value = response.json().await.unwrap();
    assert_eq!((whole["type"].as_str(), whole["role"].as_str()), (Some("message"), Some("assistant")), "{whole}");
    assert!(whole["id"].as_str().unwrap().starts_with("msg_"));
    let text = whole["content"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(whole["content"][0]["type"], "text");
    let output_tokens = whole["usage"]["output_tokens"].as_u64().unwrap();
    let ended = if output_tokens == 24 { "max_tokens" } else { "end_turn" };
    assert_eq!(whole["stop_reason"], ended, "{whole}");
    assert!(whole["stop_sequence"].is_null());

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let events = events(&send(&server, "/v1/messages", &streamed).await.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..3], ["message_start", "ping", "content_block_start"], "{names:?}");
    assert_eq!(names[names.len() - 3..], ["content_block_stop", "message_delta", "message_stop"], "{names:?}");
    assert!(names[3..names.len() - 3].iter().all(|n| *n == "content_block_delta"), "{names:?}");
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], whole["usage"]["input_tokens"]);
    assert_eq!(streamed_content(&events).0, text, "the deltas add up to the whole answer");
    let delta = &events[events.len() - 2].1;
    assert_eq!(
        (&delta["delta"]["stop_reason"], &delta["usage"]["output_tokens"]),
        (&whole["stop_reason"], &whole["usage"]["output_tokens"])
    );

    // A stop sequence from inside the answer ends it there, and says which.
    let words: Vec<&str> = text.split_whitespace().collect();
    let stop = words[words.len() / 2].to_string();
    let mut stopped = request.clone();
    stopped["stop_sequences"] = json!(["never-in-this-text", stop]);
    let body: Value = send(&server, "/v1/messages", &stopped).await.json().await.unwrap();
    assert_eq!(
        (body["stop_reason"].as_str(), body["stop_sequence"].as_str()),
        (Some("stop_sequence"), Some(stop.as_str())),
        "{body}"
    );
    assert_eq!(body["content"][0]["text"].as_str().unwrap(), &text[..text.find(&stop).unwrap()]);

    let counted: Value = send(&server, "/v1/messages/count_tokens", &request).await.json().await.unwrap();
    assert_eq!(counted, json!({"input_tokens": whole["usage"]["input_tokens"]}));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_in_anthropics_shape() {
    let server = TestServer::start(&root().join("models/shakespeare"), |c| c.api_key = Some(KEY.into())).await;
    let hello = json!([{"role": "user", "content": "Hello"}]);
    let image = json!([{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}]}]);
    for (body, status, kind, says) in [
        (json!({"messages": hello}), 400, "invalid_request_error", "max_tokens"),
        (json!({"messages": image, "max_tokens": 5}), 400, "invalid_request_error", "image"),
        (
            json!({"messages": [{"role": "system", "content": "x"}], "max_tokens": 5}),
            400,
            "invalid_request_error",
            "role",
        ),
        (
            json!({"messages": hello, "max_tokens": 5, "tool_choice": {"type": "tool"}}),
            400,
            "invalid_request_error",
            "name",
        ),
    ] {
        let response = send(&server, "/v1/messages", &body).await;
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!((error["type"].as_str(), error["error"]["type"].as_str()), (Some("error"), Some(kind)), "{error}");
        assert!(error["error"]["message"].as_str().unwrap().contains(says), "{error}");
    }
    let client = reqwest::Client::new();
    let unkeyed = client
        .post(server.url("/v1/messages"))
        .json(&json!({"messages": hello, "max_tokens": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(unkeyed.status(), 401);
    let error: Value = unkeyed.json().await.unwrap();
    assert_eq!(error["error"]["type"], "authentication_error", "{error}");
    let bearer = client
        .post(server.url("/v1/messages"))
        .bearer_auth(KEY)
        .json(&json!({"messages": hello, "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200, "the OpenAI clients' header works too");
    let wrong_method = client.get(server.url("/v1/messages")).header("x-api-key", KEY).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.json::<Value>().await.unwrap()["type"], "error");
    // The OpenAI routes keep OpenAI's shape.
    let openai = client
        .post(server.url("/v1/chat/completions"))
        .header("x-api-key", KEY)
        .json(&json!({"messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(openai.status(), 400);
    assert!(openai.json::<Value>().await.unwrap()["error"]["param"].is_string());
    server.shutdown().await.unwrap();
}

fn weather_tool() -> Value {
    json!([{"name": "get_weather", "description": "The weather in a city now",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
            "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"], "additionalProperties": false}}])
}

fn check_input(input: &Value) {
    assert!(input["city"].is_string(), "{input}");
    assert!(["celsius", "fahrenheit"].contains(&input["unit"].as_str().unwrap()), "{input}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_tool_use_streams_and_a_tool_result_comes_back() {
    let Some(path) = smollm2() else { return };
    let module = root().join("models/smollm2-135m-instruct-recycle");
    let options = LoadOptions { recycle_init: RecycleInit::FromDir(module), ..LoadOptions::default() };
    let loaded = LoadedModel::load(&path, &options).expect("SmolLM2 loads");
    let server = TestServer::start_loaded(&path, loaded, |c| c.api_key = Some(KEY.into())).await;
    let question = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    let request = json!({"model": "claude-haiku-4-5", "max_tokens": 60, "messages": question, "tools": weather_tool(),
        "tool_choice": {"type": "tool", "name": "get_weather"}, "temperature": 0});
    let body: Value = send(&server, "/v1/messages", &request).await.json().await.unwrap();
    assert_eq!(body["stop_reason"], "tool_use", "{body}");
    let call = body["content"].as_array().unwrap().iter().find(|b| b["type"] == "tool_use").unwrap().clone();
    assert_eq!(call["name"], "get_weather");
    assert!(call["id"].as_str().unwrap().starts_with("toolu_"));
    check_input(&call["input"]);
    assert!(body["recycle"]["accepted"].is_u64(), "recycling on: {body}");

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let events = events(&send(&server, "/v1/messages", &streamed).await.text().await.unwrap());
    let (_, inputs) = streamed_content(&events);
    assert_eq!(inputs.len(), 1, "{events:?}");
    let input: Value = serde_json::from_str(&inputs[0]).unwrap();
    assert_eq!(input, call["input"], "the streamed input is the whole answer's");
    assert_eq!(events[events.len() - 2].1["delta"]["stop_reason"], "tool_use");

    // The result goes back as a tool_result block; the model answers in text.
    let round = json!({"max_tokens": 40, "temperature": 0, "tools": weather_tool(), "messages": [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": [{"type": "text", "text": "18 degrees and sunny"}]}]}]});
    let answer: Value = send(&server, "/v1/messages", &round).await.json().await.unwrap();
    assert_eq!(answer["content"][0]["type"], "text", "{answer}");
    assert!(!answer["content"][0]["text"].as_str().unwrap().is_empty(), "{answer}");
    let counted: Value = send(&server, "/v1/messages/count_tokens", &round).await.json().await.unwrap();
    assert_eq!(counted["input_tokens"], answer["usage"]["input_tokens"]);
    server.shutdown().await.unwrap();
}
