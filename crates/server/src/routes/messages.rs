//! Anthropic's Messages API: `POST /v1/messages` and `/v1/messages/count_tokens`. The request
//! becomes the chat the OpenAI routes run (the system prompt first, `tool_use` blocks as an
//! assistant's calls, `tool_result` blocks as tool turns), with the same validation, template,
//! tools, structured decoding and recycling; the answer comes back as content blocks, whole or
//! as Anthropic's stream (`messages_stream.rs`). Errors take Anthropic's shape
//! ([`anthropic_errors`]).
use crate::answer::{Answers, Parts};
use crate::anthropic::{
    AnthropicToolChoice, ContentBlock, MessageContent, MessageResponse, MessageUsage, MessagesRequest, OutputBlock,
    SystemPrompt, TokenCount,
};
use crate::chat_template::TemplateArgs;
use crate::error::{ApiError, ApiJson};
use crate::generation::{collect, ok_json, recycle_stats, shared, submit};
use crate::openai::{
    Content, FunctionCall, FunctionDef, FunctionName, Message, Role, SamplingFields, Stop, Tool, ToolCall, ToolChoice,
};
use crate::prompt::ChatPrompt;
use crate::responses::FinishReason;
use crate::tools::{self, ToolPlan};
use crate::validation::{check, FieldNames};
use crate::{structured, AppState};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::Arc;

/// The request's system prompt and messages as the OpenAI routes' chat.
fn chat(request: &MessagesRequest) -> Result<Vec<Message>, ApiError> {
    let text =
        |role, text: String| Message { role, content: Some(Content::Text(text)), tool_calls: None, tool_call_id: None };
    let mut chat = Vec::with_capacity(request.messages.len() + 1);
    match &request.system {
        Some(SystemPrompt::Text(system)) => chat.push(text(Role::System, system.clone())),
        Some(SystemPrompt::Blocks(blocks)) => chat.push(text(Role::System, block_text("system", blocks)?)),
        None => {}
    }
    for (i, message) in request.messages.iter().enumerate() {
        let role = match message.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::invalid(
                    "messages",
                    format!("messages[{i}].role must be `user` or `assistant`, not `{other}`"),
                ))
            }
        };
        match &message.content {
            MessageContent::Text(content) => chat.push(text(role, content.clone())),
            MessageContent::Blocks(blocks) => chat.extend(block_messages(i, role, blocks)?),
        }
    }
    Ok(chat)
}

/// A message's blocks as chat messages: each `tool_result` a tool turn (first, as they answer
/// the turn before), then the text, with an assistant's `tool_use` blocks as its calls.
fn block_messages(i: usize, role: Role, blocks: &[ContentBlock]) -> Result<Vec<Message>, ApiError> {
    let bad = |j: usize, message: &str| ApiError::invalid("messages", format!("messages[{i}].content[{j}]: {message}"));
    let (mut results, mut text, mut calls) = (Vec::new(), String::new(), Vec::new());
    for (j, block) in blocks.iter().enumerate() {
        match (block.kind.as_str(), role) {
            ("text", _) => text.push_str(block.text.as_deref().ok_or_else(|| bad(j, "a text block needs `text`"))?),
            ("tool_use", Role::Assistant) => calls.push(ToolCall {
                id: block.id.clone().ok_or_else(|| bad(j, "a tool_use block needs `id`"))?,
                kind: "function".into(),
                function: FunctionCall {
                    name: block.name.clone().ok_or_else(|| bad(j, "a tool_use block needs `name`"))?,
                    arguments: block.input.clone().unwrap_or_else(|| json!({})).to_string(),
                },
            }),
            ("tool_result", Role::User) => {
                let content = match &block.content {
                    None => String::new(),
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Array(parts)) => {
                        let parts: Vec<ContentBlock> = serde_json::from_value(Value::Array(parts.clone()))
                            .map_err(|e| bad(j, &format!("tool_result content: {e}")))?;
                        block_text("messages", &parts)?
                    }
                    Some(_) => return Err(bad(j, "tool_result content must be a string or text blocks")),
                };
                let content = if block.is_error == Some(true) { format!("Error: {content}") } else { content };
                results.push(Message {
                    role: Role::Tool,
                    content: Some(Content::Text(content)),
                    tool_calls: None,
                    tool_call_id: Some(
                        block.tool_use_id.clone().ok_or_else(|| bad(j, "tool_result needs `tool_use_id`"))?,
                    ),
                });
            }
            ("thinking" | "redacted_thinking", Role::Assistant) => {}
            ("tool_use" | "tool_result", _) => {
                return Err(bad(j, "tool_use blocks belong to assistant turns, tool_result blocks to user turns"))
            }
            (kind, _) => {
                return Err(bad(
                    j,
                    &format!("content blocks of type `{kind}` are not supported (text, tool_use, tool_result)"),
                ))
            }
        }
    }
    if !text.is_empty() || !calls.is_empty() || results.is_empty() {
        let tool_calls = (!calls.is_empty()).then_some(calls);
        results.push(Message { role, content: Some(Content::Text(text)), tool_calls, tool_call_id: None });
    }
    Ok(results)
}

