//! OpenAI's Responses API. `POST /v1/responses`: the input becomes a chat (with `instructions`
//! as its system message, earlier function calls and their outputs as chat tool turns, after
//! the stored conversation of `previous_response_id`) and runs as a chat completion does, tools
//! included; the answer comes back as output items (the assistant's message, function calls),
//! whole or as the API's typed stream events (`responses_stream.rs`), and is kept (`store`) for
//! `GET` and `DELETE /v1/responses/{id}` and later turns.
use super::responses_shape::{status_of, Shape};
use crate::answer::{self, Answers, Parts};
use crate::chat_template::ChatMessage;
use crate::error::{ApiError, ApiJson};
use crate::generation::{collect, ok_json, recycle_stats, shared, submit};
use crate::openai::{
    Content, FunctionCall, FunctionDef, FunctionName, JsonSchemaFormat, Message, ResponseFormat, Role, SamplingFields,
    Tool, ToolCall, ToolChoice,
};
use crate::openai_responses::{
    DeletedResponse, OutputItem, ResponseInput, ResponseObject, ResponseToolChoice, ResponsesRequest, TextConfig,
    TextFormat,
};
use crate::tools::{self, ToolPlan};
use crate::validation::{check, FieldNames};
use crate::{structured, AppState};
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::Value;
use std::sync::Arc;

/// The conversation the input continues: the stored one of `previous_response_id`, if any.
fn history(state: &AppState, request: &ResponsesRequest) -> Result<Vec<ChatMessage>, ApiError> {
    match &request.previous_response_id {
        Some(id) => state
            .responses
            .conversation(id)
            .ok_or_else(|| ApiError::NoSuchResponse { id: id.clone(), param: Some("previous_response_id".into()) }),
        None => Ok(Vec::new()),
    }
}

/// The input's messages after `history` (the conversation they continue).
fn conversation(request: &ResponsesRequest, mut messages: Vec<ChatMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    match &request.input {
        ResponseInput::Text(text) => messages.push(ChatMessage { role: "user".into(), content: text.clone() }),
        ResponseInput::Items(items) => {
            let mut chat = Vec::with_capacity(items.len());
            // Earlier reasoning is not shown to the model again (as reasoning models' templates
            // drop it from earlier turns).
            for (i, item) in items.iter().enumerate().filter(|(_, item)| item.kind.as_deref() != Some("reasoning")) {
                chat.push(input_message(i, item)?);
            }
            messages.extend(super::chat::template_messages_of("input", &chat)?);
        }
    }
    if messages.is_empty() {
        return Err(ApiError::invalid("input", "`input` must not be empty"));
    }
    Ok(messages)
}

/// The chat to render: `instructions` first (never carried over from a stored response), then
/// the conversation.
fn chat_messages(request: &ResponsesRequest, conversation: &[ChatMessage]) -> Vec<ChatMessage> {
    let instructions =
        request.instructions.iter().map(|text| ChatMessage { role: "system".into(), content: text.clone() });
    instructions.chain(conversation.iter().cloned()).collect()
}

/// One input item as a chat message: a function call is an assistant turn that made it, its
/// output a tool turn.
fn input_message(i: usize, item: &crate::openai_responses::InputItem) -> Result<Message, ApiError> {
    let missing = |field: &str| ApiError::invalid("input", format!("input[{i}] needs `{field}`"));
    let message = |role, content, tool_calls, tool_call_id| Message { role, content, tool_calls, tool_call_id };
    Ok(match item.kind.as_deref().unwrap_or("message") {
        "message" => message(item.role.ok_or_else(|| missing("role"))?, item.content.clone(), None, None),
        "function_call" => {
            let call = ToolCall {
                id: item.call_id.clone().ok_or_else(|| missing("call_id"))?,
                kind: "function".into(),
                function: FunctionCall {
                    name: item.name.clone().ok_or_else(|| missing("name"))?,
                    arguments: item.arguments.clone().unwrap_or_default(),
                },
            };
            message(Role::Assistant, None, Some(vec![call]), None)
        }
        "function_call_output" => message(
            Role::Tool,
            Some(Content::Text(item.output.clone().ok_or_else(|| missing("output"))?)),
            None,
            Some(item.call_id.clone().ok_or_else(|| missing("call_id"))?),
        ),
        other => {
            return Err(ApiError::invalid(
                "input",
                format!(
                "input[{i}]: items of type `{other}` are not supported (message, function_call, function_call_output)"
            ),
            ))
        }
    })
}

