//! `POST /v1/completions`.
use crate::error::{ApiError, ApiJson};
use crate::generation::{collect, recycle_stats, shared, submit, sse, ChunkShape};
use crate::openai::{CompletionRequest, Prompt, Usage};
use crate::validation::plan;
use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

struct CompletionChunks {
    id: String,
    model: String,
    created: u64,
    echo: Vec<String>,
    n: usize,
}

impl CompletionChunks {
    fn chunk(&self, choices: serde_json::Value) -> serde_json::Value {
        json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model, "choices": choices})
    }
}

impl ChunkShape for CompletionChunks {
    fn opening(&self, index: usize) -> Option<serde_json::Value> {
        let echo = self.echo.get(index / self.n)?;
        Some(self.chunk(json!([{"index": index, "text": echo, "logprobs": null, "finish_reason": null}])))
    }
    fn text(&self, index: usize, text: &str) -> serde_json::Value {
        self.chunk(json!([{"index": index, "text": text, "logprobs": null, "finish_reason": null}]))
    }
    fn finish(&self, index: usize, reason: &str) -> serde_json::Value {
        self.chunk(json!([{"index": index, "text": "", "logprobs": null, "finish_reason": reason}]))
    }
    fn usage(&self, usage: Usage) -> serde_json::Value {
        json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model, "choices": [], "usage": usage})
    }
}

pub async fn create(State(state): State<Arc<AppState>>, ApiJson(request): ApiJson<CompletionRequest>) -> Result<Response, ApiError> {
    if request.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid("best_of", "`best_of` is not supported"));
    }
    if request.suffix.is_some() {
        return Err(ApiError::invalid("suffix", "`suffix` is not supported"));
    }
    if request.logprobs.is_some() {
        return Err(ApiError::invalid("logprobs", "`logprobs` is not supported yet"));
    }
    let prompts: Vec<Vec<u32>> = match &request.prompt {
        Prompt::Text(text) => vec![state.tokenizer.encode(text).map_err(|e| ApiError::invalid("prompt", e.to_string()))?],
        Prompt::Texts(texts) => texts
            .iter()
            .map(|t| state.tokenizer.encode(t).map_err(|e| ApiError::invalid("prompt", e.to_string())))
            .collect::<Result<_, _>>()?,
        Prompt::Ids(ids) => vec![ids.clone()],
        Prompt::IdLists(lists) => lists.clone(),
    };
    let plan = plan(&request.sampling, request.sampling.max_tokens, prompts, &state.limits)?;
    let echo: Vec<String> = if request.echo {
        plan.prompts
            .iter()
            .map(|p| state.tokenizer.decode(p).map_err(|e| ApiError::Internal(e.to_string())))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let id = format!("cmpl-{}", state.worker.next_request_id());
    let events = submit(&state, &plan, &id)?;
    let (model, created) = shared(&state);
    if plan.stream {
        let shape = CompletionChunks { id, model, created, echo, n: plan.n };
        return Ok(sse(shape, events, plan));
    }
    let (choices, usage) = collect(events, &plan).await?;
    let body: Vec<serde_json::Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let prefix = echo.get(i / plan.n).map(String::as_str).unwrap_or("");
            json!({"index": i, "text": format!("{prefix}{}", c.text), "logprobs": null, "finish_reason": c.finish_reason})
        })
        .collect();
    metrics::counter!("recyclegpt_requests_total", "status" => "200").increment(1);
    Ok(Json(json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": body, "usage": usage, "recycle": recycle_stats(&plan, &choices),
    }))
    .into_response())
}
