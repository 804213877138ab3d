//! `POST /v1/completions`.
use crate::error::{ApiError, ApiJson};
use crate::generation::{collect, ok_json, recycle_stats, shared, sse, submit, ChunkShape};
use crate::openai::{CompletionRequest, Prompt, Usage};
use crate::responses::{CompletionChoice, CompletionLogprobs, CompletionResponse, FinishReason, RecycleStats};
use crate::validation::{check, top_logprobs, FieldNames};
use crate::{structured, AppState};
use axum::extract::State;
use axum::response::Response;
use recyclegpt_engine::{TokenLogprob, TokenSource};
use recyclegpt_model::TextTokenizer;
use std::collections::BTreeMap;
use std::sync::Arc;

/// OpenAI's completions `logprobs` object; `offset` is where the tokens' text starts.
fn logprobs_of(tokenizer: &TextTokenizer, logprobs: &[TokenLogprob], offset: usize) -> CompletionLogprobs {
    let tokens: Vec<String> = logprobs.iter().map(|l| tokenizer.token_text(l.token)).collect();
    let mut text_offset = Vec::with_capacity(tokens.len());
    let mut at = offset;
    for t in &tokens {
        text_offset.push(at);
        at += t.len();
    }
    CompletionLogprobs {
        top_logprobs: logprobs.iter().map(|l| Some(top_of(tokenizer, l))).collect(),
        token_logprobs: logprobs.iter().map(|l| Some(l.logprob)).collect(),
        tokens,
        text_offset,
    }
}

fn top_of(tokenizer: &TextTokenizer, logprob: &TokenLogprob) -> BTreeMap<String, f32> {
    logprob.top.iter().map(|(t, lp)| (tokenizer.token_text(*t), *lp)).collect()
}

/// An echoed prompt's `logprobs`: every prompt token, the first with `null` (nothing comes
/// before it to predict it), as OpenAI's completions score text.
fn prompt_logprobs_of(
    tokenizer: &TextTokenizer,
    prompt: &[u32],
    logprobs: &[TokenLogprob],
    echoed: &str,
) -> CompletionLogprobs {
    // Offsets run over the echoed text, which loses a sentencepiece prompt's leading space.
    let spelled: usize = prompt.iter().map(|&t| tokenizer.token_bytes(t).len()).sum();
    let stripped = spelled.saturating_sub(echoed.len());
    let mut out = CompletionLogprobs::default();
    let mut at = 0usize;
    for (i, &token) in prompt.iter().enumerate() {
        let scored = i.checked_sub(1).and_then(|j| logprobs.get(j));
        out.tokens.push(tokenizer.token_text(token));
        out.token_logprobs.push(scored.map(|l| l.logprob));
        out.top_logprobs.push(scored.map(|l| top_of(tokenizer, l)));
        out.text_offset.push(at.saturating_sub(stripped));
        at += tokenizer.token_bytes(token).len();
    }
    out
}

fn joined(mut first: CompletionLogprobs, then: CompletionLogprobs) -> CompletionLogprobs {
    first.tokens.extend(then.tokens);
    first.token_logprobs.extend(then.token_logprobs);
    first.top_logprobs.extend(then.top_logprobs);
    first.text_offset.extend(then.text_offset);
    first
}

struct CompletionChunks {
    tokenizer: Arc<TextTokenizer>,
    logprobs: bool,
    id: String,
    model: String,
    created: u64,
    echo: Vec<String>,
    /// The prompts' token ids, to name the echoed tokens in `logprobs`.
    prompts: Vec<Vec<u32>>,
    n: usize,
    /// Per choice, where the next token's text starts (`text_offset` runs on across chunks).
    offsets: Vec<usize>,
}

impl CompletionChunks {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> CompletionResponse {
        CompletionResponse {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            recycle: None,
        }
    }

    fn choice(
        index: usize,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish_reason: Option<FinishReason>,
    ) -> CompletionChoice {
        CompletionChoice { index, text, logprobs, finish_reason }
    }
}

impl ChunkShape for CompletionChunks {
    type Chunk = CompletionResponse;

    fn opening(&mut self, index: usize, prompt_logprobs: &[TokenLogprob]) -> Option<CompletionResponse> {
        let echo = self.echo.get(index / self.n)?.clone();
        if let Some(offset) = self.offsets.get_mut(index) {
            *offset = echo.len();
        }
        let logprobs = self.logprobs.then(|| {
            let prompt = self.prompts.get(index / self.n).map_or(&[][..], Vec::as_slice);
            prompt_logprobs_of(&self.tokenizer, prompt, prompt_logprobs, &echo)
        });
        Some(self.chunk(vec![Self::choice(index, echo, logprobs, None)], None))
    }