/// The request's tools as chat tools.
fn tool_plan(request: &ResponsesRequest) -> Result<Option<ToolPlan>, ApiError> {
    let tools: Vec<Tool> = request
        .tools
        .iter()
        .flatten()
        .map(|t| Tool {
            kind: t.kind.clone(),
            function: FunctionDef {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
                strict: t.strict,
            },
        })
        .collect();
    let choice = request.tool_choice.as_ref().map(|c| match c {
        ResponseToolChoice::Mode(mode) => ToolChoice::Mode(mode.clone()),
        ResponseToolChoice::Function { kind, name } => {
            ToolChoice::Function { kind: kind.clone(), function: FunctionName { name: name.clone() } }
        }
    });
    ToolPlan::new(Some(&tools), choice.as_ref(), request.parallel_tool_calls)
}

fn response_format(text: Option<&TextConfig>) -> Option<ResponseFormat> {
    Some(match &text?.format {
        TextFormat::Text => ResponseFormat::Text,
        TextFormat::JsonObject => ResponseFormat::JsonObject,
        TextFormat::JsonSchema { name, schema, description, strict } => ResponseFormat::JsonSchema {
            json_schema: JsonSchemaFormat {
                name: name.clone(),
                description: description.clone(),
                schema: schema.clone(),
                strict: *strict,
            },
        },
    })
}

/// Creates a model response (stateless: nothing is stored, nothing continued).
#[utoipa::path(post, path = "/v1/responses", operation_id = "createResponse", tag = "responses",
    request_body = ResponsesRequest, responses(
        (status = 200, description = "A `response` object, or (with `stream`) a `text/event-stream` of typed events (`response.created` … `response.completed`)", content((ResponseObject = "application/json"), (crate::responses::StreamEvent = "text/event-stream"))),
        crate::error::ErrorResponses
))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<ResponsesRequest>,
) -> Result<Response, ApiError> {
    let arrived = std::time::Instant::now();
    if let Some(metadata) = &request.metadata {
        check_metadata(metadata)?;
    }
    if let Some(m) = request.max_output_tokens.filter(|&m| m < 1) {
        return Err(ApiError::invalid("max_output_tokens", format!("`max_output_tokens` must be at least 1, got {m}")));
    }
    let fields = SamplingFields {
        model: request.model.clone(),
        temperature: request.temperature,
        top_p: request.top_p,
        stream: request.stream,
        seed: request.seed,
        user: request.user.clone(),
        recycle: request.recycle.clone(),
        response_format: response_format(request.text.as_ref()),
        ..SamplingFields::default()
    };
    let names = FieldNames { prompt: "input", max_tokens: "max_output_tokens" };
    let checked = check(&fields, request.max_output_tokens, None, &state.limits, names)?;
    let tools = tool_plan(&request)?;
    let format = fields.response_format.as_ref();
    let grammar = structured::request_grammar(&state, tools.as_ref(), format, "text").await?;
    let conversation = conversation(&request, history(&state, &request)?)?;
    let mut messages = chat_messages(&request, &conversation);
    state.prompts.check_chat("input", &messages)?;
    if let Some(tools) = &tools {
        tools::add_instructions(&mut messages, tools.instructions());
    }
    let effort = request.reasoning.as_ref().and_then(|r| r.effort.as_deref()).map(|e| ("reasoning.effort", e));
    let args = answer::template_args(None, effort)?;
    let prompt = state.prompts.chat(messages, args, if tools.is_some() { "tools" } else { "input" }).await?;
    let answers = Answers::new(prompt.thinking, grammar.is_some(), tools, state.call_ids());
    let plan = checked.plan(vec![prompt.ids], grammar, &state.limits)?;
    let id = format!("resp_{}", state.next_request_id());
    let generation = submit(&state, &plan, &id, arrived)?;
    let (model, created_at) = shared(&state);
    let message_id = format!("msg_{}", state.next_request_id());
    let store = request.store != Some(false);
    let shape =
        Shape { message_id, id, model, created_at, request, answers, state: state.clone(), store, conversation };
    if plan.stream() {
        metrics::counter!("recyclegpt_requests_total", "status" => "200").increment(1);
        return Ok(super::responses_stream::stream(shape, generation, plan));
    }
    let (choices, usage) = collect(generation).await?;
    let choice = choices.first().cloned().unwrap_or_default();
    let status = status_of(choice.finish_reason);
    let Parts { reasoning, text, calls } = shape.answers.splitter().finish(&choice.text);
    let mut output = Vec::new();
    if !reasoning.is_empty() {
        output.push(OutputItem::Reasoning(shape.reasoning("completed", reasoning)));
    }
    let text = Some(text).filter(|t| !t.is_empty() || calls.is_empty() && output.is_empty());
    if let Some(text) = &text {
        output.push(OutputItem::Message(shape.message(status, Some(text.clone()))));
    }
    for call in &calls {
        output.push(OutputItem::FunctionCall(shape.call_item(call, "completed", call.function.arguments.clone())));
    }
    let mut body = shape.object(status, output, Some(usage));
    body.recycle = Some(recycle_stats(&plan, &choices));
    shape.keep(&body, text, &calls);
    Ok(ok_json(&body))
}

