//! `POST /v1/chat/completions`.
use crate::chat_template::ChatMessage;
use crate::error::{ApiError, ApiJson};
use crate::generation::{collect, recycle_stats, shared, submit, sse, ChunkShape};
use crate::openai::{ChatRequest, Content, Usage};
use crate::validation::plan;
use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

struct ChatChunks {
    id: String,
    model: String,
    created: u64,
}

impl ChatChunks {
    fn chunk(&self, index: usize, delta: serde_json::Value, finish: Option<&str>) -> serde_json::Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    }
}

impl ChunkShape for ChatChunks {
    fn opening(&self, index: usize) -> Option<serde_json::Value> {
        Some(self.chunk(index, json!({"role": "assistant", "content": ""}), None))
    }
    fn text(&self, index: usize, text: &str) -> serde_json::Value {
        self.chunk(index, json!({"content": text}), None)
    }
    fn finish(&self, index: usize, reason: &str) -> serde_json::Value {
        self.chunk(index, json!({}), Some(reason))
    }
    fn usage(&self, usage: Usage) -> serde_json::Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": [], "usage": usage})
    }
}

fn messages(request: &ChatRequest) -> Result<Vec<ChatMessage>, ApiError> {
    if request.messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must not be empty"));
    }
    request
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "developer") {
                return Err(ApiError::invalid("messages", format!("messages[{i}].role `{}` is not supported", m.role)));
            }
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match (part.kind.as_str(), &part.text) {
                            ("text", Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::invalid("messages", format!("messages[{i}]: content part `{kind}` is not supported")))
                            }
                        }
                    }
                    text
                }
            };
            let role = if m.role == "developer" { "system".to_string() } else { m.role.clone() };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

pub async fn create(State(state): State<Arc<AppState>>, ApiJson(request): ApiJson<ChatRequest>) -> Result<Response, ApiError> {
    if request.logprobs || request.top_logprobs.is_some() {
        return Err(ApiError::invalid("logprobs", "`logprobs` is not supported yet"));
    }
    let prompt_text = state.template.render(&messages(&request)?)?;
    let mut prompt = state.tokenizer.encode(&prompt_text).map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    // A template that writes BOS itself must not get a second one from the tokenizer.
    if state.template.starts_with_bos(&prompt_text) && prompt.len() > 1 && prompt[0] == prompt[1] {
        prompt.remove(0);
    }
    let max_tokens = request.max_completion_tokens.or(request.sampling.max_tokens);
    let plan = plan(&request.sampling, max_tokens, vec![prompt], &state.limits)?;
    let id = format!("chatcmpl-{}", state.worker.next_request_id());
    let events = submit(&state, &plan, &id)?;
    let (model, created) = shared(&state);
    if plan.stream {
        return Ok(sse(ChatChunks { id, model, created }, events, plan));
    }
    let (choices, usage) = collect(events, &plan).await?;
    let body: Vec<serde_json::Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": null, "finish_reason": c.finish_reason})
        })
        .collect();
    metrics::counter!("recyclegpt_requests_total", "status" => "200").increment(1);
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": body, "usage": usage, "recycle": recycle_stats(&plan, &choices),
    }))
    .into_response())
}
