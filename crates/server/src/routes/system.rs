//! `/v1/models`, `/health`, `/metrics`, `/openapi.json`.
use crate::responses::{Health, ModelCard, ModelList, ModelRecycle};
use crate::validation::Limits;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[utoipa::path(get, path = "/v1/models", operation_id = "listModels", tag = "models",
    responses((status = 200, description = "The served model, with its recycle modes", body = ModelList)))]
pub async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    let modes = if state.limits.has_recycle { vec!["auto", "off", "alternate", "verify"] } else { vec!["auto", "off"] };
    let module = serde_json::to_value(state.recycle_source)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.limits.served_model_name.clone(),
            object: "model",
            created: state.created,
            owned_by: "recyclegpt",
            max_model_len: state.limits.context_len,
            recycle: ModelRecycle { module, modes, default: state.limits.default_mode.as_str() },
        }],
    })
}

/// 200 while the model is loaded and the worker alive; 503 when the worker has died or the
/// server is draining (so that load balancers stop sending work).
#[utoipa::path(get, path = "/health", operation_id = "health", tag = "system",
    responses((status = 200, description = "Ready", body = Health), (status = 503, description = "Worker stopped, or draining", body = Health)))]
pub async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Health>) {
    let status = if !state.backend.is_alive() {
        "worker stopped"
    } else if state.draining.load(Ordering::Relaxed) {
        "draining"
    } else {
        return (StatusCode::OK, Json(Health { status: "ok" }));
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status }))
}

#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "recyclegpt", description = "OpenAI-compatible inference for RecycleGPT models"),
    paths(super::completions::create, super::chat::create, super::responses_api::create, super::responses_api::retrieve, super::responses_api::delete, super::messages::create, super::messages::count_tokens, super::tokens::tokenize, super::tokens::detokenize, models, health, metrics, openapi),
    components(schemas(
        crate::openai::CompletionRequest,
        crate::openai::ChatRequest,
        crate::openai::Usage,
        crate::responses::ErrorResponse,
        crate::responses::ErrorDetail
    )),
    tags(
        (name = "completions", description = "Text completions"),
        (name = "chat", description = "Chat completions"),
        (name = "responses", description = "The Responses API, with stored responses"),
        (name = "messages", description = "Anthropic's Messages API"),
        (name = "models", description = "The served model"),
        (name = "tokens", description = "Tokenization, in vLLM's shape"),
        (name = "system", description = "Health, metrics and this document")
    )
)]
struct ApiDoc;

#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "system",
    responses((status = 200, description = "This OpenAPI document", content_type = "application/json", body = Object)))]
pub async fn openapi(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(document(&state.limits))
}

/// The document, with the limits only the loaded model knows written into the request schemas
/// (token ids below the vocabulary size, max_tokens below the context, list and stop lengths).
/// What no schema can say is in the descriptions: prompt + max_tokens must fit the context,
/// and prompts × n must not exceed the sequences a request may ask for.
fn document(limits: &Limits) -> Value {
    let mut doc = serde_json::to_value(<ApiDoc as utoipa::OpenApi>::openapi()).unwrap_or_default();
    let schemas = &mut doc["components"]["schemas"];
    let (max_new, last_id) = (limits.context_len.saturating_sub(1), limits.vocab_size.saturating_sub(1));
    let ids = json!({"type": "integer", "minimum": 0, "maximum": last_id});
    let id_list = json!({"type": "array", "items": ids, "minItems": 1, "maxItems": max_new});
    schemas["Prompt"]["oneOf"] = json!([
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": limits.max_sequences},
        id_list,
        {"type": "array", "items": id_list, "minItems": 1, "maxItems": limits.max_sequences},
    ]);
    // A character is at most 4 bytes: this many characters always fit `max_stop_bytes`.
    let stop = json!({"type": "string", "minLength": 1, "maxLength": limits.max_stop_bytes / 4});
    schemas["Stop"]["oneOf"] = json!([stop, {"type": "array", "items": stop, "maxItems": 4}]);
    if let Some(bias) = property(&mut schemas["SamplingFields"], "logit_bias") {
        bias["propertyNames"] = json!({"pattern": at_most(last_id as u64)});
        bias["additionalProperties"] = json!({"type": "number", "minimum": -100, "maximum": 100});
    }
    // prompts × n ≤ max_sequences, as one clause per prompt count (a list of token ids is one
    // prompt, so the clauses apply to lists of strings or of lists only).
    if let Some(parts) = schemas["CompletionRequest"].get_mut("allOf").and_then(Value::as_array_mut) {
        for prompts in 2..=limits.max_sequences {
            parts.push(json!({
                "if": {"required": ["prompt"], "properties": {"prompt": {
                    "type": "array", "minItems": prompts, "items": {"type": ["string", "array"]}}}},
                "then": {"properties": {"n": {"maximum": limits.max_sequences / prompts}}}
            }));
        }
    }
    // The configured limits, in place of the defaults the types declare.
    if let Some(n) = property(&mut schemas["SamplingFields"], "n") {
        n["maximum"] = json!(limits.max_n);
    }
    if let Some(top) = property(&mut schemas["ChatRequest"], "top_logprobs") {
        top["maximum"] = json!(limits.max_top_logprobs);
    }
    for (schema, field) in [("SamplingFields", "max_tokens"), ("ChatRequest", "max_completion_tokens")] {
        if let Some(property) = property(&mut schemas[schema], field) {
            property["maximum"] = json!(max_new);
        }
    }
    doc
}

/// A regular expression for the decimal numbers 0..=max, without leading zeros.
fn at_most(max: u64) -> String {
    let digits: Vec<u32> = max.to_string().chars().filter_map(|c| c.to_digit(10)).collect();
    let mut options = vec!["0".to_string()];
    // Every number with fewer digits.
    if digits.len() > 1 {
        options.push(format!("[1-9][0-9]{{0,{}}}", digits.len() - 2));
    }
    // Same length: equal to `max` on a prefix, then smaller at one digit, anything after.
    for (i, &d) in digits.iter().enumerate() {
        let low = if i == 0 { 1 } else { 0 };
        if d > low {
            let prefix: String = digits[..i].iter().map(|d| d.to_string()).collect();
            let rest = digits.len() - i - 1;
            options.push(format!("{prefix}[{low}-{}][0-9]{{{rest}}}", d - 1));
        }
    }
    options.push(max.to_string());
    format!("^({})$", options.join("|"))
}

/// A property of an object schema, also inside `allOf` (how flattened structs appear).
fn property<'a>(schema: &'a mut Value, name: &str) -> Option<&'a mut Value> {
    if schema.get("properties").and_then(|p| p.get(name)).is_some() {
        return schema.get_mut("properties")?.get_mut(name);
    }
    schema
        .get_mut("allOf")?
        .as_array_mut()?
        .iter_mut()
        .find_map(|part| part.get_mut("properties").and_then(|p| p.get_mut(name)))
}

#[cfg(test)]
mod tests {
    use super::at_most;

    #[test]
    fn the_token_id_pattern_matches_exactly_the_ids_up_to_the_maximum() {
        for max in [0u64, 7, 9, 10, 99, 100, 2047, 49151, 32000] {
            let pattern = regex::Regex::new(&at_most(max)).unwrap();
            for n in 0..=max + 200 {
                assert_eq!(pattern.is_match(&n.to_string()), n <= max, "{n} against {max}: {}", at_most(max));
            }
            for bad in ["", "01", "-1", "+1", " 1", "1 ", "1.0", "00"] {
                assert!(!pattern.is_match(bad), "{bad:?} matched {}", at_most(max));
            }
        }
    }
}
