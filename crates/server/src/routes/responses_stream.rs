//! The Responses API's stream: typed events, each with its `type` as the SSE event name and a
//! running `sequence_number`, as OpenAI's SDKs read them. Reasoning the model marks streams as a
//! `reasoning` item (`response.reasoning_text.delta`), the answer as the message item, each
//! opening with its first text; with tools, text that may be a function call is held back until
//! the answer ends, then sent as `function_call` items (`response.function_call_arguments.delta`
//! pieces, then `.done`), so no argument text is lost and no call leaks into the message.
use super::responses_shape::{status_of, Shape};
use crate::generation::{recycle_stats, Generation, Progress};
use crate::openai_responses::{OutputItem, OutputText};
use crate::tools::argument_pieces;
use crate::validation::Plan;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::convert::Infallible;

/// The items that stream in pieces.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reasoning,
    Message,
}

/// The item being streamed: its kind, place in the output, and text so far.
struct Open {
    kind: Kind,
    index: usize,
    text: String,
}

impl Shape {
    fn item_id(&self, kind: Kind) -> String {
        match kind {
            Kind::Reasoning => self.reasoning("in_progress", String::new()).id,
            Kind::Message => self.message_id.clone(),
        }
    }

    /// The events that open an item of `kind` at `index`.
    fn opening(&self, kind: Kind, index: usize) -> Vec<(&'static str, Value)> {
        match kind {
            Kind::Reasoning => {
                let mut item = self.reasoning("in_progress", String::new());
                let part = item.content.pop();
                vec![
                    ("response.output_item.added", json!({"output_index": index, "item": item})),
                    (
                        "response.content_part.added",
                        json!({"item_id": item.id, "output_index": index, "content_index": 0, "part": part}),
                    ),
                ]
            }
            Kind::Message => vec![
                (
                    "response.output_item.added",
                    json!({"output_index": index, "item": self.message("in_progress", None)}),
                ),
                (
                    "response.content_part.added",
                    json!({"item_id": self.message_id, "output_index": index, "content_index": 0,
                        "part": OutputText::new(String::new())}),
                ),
            ],
        }
    }

    fn delta(&self, open: &Open, delta: &str) -> (&'static str, Value) {
        let mut body = json!({"item_id": self.item_id(open.kind), "output_index": open.index, "content_index": 0,
            "delta": delta});
        match open.kind {
            Kind::Reasoning => ("response.reasoning_text.delta", body),
            Kind::Message => {
                body["logprobs"] = json!([]);
                ("response.output_text.delta", body)
            }
        }
    }

    /// The events that close `open` (a message with `status`), and the item it became.
    fn closing(&self, open: Open, status: &'static str) -> (Vec<(&'static str, Value)>, OutputItem) {
        let place = json!({"item_id": self.item_id(open.kind), "output_index": open.index, "content_index": 0});
        let with = |mut body: Value, key: &str, value: Value| {
            body[key] = value;
            body
        };
        match open.kind {
            Kind::Reasoning => {
                let item = self.reasoning("completed", open.text.clone());
                let events = vec![
                    ("response.reasoning_text.done", with(place.clone(), "text", json!(open.text))),
                    ("response.content_part.done", with(place, "part", json!(item.content[0]))),
                    ("response.output_item.done", json!({"output_index": open.index, "item": item})),
                ];
                (events, OutputItem::Reasoning(item))
            }
            Kind::Message => {
                let message = self.message(status, Some(open.text.clone()));
                let done = with(with(place.clone(), "text", json!(open.text)), "logprobs", json!([]));
                let events = vec![
                    ("response.output_text.done", done),
                    ("response.content_part.done", with(place, "part", json!(OutputText::new(open.text)))),
                    ("response.output_item.done", json!({"output_index": open.index, "item": message})),
                ];
                (events, OutputItem::Message(message))
            }
        }
    }
}

pub(super) fn stream(shape: Shape, mut generation: Generation, plan: Plan) -> Response {
    let events = async_stream::stream! {
        let mut sequence = 0u64;
        let mut event = move |kind: &str, mut body: Value| {
            body["type"] = json!(kind);
            body["sequence_number"] = json!(sequence);
            sequence += 1;
            Ok::<_, Infallible>(SseEvent::default().event(kind).data(body.to_string()))
        };
        yield event("response.created", json!({"response": shape.object("in_progress", Vec::new(), None)}));
        yield event("response.in_progress", json!({"response": shape.object("in_progress", Vec::new(), None)}));
        // Items done, the one open, and the message's text (for the stored conversation).
        let (mut output, mut open, mut message) = (Vec::new(), None::<Open>, None::<String>);
        let mut splitter = shape.answers.splitter();
        loop {
            let (parts, end) = match generation.next().await {
                Ok(Progress::Text { text, .. }) => (splitter.push(&text), None),
                Ok(Progress::Finished(end)) => (splitter.finish(&end.text), Some(end)),
                Err(error) => {
                    let mut failed = shape.object("failed", Vec::new(), None);
                    failed.error = serde_json::to_value(error.body()).ok().map(|b| b["error"].clone());
                    yield event("response.failed", json!({"response": failed}));
                    break;
                }
            };
            let status = status_of(end.as_ref().map(|e| e.reason));
            // An answer with nothing at all still gets its (empty) message item.
            let empty_answer = end.is_some() && output.is_empty() && open.is_none()
                && parts.reasoning.is_empty() && parts.calls.is_empty();
            for (kind, piece) in [(Kind::Reasoning, parts.reasoning), (Kind::Message, parts.text)] {
                if piece.is_empty() && !(kind == Kind::Message && empty_answer) {
                    continue;
                }
                if open.as_ref().map(|o| o.kind) != Some(kind) {
                    if let Some(done) = open.take() {
                        let (events, item) = shape.closing(done, status);
                        for (name, body) in events {
                            yield event(name, body);
                        }
                        output.push(item);
                    }
                    for (name, body) in shape.opening(kind, output.len()) {
                        yield event(name, body);
                    }
                    open = Some(Open { kind, index: output.len(), text: String::new() });
                }
                if let Some(open) = open.as_mut().filter(|_| !piece.is_empty()) {
                    let (name, body) = shape.delta(open, &piece);
                    yield event(name, body);
                    open.text.push_str(&piece);
                }
            }
            let Some(end) = end else { continue };
            if let Some(done) = open.take() {
                if done.kind == Kind::Message {
                    message = Some(done.text.clone());
                }
                let (events, item) = shape.closing(done, status);
                for (name, body) in events {
                    yield event(name, body);
                }
                output.push(item);
            }
            for call in &parts.calls {
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
            let mut response = shape.object(status, std::mem::take(&mut output), Some(generation.usage()));
            response.recycle = Some(recycle_stats(&plan, &[end.counters()]));
            shape.keep(&response, message.take(), &parts.calls);
            let kind = if status == "completed" { "response.completed" } else { "response.incomplete" };
            yield event(kind, json!({"response": response}));
            break;
        }
    };
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
