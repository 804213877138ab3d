//! Anthropic's message stream: `message_start`, a `ping`, then each content block as
//! `content_block_start`, its deltas (`thinking_delta` for the model's reasoning, `text_delta`,
//! or `input_json_delta` for a tool's input)
//! and `content_block_stop`, then `message_delta` (the stop reason and output tokens) and
//! `message_stop`. Each event's `type` is also its SSE event name. With tools, text that may be
//! a call is held back until the answer ends, then sent as `tool_use` blocks, so no call leaks
//! into the text. A failure mid-stream is an `error` event.
use super::messages::stop_reason;
use crate::answer::Answers;
use crate::anthropic::OutputBlock;
use crate::generation::{recycle_stats, Generation, Progress};
use crate::openai::ToolCall;
use crate::tools::argument_pieces;
use crate::validation::Plan;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::convert::Infallible;

/// What the stream and the whole message share.
pub(super) struct Shape {
    pub id: String,
    pub model: String,
    pub input_tokens: usize,
    pub answers: Answers,
}

/// A call's id in Anthropic's form.
fn tool_use_id(call: &ToolCall) -> String {
    format!("toolu_{}", call.id.trim_start_matches("call_"))
}

/// A call as a `tool_use` block: its id in Anthropic's form, its arguments as the input object.
pub(super) fn tool_use(call: &ToolCall) -> OutputBlock {
    OutputBlock::ToolUse {
        id: tool_use_id(call),
        name: call.function.name.clone(),
        input: serde_json::from_str(&call.function.arguments).unwrap_or_else(|_| json!({})),
    }
}

fn event(kind: &str, mut body: Value) -> Result<SseEvent, Infallible> {
    body["type"] = json!(kind);
    Ok(SseEvent::default().event(kind).data(body.to_string()))
}

/// The kinds of block that stream in pieces.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Thinking,
    Text,
}

pub(super) fn stream(shape: Shape, mut generation: Generation, plan: Plan) -> Response {
    let events = async_stream::stream! {
        let usage = json!({"input_tokens": shape.input_tokens, "output_tokens": 0});
        yield event("message_start", json!({"message": {"id": shape.id, "type": "message", "role": "assistant",
            "model": shape.model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage}}));
        yield event("ping", json!({}));
        // Blocks started so far, and the one open (the last started, while it may grow).
        let (mut blocks, mut open) = (0usize, None::<Open>);
        let mut splitter = shape.answers.splitter();
        loop {
            let (parts, end) = match generation.next().await {
                Ok(Progress::Text { text, .. }) => (splitter.push(&text), None),
                Ok(Progress::Finished(end)) => (splitter.finish(&end.text), Some(end)),
                Err(error) => {
                    let message = error.to_string();
                    yield event("error", json!({"error": {"type": "api_error", "message": message}}));
                    break;
                }
            };
            // An answer with nothing at all still gets its (empty) text block.
            let empty_answer = end.is_some() && blocks == 0 && parts.reasoning.is_empty() && parts.calls.is_empty();
            let pieces = [(Open::Thinking, parts.reasoning), (Open::Text, parts.text)];
            for (kind, piece) in pieces {
                if piece.is_empty() && !(kind == Open::Text && empty_answer) {
                    continue;
                }
                if open != Some(kind) {
                    if open.is_some() {
                        yield event("content_block_stop", json!({"index": blocks - 1}));
                    }
                    let block = match kind {
                        Open::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
                        Open::Text => json!({"type": "text", "text": ""}),
                    };
                    yield event("content_block_start", json!({"index": blocks, "content_block": block}));
                    (blocks, open) = (blocks + 1, Some(kind));
                }
                if !piece.is_empty() {
                    let delta = match kind {
                        Open::Thinking => json!({"type": "thinking_delta", "thinking": piece}),
                        Open::Text => json!({"type": "text_delta", "text": piece}),
                    };
                    yield event("content_block_delta", json!({"index": blocks - 1, "delta": delta}));
                }
            }
            let Some(end) = end else { continue };
            if open.is_some() {
                yield event("content_block_stop", json!({"index": blocks - 1}));
            }
            for call in &parts.calls {
                let index = blocks;
                blocks += 1;
                yield event("content_block_start", json!({"index": index, "content_block":
                    {"type": "tool_use", "id": tool_use_id(call), "name": call.function.name, "input": {}}}));
                for piece in argument_pieces(&call.function.arguments) {
                    yield event("content_block_delta", json!({"index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece}}));
                }
                yield event("content_block_stop", json!({"index": index}));
            }
            let reason = stop_reason(Some(end.reason), &end.stop_sequence, !parts.calls.is_empty());
            let output = generation.usage().completion_tokens;
            // How recycling went: this server's extension, as on the other routes.
            let recycle = recycle_stats(&plan, &[end.counters()]);
            yield event("message_delta", json!({"delta": {"stop_reason": reason, "stop_sequence": end.stop_sequence},
                "usage": {"output_tokens": output}, "recycle": recycle}));
            yield event("message_stop", json!({}));
            break;
        }
    };
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
