//! Anthropic's message stream: `message_start`, a `ping`, then each content block as
//! `content_block_start`, its deltas (`text_delta`, or `input_json_delta` for a tool's input)
//! and `content_block_stop`, then `message_delta` (the stop reason and output tokens) and
//! `message_stop`. Each event's `type` is also its SSE event name. With tools, text that may be
//! a call is held back until the answer ends, then sent as `tool_use` blocks, so no call leaks
//! into the text. A failure mid-stream is an `error` event.
use super::messages::stop_reason;
use crate::anthropic::OutputBlock;
use crate::generation::{recycle_stats, Choice, Generation, Progress};
use crate::openai::ToolCall;
use crate::tools::{argument_pieces, CallHolder, ToolPlan};
use crate::validation::Plan;
use crate::AppState;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;

/// What the stream and the whole message share.
pub(super) struct Shape {
    pub id: String,
    pub model: String,
    pub input_tokens: usize,
    pub tools: Option<ToolPlan>,
    pub state: Arc<AppState>,
}

impl Shape {
    /// The text's tool calls (with tools) and what remains of it.
    pub fn split(&self, text: &str) -> (Option<String>, Vec<ToolCall>) {
        match &self.tools {
            Some(tools) => {
                let state = self.state.clone();
                tools.parse(text, &mut move || state.next_call_id())
            }
            None => (Some(text.to_string()), Vec::new()),
        }
    }
}

/// A call as a `tool_use` block: its id in Anthropic's form, its arguments as the input object.
pub(super) fn tool_use(call: &ToolCall) -> OutputBlock {
    OutputBlock::ToolUse {
        id: format!("toolu_{}", call.id.trim_start_matches("call_")),
        name: call.function.name.clone(),
        input: serde_json::from_str(&call.function.arguments).unwrap_or_else(|_| json!({})),
    }
}

fn event(kind: &str, mut body: Value) -> Result<SseEvent, Infallible> {
    body["type"] = json!(kind);
    Ok(SseEvent::default().event(kind).data(body.to_string()))
}

pub(super) fn stream(shape: Shape, mut generation: Generation, plan: Plan) -> Response {
    let events = async_stream::stream! {
        let usage = json!({"input_tokens": shape.input_tokens, "output_tokens": 0});
        yield event("message_start", json!({"message": {"id": shape.id, "type": "message", "role": "assistant",
            "model": shape.model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage}}));
        yield event("ping", json!({}));
        // Blocks opened so far; whether the text block (always block 0 when there is one) is open.
        let (mut blocks, mut text_open) = (0usize, false);
        let mut holder = CallHolder::default();
        loop {
            let (delta, end) = match generation.next().await {
                Ok(Progress::Text { text, .. }) => (text, None),
                Ok(Progress::Finished(end)) => (end.text.clone(), Some(end)),
                Err(error) => {
                    let message = error.to_string();
                    yield event("error", json!({"error": {"type": "api_error", "message": message}}));
                    break;
                }
            };
            let mut send = if shape.tools.is_some() { holder.push(&delta) } else { delta };
            let mut calls = Vec::new();
            if end.is_some() {
                let held = holder.take();
                let (content, parsed) = shape.split(&held);
                if parsed.is_empty() {
                    send.push_str(&held);
                } else {
                    calls = parsed;
                    send.push_str(&content.unwrap_or_default());
                }
            }
            // The text block opens with its first text; an answer with neither text nor calls
            // still gets its (empty) text block.
            let empty_answer = end.is_some() && blocks == 0 && calls.is_empty();
            if !text_open && blocks == 0 && (!send.is_empty() || empty_answer) {
                yield event("content_block_start", json!({"index": 0, "content_block": {"type": "text", "text": ""}}));
                (blocks, text_open) = (1, true);
            }
            if !send.is_empty() {
                yield event("content_block_delta", json!({"index": 0, "delta": {"type": "text_delta", "text": send}}));
            }
            let Some(end) = end else { continue };
            if text_open {
                yield event("content_block_stop", json!({"index": 0}));
            }
            for call in &calls {
                let index = blocks;
                blocks += 1;
                let OutputBlock::ToolUse { id, name, .. } = tool_use(call) else { continue };
                yield event("content_block_start", json!({"index": index,
                    "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}));
                for piece in argument_pieces(&call.function.arguments) {
                    yield event("content_block_delta", json!({"index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece}}));
                }
                yield event("content_block_stop", json!({"index": index}));
            }
            let reason = stop_reason(Some(end.reason), &end.stop_sequence, !calls.is_empty());
            let output = generation.usage().completion_tokens;
            let choice = Choice { completion_tokens: end.completion_tokens, stats: end.stats, ..Choice::default() };
            // How recycling went: this server's extension, as on the other routes.
            let recycle = recycle_stats(&plan, &[choice]);
            yield event("message_delta", json!({"delta": {"stop_reason": reason, "stop_sequence": end.stop_sequence},
                "usage": {"output_tokens": output}, "recycle": recycle}));
            yield event("message_stop", json!({}));
            break;
        }
    };
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
