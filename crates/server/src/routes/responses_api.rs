//! `POST /v1/responses`: OpenAI's Responses API, stateless. The input becomes a chat (with
//! `instructions` as its system message) and runs as a chat completion does; the answer comes
//! back as one assistant message item, whole or as the API's typed stream events.
use crate::chat_template::ChatMessage;
use crate::error::{ApiError, ApiJson};
use crate::generation::{collect, ok_json, recycle_stats, shared, submit, Choice, Generation, Progress};
use crate::openai::{JsonSchemaFormat, ResponseFormat, SamplingFields, Usage};
use crate::openai_responses::{
    IncompleteDetails, InputTokensDetails, OutputMessage, OutputText, OutputTokensDetails, ResponseInput,
    ResponseObject, ResponseUsage, ResponsesRequest, TextConfig, TextFormat,
};
use crate::responses::FinishReason;
use crate::validation::{plan, Plan};
use crate::{structured, AppState};
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;

/// The chat the input stands for: `instructions` first, then the input's messages.
fn chat_messages(request: &ResponsesRequest) -> Result<Vec<ChatMessage>, ApiError> {
    let mut messages = Vec::new();
    if let Some(instructions) = &request.instructions {
        messages.push(ChatMessage { role: "system".into(), content: instructions.clone() });
    }
    match &request.input {
        ResponseInput::Text(text) => messages.push(ChatMessage { role: "user".into(), content: text.clone() }),
        ResponseInput::Items(items) => {
            let mut chat = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                if let Some(kind) = item.kind.as_deref().filter(|k| *k != "message") {
                    return Err(ApiError::invalid(
                        "input",
                        format!("input[{i}]: items of type `{kind}` are not supported (only `message`)"),
                    ));
                }
                let role = item.role.ok_or_else(|| ApiError::invalid("input", format!("input[{i}] has no `role`")))?;
                chat.push(crate::openai::Message {
                    role,
                    content: item.content.clone(),
                    tool_calls: None,
                    tool_call_id: None,
                });
            }
            messages.extend(super::chat::template_messages_of("input", &chat)?);
        }
    }
    if messages.is_empty() {
        return Err(ApiError::invalid("input", "`input` must not be empty"));
    }
    Ok(messages)
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

/// What the stream and the whole response share.
struct Shape {
    id: String,
    message_id: String,
    model: String,
    created_at: u64,
    request: ResponsesRequest,
}

impl Shape {
    fn object(&self, status: &'static str, output: Vec<OutputMessage>, usage: Option<Usage>) -> ResponseObject {
        let request = &self.request;
        ResponseObject {
            id: self.id.clone(),
            object: "response",
            created_at: self.created_at,
            status,
            incomplete_details: (status == "incomplete").then_some(IncompleteDetails { reason: "max_output_tokens" }),
            error: None,
            model: self.model.clone(),
            output,
            instructions: request.instructions.clone(),
            max_output_tokens: request.max_output_tokens,
            temperature: request.temperature.unwrap_or(1.0),
            top_p: request.top_p.unwrap_or(1.0),
            text: request.text.clone().unwrap_or(TextConfig { format: TextFormat::Text }),
            tool_choice: "auto",
            tools: Vec::new(),
            parallel_tool_calls: true,
            store: false,
            previous_response_id: None,
            metadata: request.metadata.clone().unwrap_or_else(|| json!({})),
            truncation: "disabled",
            usage: usage.map(|u| ResponseUsage {
                input_tokens: u.prompt_tokens,
                input_tokens_details: InputTokensDetails { cached_tokens: u.prompt_tokens_details.cached_tokens },
                output_tokens: u.completion_tokens,
                output_tokens_details: OutputTokensDetails { reasoning_tokens: 0 },
                total_tokens: u.total_tokens,
            }),
            recycle: None,
        }
    }

    fn message(&self, status: &'static str, text: Option<String>) -> OutputMessage {
        OutputMessage {
            kind: "message",
            id: self.message_id.clone(),
            status,
            role: "assistant",
            content: text.map(OutputText::new).into_iter().collect(),
        }
    }
}

