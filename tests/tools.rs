//! Tool calling through the real server on 127.0.0.1: forced calls (`required`, a named
//! function) are always valid calls in every decode mode, streams carry them as OpenAI's
//! deltas with no argument text lost, a call → result → answer round trip works, and bad tool
//! requests get 400s that name the field. On SmolLM2 (GGUF) with its module; the refusals also
//! on the in-repo model.
mod common;

use common::server::{sse_chunks, TestServer};
use common::smollm2;
use recyclegpt_model::{LoadOptions, LoadedModel, RecycleInit};
use serde_json::{json, Value};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "description": "The local time in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                "required": ["city"], "additionalProperties": false}}}
    ])
}

fn ask(mode: &str, choice: Value) -> Value {
    json!({"messages": [{"role": "user", "content": "What is the weather in Paris?"}], "tools": weather_tools(),
           "tool_choice": choice, "max_tokens": 60, "temperature": 0, "recycle": mode, "parallel_tool_calls": false})
}

fn check_weather_call(call: &Value) -> Value {
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments["city"].is_string(), "{arguments}");
    assert!(["celsius", "fahrenheit"].contains(&arguments["unit"].as_str().unwrap()), "{arguments}");
    arguments
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_calls_are_valid_in_every_mode_streamed_or_not_and_round_trip() {
    let Some(path) = smollm2() else { return };
    let module = root().join("models/smollm2-135m-instruct-recycle");
    let options = LoadOptions { recycle_init: RecycleInit::FromDir(module), ..LoadOptions::default() };
    let loaded = LoadedModel::load(&path, &options).expect("SmolLM2 loads");
    let server = TestServer::start_loaded(&path, loaded, |c| c.served_model_name = None).await;
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    let mut arguments = Vec::new();
    for mode in ["off", "verify", "auto", "alternate"] {
        let body: Value = server.post("/v1/chat/completions", ask(mode, named.clone())).await.json().await.unwrap();
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{mode}: {body}");
        assert!(choice["message"]["content"].is_null(), "{body}");
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1);
        arguments.push(check_weather_call(&calls[0]));
    }
    assert_eq!(arguments[1], arguments[0], "verify calls as off does");
    assert_eq!(arguments[2], arguments[0], "auto calls as off does");

    // `required`, streamed: the call's id and name come first, then its arguments in pieces
    // that add up to what the whole response holds.
    let whole: Value =
        server.post("/v1/chat/completions", ask("verify", json!("required"))).await.json().await.unwrap();
    let expected =
        whole["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap().to_string();
    let mut streamed = ask("verify", json!("required"));
    streamed["stream"] = json!(true);
    let text = server.post("/v1/chat/completions", streamed).await.text().await.unwrap();
    let deltas: Vec<Value> = sse_chunks(&text)
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().map(|d| d[0].clone()))
        .collect();
    assert!(deltas.len() >= 2, "{text}");
    assert_eq!(deltas[0]["function"]["name"], whole["choices"][0]["message"]["tool_calls"][0]["function"]["name"]);
    assert!(deltas[0]["id"].as_str().unwrap().starts_with("call_") && deltas[0]["type"] == "function");
    assert!(deltas[1..].iter().all(|d| d["id"].is_null() && d["index"] == 0));
    let joined: String = deltas.iter().filter_map(|d| d["function"]["arguments"].as_str()).collect();
    assert_eq!(joined, expected, "no argument text lost");
    let chunks = sse_chunks(&text);
    let finishes: Vec<&Value> =
        chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finishes, [&json!("tool_calls")]);
    let contents: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(!contents.contains("tool_call"), "no call text leaks into content: {contents:?}");

    // The round trip: the call, its result, and an answer that uses it.
    let call = whole["choices"][0]["message"]["tool_calls"][0].clone();
    let follow_up = json!({"messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "{\"temperature\": 21, \"sky\": \"sunny\"}"}],
        "tools": weather_tools(), "max_tokens": 40, "temperature": 0});
    for stream in [false, true] {
        let mut request = follow_up.clone();
        request["stream"] = json!(stream);
        let response = server.post("/v1/chat/completions", request).await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let answer: String = if stream {
            sse_chunks(&text)
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(String::from))
                .collect()
        } else {
            let body: Value = serde_json::from_str(&text).unwrap();
            body["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string()
        };
        assert!(!answer.trim().is_empty(), "an answer after the tool result (stream {stream}): {text}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tool_requests_are_refused_with_the_field_named() {
    let server = TestServer::start(&root().join("models/shakespeare"), |_| {}).await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            json!({"tools": weather_tools(), "tool_choice": {"type": "function", "function": {"name": "launch"}}}),
            "tool_choice",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (json!({"tools": weather_tools(), "tool_choice": "sometimes"}), "tool_choice"),
        (json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]}), "tools"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}], "tool_choice": "required"}),
            "tools",
        ),
        // Under `auto` too, though no grammar constrains the answer (it used to pass).
        (json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]}), "tools"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]}),
            "tools",
        ),
        (
            json!({"tools": weather_tools(), "tool_choice": "required", "response_format": {"type": "json_object"}}),
            "response_format",
        ),
    ];
    for (extra, param) in cases {
        let mut body = json!({"messages": messages, "max_tokens": 4});
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        let response = server.post("/v1/chat/completions", body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
    }
    server.shutdown().await.unwrap();
}

