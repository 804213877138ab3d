//! The Responses API's stream: typed events, each with its `type` as the SSE event name and a
//! running `sequence_number`, as OpenAI's SDKs read them. The message item opens when its first
//! text is sent; with tools, text that may be a function call is held back until the answer
//! ends, then sent as `function_call` items (`response.function_call_arguments.delta` pieces,
//! then `.done`), so no argument text is lost and no call leaks into the message.
use super::responses_shape::{status_of, Shape};
use crate::generation::{recycle_stats, Choice, Generation, Progress};
use crate::openai_responses::{OutputItem, OutputText};
use crate::tools::{argument_pieces, CallHolder};
use crate::validation::Plan;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::convert::Infallible;

pub(super) fn stream(shape: Shape, mut generation: Generation, plan: Plan) -> Response {
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
        // The message's text sent so far (`None` until its item opens), and text held back.
        let mut text: Option<String> = None;
        let mut holder = CallHolder::default();
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
            let mut calls = Vec::new();
            let mut send = if shape.tools.is_some() { holder.push(&delta) } else { delta };
            if end.is_some() {
                let held = holder.take();
                if !held.is_empty() {
                    let (content, parsed) = shape.split(&held);
                    if parsed.is_empty() {
                        send.push_str(&held);
                    } else {
                        calls = parsed;
                        send.push_str(&content.unwrap_or_default());
                    }
                }
            }
            // The message item opens with its first text; an answer with neither text nor calls
            // still gets its (empty) message item.
            let empty_answer = end.is_some() && text.is_none() && calls.is_empty();
            if text.is_none() && (!send.is_empty() || empty_answer) {
                yield event("response.output_item.added", json!({"output_index": 0, "item": shape.message("in_progress", None)}));
                let mut added = part(0);
                added["part"] = json!(OutputText::new(String::new()));
                yield event("response.content_part.added", added);
                text = Some(String::new());
            }
            if !send.is_empty() {
                let mut body = part(0);
                body["delta"] = json!(send);
                body["logprobs"] = json!([]);
                yield event("response.output_text.delta", body);
                text.get_or_insert_with(String::new).push_str(&send);
            }
            let Some(end) = end else { continue };
            let status = status_of(Some(end.reason));
            let mut output = Vec::new();
            if let Some(text) = &text {
                let mut done = part(0);
                done["text"] = json!(text);
                done["logprobs"] = json!([]);
                yield event("response.output_text.done", done);
                let mut part_done = part(0);
                part_done["part"] = json!(OutputText::new(text.clone()));
                yield event("response.content_part.done", part_done);
                let message = shape.message(status, Some(text.clone()));
                yield event("response.output_item.done", json!({"output_index": 0, "item": message}));
                output.push(OutputItem::Message(message));
            }
            for call in &calls {
                let index = output.len();
                let opening = shape.call_item(call, "in_progress", String::new());
                yield event("response.output_item.added", json!({"output_index": index, "item": opening}));
                for delta in argument_pieces(&call.function.arguments) {
                    yield event("response.function_call_arguments.delta",
                        json!({"item_id": opening.id, "output_index": index, "delta": delta}));
                }
                yield event("response.function_call_arguments.done",
                    json!({"item_id": opening.id, "output_index": index, "arguments": call.function.arguments}));
                let item = shape.call_item(call, "completed", call.function.arguments.clone());
                yield event("response.output_item.done", json!({"output_index": index, "item": item}));
                output.push(OutputItem::FunctionCall(item));
            }
            let mut response = shape.object(status, output, Some(generation.usage()));
            let choice = Choice { completion_tokens: end.completion_tokens, stats: end.stats, ..Choice::default() };
            response.recycle = Some(recycle_stats(&plan, &[choice]));
            shape.keep(&response, text.clone(), &calls);
            let kind = if status == "completed" { "response.completed" } else { "response.incomplete" };
            yield event(kind, json!({"response": response}));
            break;
        }
    };
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
