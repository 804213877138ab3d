//! `POST /v1/completions`.
use crate::error::{ApiError, ApiJson};
use crate::generation::{collect, shared, submit, sse, token_text, whole_response, ChunkShape};
use crate::openai::{CompletionRequest, Prompt, Usage};
use crate::validation::{plan, top_logprobs};
use recyclegpt_engine::TokenLogprob;
use recyclegpt_model::TextTokenizer;
use crate::AppState;
use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};
use std::sync::Arc;

/// OpenAI's completions `logprobs` object; `offset` is where the tokens' text starts.
fn logprobs_json(tokenizer: &TextTokenizer, logprobs: &[TokenLogprob], offset: usize) -> Value {
    let tokens: Vec<String> = logprobs.iter().map(|l| token_text(tokenizer, l.token)).collect();
    let mut text_offset = Vec::with_capacity(tokens.len());
    let mut at = offset;
    for t in &tokens {
        text_offset.push(at);
        at += t.len();
    }
    let top: Vec<Value> = logprobs
        .iter()
        .map(|l| Value::Object(l.top.iter().map(|(t, lp)| (token_text(tokenizer, *t), json!(lp))).collect()))
        .collect();
    json!({
        "tokens": tokens,
        "token_logprobs": logprobs.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

struct CompletionChunks {
    tokenizer: Arc<TextTokenizer>,
    logprobs: bool,
    id: String,
    model: String,
    created: u64,
    echo: Vec<String>,
    n: usize,
    /// Per choice, where the next token's text starts (`text_offset` runs on across chunks).
    offsets: Vec<usize>,
}

impl CompletionChunks {
    fn chunk(&self, choices: serde_json::Value) -> serde_json::Value {
        json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model, "choices": choices})
    }
}

impl ChunkShape for CompletionChunks {
    fn opening(&mut self, index: usize) -> Option<serde_json::Value> {
        let echo = self.echo.get(index / self.n)?;
        if let Some(offset) = self.offsets.get_mut(index) {
            *offset = echo.len();
        }
        Some(self.chunk(json!([{"index": index, "text": echo, "logprobs": null, "finish_reason": null}])))
    }
    fn text(&mut self, index: usize, text: &str, logprobs: &[TokenLogprob]) -> serde_json::Value {
        let logprobs = if self.logprobs {
            let offset = self.offsets.get(index).copied().unwrap_or(0);
            let value = logprobs_json(&self.tokenizer, logprobs, offset);
            let advance: usize = logprobs.iter().map(|l| token_text(&self.tokenizer, l.token).len()).sum();
            if let Some(o) = self.offsets.get_mut(index) {
                *o += advance;
            }
            value
        } else {
            Value::Null
        };
        self.chunk(json!([{"index": index, "text": text, "logprobs": logprobs, "finish_reason": null}]))
    }
    fn finish(&mut self, index: usize, reason: &str) -> serde_json::Value {
        self.chunk(json!([{"index": index, "text": "", "logprobs": null, "finish_reason": reason}]))
    }
    fn usage(&self, usage: Usage) -> serde_json::Value {
        json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model, "choices": [], "usage": usage})
    }
}

/// Completions; `stream: true` answers with server-sent events ending in `data: [DONE]`.
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest, responses(
        (status = 200, description = "A `text_completion` object, or a stream of them"),
        crate::error::ErrorResponses
))]
pub async fn create(State(state): State<Arc<AppState>>, ApiJson(request): ApiJson<CompletionRequest>) -> Result<Response, ApiError> {
    if request.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid("best_of", "`best_of` is not supported"));
    }
    if request.suffix.is_some() {
        return Err(ApiError::invalid("suffix", "`suffix` is not supported"));
    }
    let prompts: Vec<Vec<u32>> = match request.prompt {
        Prompt::Text(text) => state.prompts.completion(vec![text]).await?,
        Prompt::Texts(texts) => state.prompts.completion(texts).await?,
        Prompt::Ids(ids) => vec![ids],
        Prompt::IdLists(lists) => lists,
    };
    let logprobs = request.logprobs.map(|n| top_logprobs("logprobs", n, 5)).transpose()?;
    let plan = plan(&request.sampling, request.sampling.max_tokens, logprobs, prompts, &state.limits)?;
    let echo: Vec<String> = if request.echo {
        plan.prompts
            .iter()
            .map(|p| state.tokenizer.decode(p).map_err(|e| ApiError::Internal(e.to_string())))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let id = format!("cmpl-{}", state.next_request_id());
    let generation = submit(&state, &plan, &id)?;
    let (model, created) = shared(&state);
    if plan.stream {
        let shape = CompletionChunks {
            tokenizer: state.tokenizer.clone(),
            logprobs: plan.wants_logprobs(),
            id,
            model,
            created,
            offsets: vec![0; plan.prompts.len() * plan.n],
            echo,
            n: plan.n,
        };
        return Ok(sse(shape, generation, plan));
    }
    let (choices, usage) = collect(generation).await?;
    let body: Vec<serde_json::Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let prefix = echo.get(i / plan.n).map(String::as_str).unwrap_or("");
            let logprobs = if plan.wants_logprobs() { logprobs_json(&state.tokenizer, &c.logprobs, prefix.len()) } else { Value::Null };
            json!({"index": i, "text": format!("{prefix}{}", c.text), "logprobs": logprobs, "finish_reason": c.finish_reason})
        })
        .collect();
    Ok(whole_response("text_completion", &id, &state, &plan, &choices, body, usage))
}
