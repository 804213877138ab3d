//! The `response` object's shape, shared by the whole answer (`responses_api`) and the stream
//! (`responses_stream`).
use crate::answer::Answers;
use crate::chat_template::ChatMessage;
use crate::openai::{Content, Message, Role, ToolCall, Usage};
use crate::openai_responses::{
    FunctionCallItem, IncompleteDetails, InputTokensDetails, OutputItem, OutputMessage, OutputText,
    OutputTokensDetails, ReasoningItem, ReasoningText, ResponseObject, ResponseToolChoice, ResponseUsage,
    ResponsesRequest, TextConfig, TextFormat,
};
use crate::responses::FinishReason;
use crate::AppState;
use serde_json::json;
use std::sync::Arc;

/// What the stream and the whole response share.
pub(crate) struct Shape {
    pub id: String,
    pub message_id: String,
    pub model: String,
    pub created_at: u64,
    pub request: ResponsesRequest,
    pub answers: Answers,
    pub state: Arc<AppState>,
    /// Whether the response is kept (`store`), and the conversation its output continues: the
    /// stored one it follows (`previous_response_id`), then this input (not `instructions`).
    pub store: bool,
    pub conversation: Vec<ChatMessage>,
}

impl Shape {
    pub fn object(&self, status: &'static str, output: Vec<OutputItem>, usage: Option<Usage>) -> ResponseObject {
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
            tool_choice: request.tool_choice.clone().unwrap_or(ResponseToolChoice::Mode("auto".into())),
            tools: request.tools.clone().unwrap_or_default(),
            parallel_tool_calls: request.parallel_tool_calls.unwrap_or(true),
            store: self.store,
            previous_response_id: request.previous_response_id.clone(),
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

    /// Keeps `response` (with `store`), and the conversation it ends, its output as the
    /// assistant's turn (`text` and `calls`, as a chat would hold them), for a later
    /// `previous_response_id`.
    pub fn keep(&self, response: &ResponseObject, text: Option<String>, calls: &[ToolCall]) {
        if !self.store {
            return;
        }
        let answer = Message {
            role: Role::Assistant,
            content: text.map(Content::Text),
            tool_calls: (!calls.is_empty()).then(|| calls.to_vec()),
            tool_call_id: None,
        };
        match (super::chat::template_messages_of("output", &[answer]), serde_json::to_value(response)) {
            (Ok(output), Ok(value)) => {
                let conversation = self.conversation.iter().cloned().chain(output).collect();
                self.state.responses.insert(&self.id, value, conversation);
            }
            (Err(error), _) => tracing::warn!(id = self.id, %error, "a response not stored"),
            (_, Err(error)) => tracing::warn!(id = self.id, %error, "a response not stored"),
        }
    }

    pub fn message(&self, status: &'static str, text: Option<String>) -> OutputMessage {
        OutputMessage {
            kind: "message",
            id: self.message_id.clone(),
            status,
            role: "assistant",
            content: text.map(OutputText::new).into_iter().collect(),
        }
    }
}

impl Shape {
    pub fn reasoning(&self, status: &'static str, text: String) -> ReasoningItem {
        ReasoningItem {
            kind: "reasoning",
            id: format!("rs_{}", self.message_id.trim_start_matches("msg_")),
            summary: Vec::new(),
            content: vec![ReasoningText { kind: "reasoning_text", text }],
            status,
        }
    }

    pub fn call_item(&self, call: &ToolCall, status: &'static str, arguments: String) -> FunctionCallItem {
        FunctionCallItem {
            kind: "function_call",
            id: format!("fc_{}", call.id.trim_start_matches("call_")),
            call_id: call.id.clone(),
            name: call.function.name.clone(),
            arguments,
            status,
        }
    }
}

pub(crate) fn status_of(reason: Option<FinishReason>) -> &'static str {
    match reason {
        Some(FinishReason::Length) => "incomplete",
        _ => "completed",
    }
}
