//! `POST /v1/chat/completions`.
use super::chat_stream::{logprobs_of, ChatChunks};
use crate::answer::{self, Answers, Parts};
use crate::chat_template::ChatMessage;
use crate::error::{ApiError, ApiJson};
use crate::generation::{collect, ok_json, recycle_stats, shared, sse, submit};
use crate::openai::{ChatRequest, Content, Message, Role};
use crate::responses::{AssistantMessage, ChatChoice, ChatCompletionResponse, FinishReason};
use crate::tools::{self, ToolPlan};
use crate::validation::{check, top_logprobs, FieldNames};
use crate::{structured, AppState};
use axum::extract::State;
use axum::response::Response;
use std::sync::Arc;

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
            // Earlier calls and their results, in the form the model is told to call in.
            let content = match (&m.tool_calls, m.role) {
                (Some(calls), _) if !calls.is_empty() => {
                    [content, tools::render_calls(calls)].join("\n").trim_start().to_string()
                }
                (_, Role::Tool) => tools::render_result(&content),
                _ => content,
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
    let arrived = std::time::Instant::now();
    let logprobs = match (request.logprobs, request.top_logprobs) {
        (true, top) => Some(top_logprobs("top_logprobs", top.unwrap_or(0), state.limits.max_top_logprobs as i64)?),
        (false, None) => None,
        // Without `logprobs: true` nothing is reported; the count is still checked.
        (false, Some(top)) => {
            top_logprobs("top_logprobs", top, state.limits.max_top_logprobs as i64)?;
            None
        }
    };
    let max_tokens = request.max_completion_tokens.or(request.sampling.max_tokens);
    let max_tokens_param = if request.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
    let names = FieldNames { prompt: "messages", max_tokens: max_tokens_param };
    let checked = check(&request.sampling, max_tokens, logprobs, &state.limits, names)?;
    let tools = ToolPlan::new(request.tools.as_deref(), request.tool_choice.as_ref(), request.parallel_tool_calls)?;
    let mut messages = template_messages(&request.messages)?;
    state.prompts.check_chat("messages", &messages)?;
    if let Some(tools) = &tools {
        tools::add_instructions(&mut messages, tools.instructions());
    }
    // Checked before the prompt is tokenized: a bad schema is the cheaper error to find.
    let format = request.sampling.response_format.as_ref();
    let grammar = structured::request_grammar(&state, tools.as_ref(), format, "response_format").await?;
    let effort = request.reasoning_effort.as_deref().map(|e| ("reasoning_effort", e));
    let args = answer::template_args(request.chat_template_kwargs.as_ref(), effort)?;
    let prompt = state.prompts.chat(messages, args, if tools.is_some() { "tools" } else { "messages" }).await?;
    let answers = Answers::new(prompt.thinking, grammar.is_some(), tools, state.call_ids());
    let plan = checked.plan(vec![prompt.ids], grammar, &state.limits)?;
    let id = format!("chatcmpl-{}", state.next_request_id());
    let generation = submit(&state, &plan, &id, arrived)?;
    let (model, created) = shared(&state);
    if plan.stream() {
        let shape = ChatChunks::new(state.tokenizer.clone(), plan.wants_logprobs(), (id, model, created), answers);
        return Ok(sse(shape, generation, plan));
    }
    let (choices, usage) = collect(generation).await?;
    let body = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let Parts { reasoning, text, calls } = answers.splitter().finish(&c.text);
            let called = !calls.is_empty();
            ChatChoice {
                index: i,
                message: AssistantMessage {
                    role: "assistant",
                    content: if called { Some(text).filter(|t| !t.is_empty()) } else { Some(text) },
                    reasoning_content: Some(reasoning).filter(|r| !r.is_empty()),
                    tool_calls: called.then_some(calls),
                },
                logprobs: plan.wants_logprobs().then(|| logprobs_of(&state.tokenizer, &c.logprobs)),
                finish_reason: if called { Some(FinishReason::ToolCalls) } else { c.finish_reason },
            }
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