/// Text blocks joined (the system prompt, a tool result's content).
fn block_text(param: &str, blocks: &[ContentBlock]) -> Result<String, ApiError> {
    blocks
        .iter()
        .map(|b| match (b.kind.as_str(), &b.text) {
            ("text", Some(text)) => Ok(text.as_str()),
            (kind, _) => Err(ApiError::invalid(param, format!("only text blocks are supported here, not `{kind}`"))),
        })
        .collect()
}

/// The request's tools and tool choice as the chat's.
fn tool_plan(request: &MessagesRequest) -> Result<Option<ToolPlan>, ApiError> {
    let tools: Vec<Tool> = request
        .tools
        .iter()
        .flatten()
        .map(|t| Tool {
            kind: "function".into(),
            function: FunctionDef {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: Some(t.input_schema.clone()),
                strict: None,
            },
        })
        .collect();
    let parallel = request.tool_choice.as_ref().and_then(|c| c.disable_parallel_tool_use).map(|d| !d);
    let choice = request.tool_choice.as_ref().map(tool_choice).transpose()?;
    ToolPlan::new(Some(&tools), choice.as_ref(), parallel)
}

fn tool_choice(choice: &AnthropicToolChoice) -> Result<ToolChoice, ApiError> {
    let mode = |m: &str| Ok(ToolChoice::Mode(m.into()));
    match (choice.kind.as_str(), &choice.name) {
        ("auto", _) => mode("auto"),
        ("any", _) => mode("required"),
        ("none", _) => mode("none"),
        ("tool", Some(name)) => {
            Ok(ToolChoice::Function { kind: "function".into(), function: FunctionName { name: name.clone() } })
        }
        ("tool", None) => Err(ApiError::invalid("tool_choice", "`tool_choice` of type `tool` needs `name`")),
        (other, _) => Err(ApiError::invalid(
            "tool_choice",
            format!("`tool_choice.type` must be auto, any, tool or none, not `{other}`"),
        )),
    }
}

/// Validated, templated and tokenized: what both routes share.
struct Prepared {
    checked: crate::validation::Checked,
    tools: Option<ToolPlan>,
    grammar: Option<Arc<recyclegpt_grammar::Grammar>>,
    prompt: ChatPrompt,
}

/// `thinking` as the template's `enable_thinking`.
fn template_args(request: &MessagesRequest) -> Result<TemplateArgs, ApiError> {
    let mut args = TemplateArgs::new();
    if let Some(thinking) = &request.thinking {
        let enabled = match thinking.kind.as_str() {
            "enabled" | "adaptive" => true,
            "disabled" => false,
            other => {
                return Err(ApiError::invalid(
                    "thinking",
                    format!("`thinking.type` must be enabled, adaptive or disabled, not `{other}`"),
                ))
            }
        };
        args.insert("enable_thinking".into(), Value::from(enabled));
    }
    Ok(args)
}

/// `generating`: the grammar of forced tool calls is compiled only for a request that generates
/// (counting tokens needs none, and must not wait for the compiler).
async fn prepare(
    state: &AppState,
    request: &MessagesRequest,
    max_tokens: Option<i64>,
    generating: bool,
) -> Result<Prepared, ApiError> {
    let fields = SamplingFields {
        model: request.model.clone(),
        temperature: request.temperature,
        top_p: request.top_p,
        top_k: request.top_k,
        stream: request.stream,
        stop: request.stop_sequences.clone().map(Stop::Many),
        recycle: request.recycle.clone(),
        // Anthropic's `metadata.user_id` is what OpenAI's `user` is: an end user's id.
        user: request.metadata.as_ref().and_then(|m| m["user_id"].as_str()).map(String::from),
        ..SamplingFields::default()
    };
    // Anthropic's clients name whichever model they were set up with: any name is this model.
    let fields = SamplingFields { model: None, ..fields };
    let names = FieldNames { prompt: "messages", max_tokens: "max_tokens" };
    let checked = check(&fields, max_tokens, None, &state.limits, names)?;
    let tools = tool_plan(request)?;
    let grammar = match generating {
        true => structured::request_grammar(state, tools.as_ref(), None, "tools").await?,
        false => None,
    };
    let mut messages = super::chat::template_messages(&chat(request)?)?;
    state.prompts.check_chat("messages", &messages)?;
    if let Some(tools) = &tools {
        tools::add_instructions(&mut messages, tools.instructions());
    }
    let args = template_args(request)?;
    let prompt = state.prompts.chat(messages, args, if tools.is_some() { "tools" } else { "messages" }).await?;
    Ok(Prepared { checked, tools, grammar, prompt })
}

