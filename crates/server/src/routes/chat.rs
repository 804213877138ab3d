//! `POST /v1/chat/completions`.
use crate::chat_template::ChatMessage;
use crate::error::{ApiError, ApiJson};
use crate::generation::{collect, ok_json, recycle_stats, shared, sse, submit, ChunkShape};
use crate::openai::{ChatRequest, Content, Message, Usage};
use crate::responses::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionResponse, ChatDelta,
    ChatLogprobs, ChatTokenLogprob, FinishReason, TopLogprob,
};
use crate::validation::{plan, top_logprobs};
use crate::{structured, AppState};
use axum::extract::State;
use axum::response::Response;
use recyclegpt_engine::TokenLogprob;
use recyclegpt_model::TextTokenizer;
use std::sync::Arc;

/// OpenAI's chat `logprobs` object.
fn logprobs_of(tokenizer: &TextTokenizer, logprobs: &[TokenLogprob]) -> ChatLogprobs {
    let top = |token: u32, logprob: f32| {
        let token = tokenizer.token_text(token);
        TopLogprob { bytes: token.as_bytes().to_vec(), token, logprob }
    };
    let content = logprobs
        .iter()
        .map(|l| {
            let first = top(l.token, l.logprob);
            ChatTokenLogprob {
                token: first.token,
                logprob: first.logprob,
                bytes: first.bytes,
                top_logprobs: l.top.iter().map(|(t, lp)| top(*t, *lp)).collect(),
            }
        })
        .collect();
    ChatLogprobs { content }
}

struct ChatChunks {
    tokenizer: Arc<TextTokenizer>,
    logprobs: bool,
    id: String,
    model: String,
    created: u64,
}

impl ChatChunks {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }

    fn choice(
        index: usize,
        delta: ChatDelta,
        logprobs: Option<ChatLogprobs>,
        finish_reason: Option<FinishReason>,
    ) -> Vec<ChatChunkChoice> {
        vec![ChatChunkChoice { index, delta, logprobs, finish_reason }]
    }
}

impl ChunkShape for ChatChunks {
    type Chunk = ChatCompletionChunk;

    fn opening(&mut self, index: usize, _prompt_logprobs: &[TokenLogprob]) -> Option<ChatCompletionChunk> {
        let delta = ChatDelta { role: Some("assistant"), content: Some(String::new()) };
        Some(self.chunk(Self::choice(index, delta, None, None), None))
    }

    fn text(&mut self, index: usize, text: &str, logprobs: &[TokenLogprob]) -> ChatCompletionChunk {
        let delta = ChatDelta { role: None, content: Some(text.to_string()) };
        let logprobs = self.logprobs.then(|| logprobs_of(&self.tokenizer, logprobs));
        self.chunk(Self::choice(index, delta, logprobs, None), None)
    }

    fn finish(&mut self, index: usize, reason: FinishReason) -> ChatCompletionChunk {
        self.chunk(Self::choice(index, ChatDelta::default(), None, Some(reason)), None)
    }

    fn usage(&self, usage: Usage) -> ChatCompletionChunk {
        self.chunk(Vec::new(), Some(usage))
    }
}

/// Messages as the chat template takes them (text parts joined).
pub(super) fn template_messages(messages: &[Message]) -> Result<Vec<ChatMessage>, ApiError> {
    template_messages_of("messages", messages)
}

/// The same, for messages that came in the request's `param`.
pub(super) fn template_messages_of(param: &str, messages: &[Message]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(param, format!("`{param}` must not be empty")));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.iter().enumerate() {
                        match (part.kind.as_str(), &part.text) {
                            ("text" | "input_text" | "output_text", Some(t)) => text.push_str(t),
                            ("text" | "input_text" | "output_text", None) => {
                                return Err(ApiError::invalid(
                                    param,
                                    format!("{param}[{i}].content[{j}]: a `text` part needs a `text` field"),
                                ))
                            }
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    param,
                                    format!("{param}[{i}].content[{j}]: content parts of type `{kind}` are not supported (only text: `text`, or `input_text` and `output_text` as the Responses API names them)"),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            Ok(ChatMessage { role: m.role.template_name().to_string(), content })
        })
        .collect()
}

/// Chat completions; the prompt comes from the model's chat template.
#[utoipa::path(post, path = "/v1/chat/completions", operation_id = "createChatCompletion", tag = "chat",
    request_body = ChatRequest, responses(
        (status = 200, description = "A `chat.completion` object, or (with `stream`) a `text/event-stream` of `chat.completion.chunk`s ending in `[DONE]`", content((ChatCompletionResponse = "application/json"), (crate::responses::StreamEvent = "text/event-stream"))),
        crate::error::ErrorResponses
))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let logprobs = match (request.logprobs, request.top_logprobs) {
        (true, top) => Some(top_logprobs("top_logprobs", top.unwrap_or(0), 20)?),
        (false, None) => None,
        // Without `logprobs: true` nothing is reported; the count is still checked.
        (false, Some(top)) => {
            top_logprobs("top_logprobs", top, 20)?;
            None
        }
    };
    let prompt = state.prompts.chat(template_messages(&request.messages)?).await?;
    let max_tokens = request.max_completion_tokens.or(request.sampling.max_tokens);
    let mut plan = plan(&request.sampling, max_tokens, logprobs, vec![prompt], &state.limits)?;
    plan.grammar = structured::grammar(&state, request.sampling.response_format.as_ref()).await?;
    let id = format!("chatcmpl-{}", state.next_request_id());
    let generation = submit(&state, &plan, &id)?;
    let (model, created) = shared(&state);
    if plan.stream {
        let shape =
            ChatChunks { tokenizer: state.tokenizer.clone(), logprobs: plan.wants_logprobs(), id, model, created };
        return Ok(sse(shape, generation, plan));
    }
    let (choices, usage) = collect(generation).await?;
    let body = choices
        .iter()
        .enumerate()
        .map(|(i, c)| ChatChoice {
            index: i,
            message: AssistantMessage { role: "assistant", content: c.text.clone() },
            logprobs: plan.wants_logprobs().then(|| logprobs_of(&state.tokenizer, &c.logprobs)),
            finish_reason: c.finish_reason,
        })
        .collect();
    Ok(ok_json(&ChatCompletionResponse {
        id,
        object: "chat.completion",
        created,
        model,
        choices: body,
        usage,
        recycle: recycle_stats(&plan, &choices),
    }))
}