    fn text(&mut self, index: usize, text: &str, logprobs: &[TokenLogprob], _: TokenSource) -> Vec<CompletionResponse> {
        let logprobs = self.logprobs.then(|| {
            let offset = self.offsets.get(index).copied().unwrap_or(0);
            let value = logprobs_of(&self.tokenizer, logprobs, offset);
            if let Some(o) = self.offsets.get_mut(index) {
                *o += value.tokens.iter().map(String::len).sum::<usize>();
            }
            value
        });
        vec![self.chunk(vec![Self::choice(index, text.to_string(), logprobs, None)], None)]
    }

    fn finish(&mut self, index: usize, reason: FinishReason) -> Vec<CompletionResponse> {
        vec![self.chunk(vec![Self::choice(index, String::new(), None, Some(reason))], None)]
    }

    fn usage(&self, usage: Usage, recycle: RecycleStats) -> CompletionResponse {
        CompletionResponse { recycle: Some(recycle), ..self.chunk(Vec::new(), Some(usage)) }
    }
}

/// The most alternatives per token in completions' `logprobs`: OpenAI's limit for the legacy
/// endpoint.
const COMPLETION_LOGPROBS: i64 = 5;

/// Completions; `stream: true` answers with server-sent events ending in `data: [DONE]`.
/// Control tokens written in the prompt (such as `</s>`) are parsed as control tokens here, as in
/// OpenAI's and vLLM's completions; chat content never is.
#[utoipa::path(post, path = "/v1/completions", operation_id = "createCompletion", tag = "completions",
    request_body = CompletionRequest, responses(
        (status = 200, description = "A `text_completion` object, or (with `stream`) a `text/event-stream` of them ending in `[DONE]`", content((CompletionResponse = "application/json"), (crate::responses::StreamEvent = "text/event-stream"))),
        crate::error::ErrorResponses
))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = std::time::Instant::now();
    if request.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid("best_of", "`best_of` is not supported"));
    }
    if request.suffix.is_some() {
        return Err(ApiError::invalid("suffix", "`suffix` is not supported"));
    }
    let logprobs = request.logprobs.map(|n| top_logprobs("logprobs", n, COMPLETION_LOGPROBS)).transpose()?;
    let names = FieldNames { prompt: "prompt", max_tokens: "max_tokens" };
    let checked = check(&request.sampling, request.sampling.max_tokens, logprobs, &state.limits, names)?;
    let checked = if request.echo { checked.echo_prompt_logprobs() } else { checked };
    let grammar = structured::grammar(&state, request.sampling.response_format.as_ref()).await?;
    let prompts: Vec<Vec<u32>> = match request.prompt {
        Prompt::Text(text) => state.prompts.completion(vec![text]).await?,
        Prompt::Texts(texts) => state.prompts.completion(texts).await?,
        Prompt::Ids(ids) => vec![ids],
        Prompt::IdLists(lists) => lists,
    };
    let plan = checked.plan(prompts, grammar, &state.limits)?;
    let echo: Vec<String> = if request.echo {
        plan.prompts()
            .iter()
            .map(|p| state.tokenizer.decode(p).map_err(|e| ApiError::Internal(e.to_string())))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let id = format!("cmpl-{}", state.next_request_id());
    let generation = submit(&state, &plan, &id, arrived)?;
    let (model, created) = shared(&state);
    if plan.stream() {
        let shape = CompletionChunks {
            tokenizer: state.tokenizer.clone(),
            logprobs: plan.wants_logprobs(),
            id,
            model,
            created,
            offsets: vec![0; plan.prompts().len() * plan.n()],
            echo,
            prompts: if request.echo { plan.prompts().to_vec() } else { Vec::new() },
            n: plan.n(),
        };
        return Ok(sse(shape, generation, plan));
    }
    let (choices, usage) = collect(generation).await?;
    let body = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let prefix = echo.get(i / plan.n()).map(String::as_str).unwrap_or("");
            let logprobs = plan.wants_logprobs().then(|| {
                let generated = logprobs_of(&state.tokenizer, &c.logprobs, prefix.len());
                match request.echo {
                    true => joined(
                        prompt_logprobs_of(&state.tokenizer, &plan.prompts()[i / plan.n()], &c.prompt_logprobs, prefix),
                        generated,
                    ),
                    false => generated,
                }
            });
            CompletionChoice { index: i, text: format!("{prefix}{}", c.text), logprobs, finish_reason: c.finish_reason }
        })
        .collect();
    Ok(ok_json(&CompletionResponse {
        id,
        object: "text_completion",
        created,
        model,
        choices: body,
        usage: Some(usage),
        recycle: Some(recycle_stats(&plan, &choices)),
    }))
}