/// Why the answer ended, in Anthropic's words.
pub(super) fn stop_reason(reason: Option<FinishReason>, stop: &Option<String>, called: bool) -> &'static str {
    match (called, reason, stop) {
        (true, _, _) => "tool_use",
        (_, Some(FinishReason::Length), _) => "max_tokens",
        (_, _, Some(_)) => "stop_sequence",
        _ => "end_turn",
    }
}

/// Creates a message (Anthropic's Messages API).
#[utoipa::path(post, path = "/v1/messages", operation_id = "createMessage", tag = "messages",
    request_body = MessagesRequest, responses(
        (status = 200, description = "A `message`, or (with `stream`) a `text/event-stream` of Anthropic's events (`message_start` … `message_stop`)", content((MessageResponse = "application/json"), (crate::responses::StreamEvent = "text/event-stream"))),
        crate::error::ErrorResponses
))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<MessagesRequest>,
) -> Result<Response, ApiError> {
    let arrived = std::time::Instant::now();
    let Some(max_tokens) = request.max_tokens else {
        return Err(ApiError::invalid("max_tokens", "`max_tokens` is required"));
    };
    let Prepared { checked, tools, grammar, prompt } = prepare(&state, &request, Some(max_tokens), true).await?;
    let input_tokens = prompt.ids.len();
    let answers = Answers::new(prompt.thinking, grammar.is_some(), tools, state.call_ids());
    let plan = checked.plan(vec![prompt.ids], grammar, &state.limits)?;
    let id = format!("msg_{}", state.next_request_id());
    let generation = submit(&state, &plan, &id, arrived)?;
    let (model, _) = shared(&state);
    let shape = super::messages_stream::Shape { id, model, input_tokens, answers };
    if plan.stream() {
        metrics::counter!("recyclegpt_requests_total", "status" => "200").increment(1);
        return Ok(super::messages_stream::stream(shape, generation, plan));
    }
    let (choices, usage) = collect(generation).await?;
    let choice = choices.first().cloned().unwrap_or_default();
    let Parts { reasoning, text, calls } = shape.answers.splitter().finish(&choice.text);
    let mut content = Vec::new();
    if !reasoning.is_empty() {
        content.push(OutputBlock::Thinking { thinking: reasoning, signature: String::new() });
    }
    if !text.is_empty() || content.is_empty() && calls.is_empty() {
        content.push(OutputBlock::Text { text });
    }
    content.extend(calls.iter().map(super::messages_stream::tool_use));
    Ok(ok_json(&MessageResponse {
        id: shape.id.clone(),
        kind: "message",
        role: "assistant",
        model: shape.model.clone(),
        stop_reason: Some(stop_reason(choice.finish_reason, &choice.stop_sequence, !calls.is_empty())),
        stop_sequence: choice.stop_sequence.clone(),
        content,
        usage: MessageUsage {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
            cache_read_input_tokens: usage.prompt_tokens_details.cached_tokens,
            cache_creation_input_tokens: 0,
        },
        recycle: Some(recycle_stats(&plan, &choices)),
    }))
}

/// Counts the tokens a request's prompt would take (its system prompt, messages and tools).
#[utoipa::path(post, path = "/v1/messages/count_tokens", operation_id = "countMessageTokens", tag = "messages",
    request_body = MessagesRequest, responses(
        (status = 200, description = "`{\"input_tokens\"}`", body = TokenCount),
        crate::error::ErrorResponses
))]
pub async fn count_tokens(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<MessagesRequest>,
) -> Result<Response, ApiError> {
    let prepared = prepare(&state, &request, Some(1), false).await?;
    Ok(ok_json(&TokenCount { input_tokens: prepared.prompt.ids.len() }))
}

/// Anthropic's error type for a status.
fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// On `/v1/messages` routes, every error (the route's own, and those of the layers before it:
/// the API key, the body limit, an unknown path) in Anthropic's shape, `{"type": "error",
/// "error": {"type", "message"}}`, with the same status.
pub async fn anthropic_errors(request: Request, next: Next) -> Response {
    let anthropic = request.uri().path().starts_with("/v1/messages");
    let response = next.run(request).await;
    if !anthropic || response.status().as_u16() < 400 {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Error bodies are this server's own small JSON objects; 64 KiB is far beyond them.
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let openai: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let message = openai["error"]["message"].as_str().unwrap_or("request failed").to_string();
    let body = json!({"type": "error", "error": {"type": error_type(parts.status.as_u16()), "message": message}});
    parts.headers.remove(header::CONTENT_LENGTH);
    (parts, axum::Json(body)).into_response()
}