/// A stored response, as it was returned.
#[utoipa::path(get, path = "/v1/responses/{response_id}", operation_id = "getResponse", tag = "responses",
    params(("response_id" = String, Path, description = "The id of a response created with `store` (the default)")),
    responses(
        (status = 200, description = "The `response` object", body = ResponseObject),
        crate::error::ErrorResponses
))]
pub async fn retrieve(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    match state.responses.response(&id) {
        Some(body) => Ok(ok_json(&body)),
        None => Err(ApiError::NoSuchResponse { id, param: None }),
    }
}

/// Forgets a stored response.
#[utoipa::path(delete, path = "/v1/responses/{response_id}", operation_id = "deleteResponse", tag = "responses",
    params(("response_id" = String, Path, description = "The id of a stored response")),
    responses(
        (status = 200, description = "The response was forgotten", body = DeletedResponse),
        crate::error::ErrorResponses
))]
pub async fn delete(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    if !state.responses.delete(&id) {
        return Err(ApiError::NoSuchResponse { id, param: None });
    }
    Ok(ok_json(&DeletedResponse { id, object: "response.deleted", deleted: true }))
}

/// OpenAI's bounds on `metadata`: an object of at most 16 string values, keys up to 64
/// characters and values up to 512; it is echoed back, so anything else is refused.
fn check_metadata(metadata: &Value) -> Result<(), ApiError> {
    let bad = |message: &str| Err(ApiError::invalid("metadata", message));
    let Some(pairs) = metadata.as_object() else {
        return bad("`metadata` must be an object of string values");
    };
    if pairs.len() > 16 {
        return bad("`metadata` holds at most 16 keys");
    }
    for (key, value) in pairs {
        match value.as_str() {
            Some(text) if key.chars().count() <= 64 && text.chars().count() <= 512 => {}
            Some(_) => return bad("`metadata` keys have at most 64 characters and values at most 512"),
            None => return bad("`metadata` values must be strings"),
        }
    }
    Ok(())
}
