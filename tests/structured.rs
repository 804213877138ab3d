//! Structured outputs through the real server on 127.0.0.1: `response_format` on chat and
//! completions, in every decode mode, on the in-repo model and on SmolLM2 (GGUF). Every output
//! is checked with an independent JSON Schema validator.
mod common;

use common::server::{sse_chunks, TestServer};
use common::smollm2;
use recyclegpt_model::{LoadOptions, LoadedModel, RecycleInit};
use serde_json::{json, Value};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn validate(schema: &Value, text: &str) -> Value {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let validator = jsonschema::validator_for(schema).expect("the test's schema is valid");
    if let Err(error) = validator.validate(&value) {
        panic!("{text} does not fit {schema}: {error}");
    }
    value
}

fn schema_format(name: &str, schema: &Value) -> Value {
    json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": true}})
}

/// A small deterministic generator (xorshift): the same schemas on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const WORDS: [&str; 12] =
    ["name", "city", "color", "size", "score", "tags", "owner", "count", "price", "active", "kind", "notes"];

/// A schema of nested objects, arrays, enums, bounded numbers and required fields, in the form
/// OpenAI's strict mode asks for (every property required, no others allowed).
fn generated_schema(rng: &mut Rng, depth: u32) -> Value {
    let fields = 1 + rng.below(3) as usize;
    let mut properties = serde_json::Map::new();
    for i in 0..fields {
        let key = WORDS[(rng.below(WORDS.len() as u64) as usize + i) % WORDS.len()];
        let value = match rng.below(if depth < 2 { 7 } else { 5 }) {
            0 => json!({"type": "string", "maxLength": 1 + rng.below(24)}),
            1 => {
                let lo = rng.below(50) as i64 - 10;
                json!({"type": "integer", "minimum": lo, "maximum": lo + 1 + rng.below(100) as i64})
            }
            2 => json!({"type": "number", "minimum": 0, "maximum": 1000}),
            3 => {
                let palette = ["red", "green", "blue", "small", "large"];
                json!({"enum": palette[..2 + rng.below(3) as usize]})
            }
            4 => json!({"type": "boolean"}),
            5 => generated_schema(rng, depth + 1),
            _ => json!({
                "type": "array",
                "items": if rng.below(2) == 0 { json!({"type": "string", "maxLength": 12}) } else { generated_schema(rng, depth + 1) },
                "minItems": 1,
                "maxItems": 1 + rng.below(3),
            }),
        };
        properties.insert(key.to_string(), value);
    }
    let required: Vec<&String> = properties.keys().collect();
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn load_smollm2() -> Option<(PathBuf, LoadedModel)> {
    let path = smollm2()?;
    let module = root().join("models/smollm2-135m-instruct-recycle");
    let options = LoadOptions { recycle_init: RecycleInit::FromDir(module), ..LoadOptions::default() };
    let loaded = LoadedModel::load(&path, &options).expect("SmolLM2 loads with its module");
    Some((path, loaded))
}

const PERSON: &str = r#"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
    "age": {"type": "integer", "minimum": 0, "maximum": 150}, "city": {"type": "string", "maxLength": 40}},
    "required": ["name", "age", "city"], "additionalProperties": false}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_answers_fit_their_schemas_in_every_mode_batched_and_streamed() {
    let Some((path, loaded)) = load_smollm2() else { return };
    let server = TestServer::start_loaded(&path, loaded, |c| {
        c.served_model_name = None;
        c.queue_capacity = 256;
    })
    .await;
    let person: Value = serde_json::from_str(PERSON).unwrap();
    let ask = |mode: &str, format: Value| {
        json!({"messages": [{"role": "user", "content": "Describe a person who lives in Paris, as JSON."}],
               "max_tokens": 120, "temperature": 0, "recycle": mode, "response_format": format})
    };
    // Greedy: `verify` and `auto` give `off`'s text; `alternate` keeps module tokens unchecked,
    // yet the grammar still holds them to the schema.
    let mut texts = Vec::new();
    for mode in ["off", "verify", "auto", "alternate"] {
        let body: Value = server
            .post("/v1/chat/completions", ask(mode, schema_format("person", &person)))
            .await
            .json()
            .await
            .unwrap();
        let text = body["choices"][0]["message"]["content"].as_str().unwrap().to_string();
        validate(&person, &text);
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
        assert_eq!(body["recycle"]["mode"], mode);
        texts.push(text);
    }
    assert_eq!(texts[1], texts[0], "verify equals off under the grammar");
    assert_eq!(texts[2], texts[0], "auto equals off under the grammar");

    // A stream's deltas add up to the same object.
    let mut streamed = ask("verify", schema_format("person", &person));
    streamed["stream"] = json!(true);
    let body = server.post("/v1/chat/completions", streamed).await.text().await.unwrap();
    let text: String =
        sse_chunks(&body).iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<String>();
    assert_eq!(text, texts[0]);

    // `json_object` on completions: any object, sampled, two choices.
    let body: Value = server
        .post(
            "/v1/completions",
            json!({"prompt": "A shopping list as JSON:", "max_tokens": 200, "n": 2,
            "temperature": 0.7, "seed": 3, "response_format": {"type": "json_object"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    for choice in body["choices"].as_array().unwrap() {
        if choice["finish_reason"] == "stop" {
            assert!(validate(&json!({"type": "object"}), choice["text"].as_str().unwrap()).is_object());
        }
    }

    // Generated schemas, all at once (one batch, each sequence under its own grammar).
    let count: usize = std::env::var("STRUCTURED_SCHEMAS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let schemas: Vec<Value> = (0..count).map(|_| generated_schema(&mut rng, 0)).collect();
    // (Not `alternate`: its unchecked module tokens can run a number's digits on to max_tokens,
    // valid JSON all the way but never closed.)
    let modes = ["off", "verify", "auto"];
    let requests = schemas.iter().enumerate().map(|(i, schema)| {
        let body = json!({"messages": [{"role": "user", "content": format!("Fill in record number {i} as JSON.")}],
            "max_tokens": 400, "temperature": 0, "recycle": modes[i % 3], "response_format": schema_format("record", schema)});
        let request = reqwest::Client::new().post(server.url("/v1/chat/completions")).json(&body).send();
        async move { request.await.unwrap().json::<Value>().await.unwrap() }
    });
    let answers = futures_util::future::join_all(requests).await;
    for (schema, answer) in schemas.iter().zip(&answers) {
        assert_eq!(answer["choices"][0]["finish_reason"], "stop", "{schema} → {answer}");
        validate(schema, answer["choices"][0]["message"]["content"].as_str().unwrap());
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_model_fills_a_schema_and_bad_schemas_are_refused() {
    let dir = root().join("models/shakespeare");
    let server = TestServer::start(&dir, |_| {}).await;
    let schema = json!({"type": "object", "properties": {
        "mood": {"enum": ["merry", "sad"]}, "act": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["mood", "act"], "additionalProperties": false});
    for mode in ["off", "verify", "alternate"] {
        let body: Value = server
            .post(
                "/v1/completions",
                json!({"prompt": "ROMEO:", "max_tokens": 110, "temperature": 0, "recycle": mode,
                "response_format": schema_format("scene", &schema)}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{mode}: {body}");
        validate(&schema, body["choices"][0]["text"].as_str().unwrap());
    }
    let refused = [
        (json!({"type": "json_schema", "json_schema": {"name": "broken", "schema": {"type": "objekt"}}}), "broken"),
        (json!({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}), "name"),
        (json!({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}), "object"),
        (json!({"type": "xml"}), "xml"),
    ];
    for (format, says) in refused {
        let response = server
            .post("/v1/completions", json!({"prompt": "ROMEO:", "max_tokens": 5, "response_format": format}))
            .await;
        assert_eq!(response.status(), 400, "{format}");
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{format}: {message}");
    }
    server.shutdown().await.unwrap();
}

/// The probe's hostile schemas (findings 1-4): each gets a prompt 400 that says what is too
/// much, or is served, and the server goes on answering. A chain of 300 `$ref`s overflowed the
/// compiling thread's stack and aborted the process; 420 `patternProperties` took 11 s of CPU;
/// 2,500 alternatives and nested counted repetitions failed mid-generation as a `stop`;
/// `a{100000}` cost 70 ms of every worker step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_schemas_are_refused_or_served_and_the_server_lives_on() {
    let dir = root().join("models/shakespeare");
    let server = TestServer::start(&dir, |_| {}).await;
    let chain = |links: usize| {
        let mut defs: serde_json::Map<String, Value> =
            (0..links).map(|i| (format!("d{i}"), json!({"$ref": format!("#/$defs/d{}", i + 1)}))).collect();
        defs.insert(format!("d{links}"), json!({"type": "integer"}));
        json!({"$ref": "#/$defs/d0", "$defs": defs})
    };
    let complete = |schema: &Value| json!({"prompt": "ROMEO:", "max_tokens": 24, "temperature": 0, "response_format": schema_format("x", schema)});
    let body: Value = server.post("/v1/completions", complete(&chain(300))).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    validate(&json!({"type": "integer"}), body["choices"][0]["text"].as_str().unwrap());
    let patterns: serde_json::Map<String, Value> =
        (0..420).map(|i| (format!("^p{i}_[a-z]+$"), json!({"type": "integer"}))).collect();
    let refused = [
        (json!({"type": "object", "patternProperties": patterns}), "patternProperties"),
        (json!({"anyOf": (0..2500).map(|i| json!({"const": i})).collect::<Vec<_>>()}), "alternatives"),
        (json!({"type": "string", "pattern": "^((x{1,100}){1,100}){1,100}$"}), "repeats up to 1000000"),
        (json!({"type": "string", "pattern": "^a{100000}$"}), "repeats up to 100000"),
        (json!({"description": "x".repeat(70_000)}), "bytes of JSON"),
    ];
    for (schema, says) in refused {
        let started = std::time::Instant::now();
        let response = server.post("/v1/completions", complete(&schema)).await;
        assert_eq!(response.status(), 400, "{says}");
        assert!(started.elapsed().as_secs_f64() < 2.0, "{says}: {:?}", started.elapsed());
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{says}: {message}");
    }
    // A tool whose parameters refer to their own definitions, recursively: forced, the call is
    // made (the refs used to point nowhere once the tools were combined).
    let node = json!({"type": "object", "properties": {"v": {"type": "integer"},
        "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}}, "required": ["v", "next"]});
    let parameters = json!({"type": "object", "properties": {"n": {"$ref": "#/$defs/node"}}, "required": ["n"],
        "$defs": {"node": node}});
    let tools = json!([{"type": "function", "function": {"name": "walk", "parameters": parameters}}]);
    let response = server
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Walk."}], "max_tokens": 8, "temperature": 0,
                   "tools": tools, "tool_choice": "required"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = server.post("/v1/completions", complete(&json!({"type": "integer"}))).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "the server still serves: {body}");
    server.shutdown().await.unwrap();
}

/// A schema that takes longer than `grammar_compile_timeout_seconds` to compile is a 400 that
/// says so; the compile slot it holds makes others wait, not the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_that_compiles_too_long_is_a_400() {
    let dir = root().join("models/shakespeare");
    // A deadline of 0.1 ms: 10 ms, once used here, was sometimes enough on a fast run.
    let server = TestServer::start(&dir, |c| c.grammar_compile_timeout_seconds = 0.0001).await;
    // 60 patterns: 1,770 pairs checked for overlap, within the budget but far past 0.1 ms.
    let patterns: serde_json::Map<String, Value> =
        (0..60).map(|i| (format!("^p{i}_[a-z]+$"), json!({"type": "integer"}))).collect();
    let schema = json!({"type": "object", "patternProperties": patterns});
    let response = server
        .post(
            "/v1/completions",
            json!({"prompt": "ROMEO:", "max_tokens": 4, "response_format": schema_format("x", &schema)}),
        )
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(status == 400 && message.contains("did not compile within") || status == 429, "{status}: {body}");
    server.shutdown().await.unwrap();
}