fn status_of(reason: Option<FinishReason>) -> &'static str {
    match reason {
        Some(FinishReason::Length) => "incomplete",
        _ => "completed",
    }
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
    if request.store == Some(true) {
        return Err(ApiError::invalid("store", "this server stores no responses: `store` must be false or absent"));
    }
    if request.previous_response_id.is_some() {
        return Err(ApiError::invalid(
            "previous_response_id",
            "this server stores no responses: send the whole conversation in `input`",
        ));
    }
    if request.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid("tools", "tools are not served on /v1/responses yet"));
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
    let prompt = state.prompts.chat(chat_messages(&request)?).await?;
    let mut plan = plan(&fields, request.max_output_tokens, None, vec![prompt], &state.limits)?;
    plan.grammar = structured::grammar(&state, fields.response_format.as_ref()).await?;
    let id = format!("resp_{}", state.next_request_id());
    let generation = submit(&state, &plan, &id)?;
    let (model, created_at) = shared(&state);
    let shape = Shape { message_id: format!("msg_{}", state.next_request_id()), id, model, created_at, request };
    if plan.stream {
        metrics::counter!("recyclegpt_requests_total", "status" => "200").increment(1);
        return Ok(stream(shape, generation, plan));
    }
    let (choices, usage) = collect(generation).await?;
    let choice = choices.first().cloned().unwrap_or_default();
    let status = status_of(choice.finish_reason);
    let mut body = shape.object(status, vec![shape.message(status, Some(choice.text.clone()))], Some(usage));
    body.recycle = Some(recycle_stats(&plan, &choices));
    Ok(ok_json(&body))
}

/// The typed events, each with its `type` as the SSE event name and a running
/// `sequence_number`, as OpenAI's SDKs read them.
fn stream(shape: Shape, mut generation: Generation, plan: Plan) -> Response {
    let events = async_stream::stream! {
        let mut sequence = 0u64;
        let mut event = move |kind: &str, mut body: Value| {
            body["type"] = json!(kind);
            body["sequence_number"] = json!(sequence);
            sequence += 1;
            Ok::<_, Infallible>(SseEvent::default().event(kind).data(body.to_string()))
        };
        let part = |index: usize| json!({"item_id": shape.message_id, "output_index": 0, "content_index": index});
        yield event("response.created", json!({"response": shape.object("in_progress", Vec::new(), None)}));
        yield event("response.in_progress", json!({"response": shape.object("in_progress", Vec::new(), None)}));
        yield event("response.output_item.added", json!({"output_index": 0, "item": shape.message("in_progress", None)}));
        let mut added = part(0);
        added["part"] = json!(OutputText::new(String::new()));
        yield event("response.content_part.added", added);
        let mut text = String::new();
        loop {
            let (delta, end) = match generation.next().await {
                Ok(Progress::Text { text, .. }) => (text, None),
                Ok(Progress::Finished(end)) => (end.text.clone(), Some(end)),
                Err(error) => {
                    let mut failed = shape.object("failed", Vec::new(), None);
                    failed.error = serde_json::to_value(error.body()).ok().map(|b| b["error"].clone());
                    yield event("response.failed", json!({"response": failed}));
                    break;
                }
            };
            if !delta.is_empty() {
                let mut body = part(0);
                body["delta"] = json!(delta);
                body["logprobs"] = json!([]);
                yield event("response.output_text.delta", body);
                text.push_str(&delta);
            }
            let Some(end) = end else { continue };
            let status = status_of(Some(end.reason));
            let mut done = part(0);
            done["text"] = json!(text);
            done["logprobs"] = json!([]);
            yield event("response.output_text.done", done);
            let mut part_done = part(0);
            part_done["part"] = json!(OutputText::new(text.clone()));
            yield event("response.content_part.done", part_done);
            let message = shape.message(status, Some(text.clone()));
            yield event("response.output_item.done", json!({"output_index": 0, "item": message}));
            let mut response = shape.object(status, vec![message], Some(generation.usage()));
            let choice = Choice { completion_tokens: end.completion_tokens, stats: end.stats, ..Choice::default() };
            response.recycle = Some(recycle_stats(&plan, &[choice]));
            let kind = if status == "completed" { "response.completed" } else { "response.incomplete" };
            yield event(kind, json!({"response": response}));
            break;
        }
    };
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