/// The Responses API's function calls: a forced call comes back as a `function_call` item,
/// streamed as its events, and its output continues the conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_calls_functions_whole_and_streamed() {
    let Some(path) = smollm2() else { return };
    let loaded = LoadedModel::load(&path, &LoadOptions::default()).expect("SmolLM2 loads");
    let server = TestServer::start_loaded(&path, loaded, |c| c.served_model_name = None).await;
    let tools: Vec<Value> = weather_tools()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let mut flat = t["function"].clone();
            flat["type"] = json!("function");
            flat
        })
        .collect();
    let request = json!({"input": "What is the weather in Paris?", "tools": tools, "temperature": 0,
        "tool_choice": {"type": "function", "name": "get_weather"}});
    let whole: Value = server.post("/v1/responses", request.clone()).await.json().await.unwrap();
    assert_eq!(whole["status"], "completed", "{whole}");
    let item = &whole["output"][0];
    assert_eq!((item["type"].as_str(), item["status"].as_str()), (Some("function_call"), Some("completed")));
    assert!(item["call_id"].as_str().unwrap().starts_with("call_") && item["id"].as_str().unwrap().starts_with("fc_"));
    let arguments = check_weather_call(&json!({"type": "function", "id": item["call_id"],
        "function": {"name": item["name"], "arguments": item["arguments"]}}));
    assert_eq!(whole["tools"].as_array().unwrap().len(), 2);

    let mut streamed = request;
    streamed["stream"] = json!(true);
    let body = server.post("/v1/responses", streamed).await.text().await.unwrap();
    let events: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[..3], ["response.created", "response.in_progress", "response.output_item.added"]);
    assert_eq!(
        kinds[kinds.len() - 3..],
        ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    );
    let pieces: String = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&pieces).unwrap(), arguments, "no argument text lost");
    assert!(!kinds.contains(&"response.output_text.delta"), "no call text as message text: {kinds:?}");

    let follow_up = json!({"input": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"type": "function_call", "call_id": item["call_id"], "name": "get_weather", "arguments": item["arguments"]},
            {"type": "function_call_output", "call_id": item["call_id"], "output": "{\"temperature\": 21}"}],
        "tools": tools, "max_output_tokens": 30, "temperature": 0});
    let answer: Value = server.post("/v1/responses", follow_up).await.json().await.unwrap();
    assert_eq!(answer["output"][0]["type"], "message", "{answer}");
    server.shutdown().await.unwrap();
}
