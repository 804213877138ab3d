//! `POST /v1/chat/completions`.
use crate::chat_template::ChatMessage;
use crate::error::{ApiError, ApiJson};
use crate::generation::{collect, shared, submit, sse, token_text, whole_response, ChunkShape};
use crate::openai::{ChatRequest, Content, Usage};
use crate::validation::{plan, top_logprobs};
use recyclegpt_engine::TokenLogprob;
use recyclegpt_model::TextTokenizer;
use crate::AppState;
use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};
use std::sync::Arc;

/// OpenAI's chat `logprobs` object.
fn logprobs_json(tokenizer: &TextTokenizer, logprobs: &[TokenLogprob]) -> Value {
    let entry = |token: u32, logprob: f32| {
        let text = token_text(tokenizer, token);
        json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()})
    };
    let content: Vec<Value> = logprobs
        .iter()
        .map(|l| {
            let mut item = entry(l.token, l.logprob);
            item["top_logprobs"] = l.top.iter().map(|(t, lp)| entry(*t, *lp)).collect();
            item
        })
        .collect();
    json!({ "content": content })
}

struct ChatChunks {
    tokenizer: Arc<TextTokenizer>,
    logprobs: bool,
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
    fn opening(&mut self, index: usize) -> Option<serde_json::Value> {
        Some(self.chunk(index, json!({"role": "assistant", "content": ""}), None))
    }
    fn text(&mut self, index: usize, text: &str, logprobs: &[TokenLogprob]) -> serde_json::Value {
        let mut chunk = self.chunk(index, json!({"content": text}), None);
        if self.logprobs {
            chunk["choices"][0]["logprobs"] = logprobs_json(&self.tokenizer, logprobs);
        }
        chunk
    }
    fn finish(&mut self, index: usize, reason: &str) -> serde_json::Value {
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
                    for (j, part) in parts.iter().enumerate() {
                        match (part.kind.as_str(), &part.text) {
                            ("text", Some(t)) => text.push_str(t),
                            ("text", None) => {
                                return Err(ApiError::invalid(
                                    "messages",
                                    format!("messages[{i}].content[{j}]: a `text` part needs a `text` field"),
                                ))
                            }
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    "messages",
                                    format!("messages[{i}].content[{j}]: content parts of type `{kind}` are not supported (only `text`)"),
                                ))
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

/// Chat completions; the prompt comes from the model's chat template.
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatRequest, responses(
        (status = 200, description = "A `chat.completion` object, or a stream of `chat.completion.chunk`s"),
        crate::error::ErrorResponses
))]
pub async fn create(State(state): State<Arc<AppState>>, ApiJson(request): ApiJson<ChatRequest>) -> Result<Response, ApiError> {
    let logprobs = match (request.logprobs, request.top_logprobs) {
        (true, top) => Some(top_logprobs("top_logprobs", top.unwrap_or(0), 20)?),
        (false, None) => None,
        (false, Some(_)) => return Err(ApiError::invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`")),
    };
    let prompt = state.prompts.chat(messages(&request)?).await?;
    let max_tokens = request.max_completion_tokens.or(request.sampling.max_tokens);
    let plan = plan(&request.sampling, max_tokens, logprobs, vec![prompt], &state.limits)?;
    let id = format!("chatcmpl-{}", state.next_request_id());
    let generation = submit(&state, &plan, &id)?;
    let (model, created) = shared(&state);
    if plan.stream {
        let shape = ChatChunks {
            tokenizer: state.tokenizer.clone(),
            logprobs: plan.wants_logprobs(),
            id,
            model,
            created,
        };
        return Ok(sse(shape, generation, plan));
    }
    let (choices, usage) = collect(generation).await?;
    let body: Vec<serde_json::Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let logprobs = if plan.wants_logprobs() { logprobs_json(&state.tokenizer, &c.logprobs) } else { Value::Null };
            json!({"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": logprobs, "finish_reason": c.finish_reason})
        })
        .collect();
    Ok(whole_response("chat.completion", &id, &state, &plan, &choices, body, usage))
}
