//! Anthropic's Messages API, as its SDKs send and read it: the request of `POST /v1/messages`
//! and `/v1/messages/count_tokens`, and the `message` it answers. Unknown fields are ignored, as
//! Anthropic's own API does for fields it does not use.
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct MessagesRequest {
    /// The served model's name (see `/v1/models`); any name is taken, as the OpenAI routes do
    /// when it is absent, since Anthropic's clients always send one.
    pub model: Option<String>,
    /// A string, or text blocks.
    #[schema(value_type = Object)]
    pub system: Option<SystemPrompt>,
    pub messages: Vec<InputMessage>,
    /// Required by Anthropic's API; at least 1.
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    pub stream: bool,
    pub tools: Option<Vec<AnthropicTool>>,
    pub tool_choice: Option<AnthropicToolChoice>,
    /// `user_id`: the end user, as OpenAI's `user`.
    #[schema(value_type = Object)]
    pub metadata: Option<Value>,
    /// `auto` | `off` | `alternate` | `verify` (this server's extension, as on the other routes).
    pub recycle: Option<String>,
    /// `{"type": "enabled" | "disabled"}`: the template's `enable_thinking` (a budget is not
    /// enforced apart from `max_tokens`).
    #[schema(value_type = Object)]
    pub thinking: Option<ThinkingConfig>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ThinkingConfig {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SystemPrompt {
    Text(String),
    Blocks(Vec<ContentBlock>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct InputMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// A string, or content blocks (`text`, `tool_use`, `tool_result`).
    #[schema(value_type = Object)]
    pub content: MessageContent,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Blocks(Vec<ContentBlock>),
}

/// A content block in a request; kinds this server cannot take (images, documents) are
/// refused by name; an assistant's earlier `thinking` is dropped, as templates drop it.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentBlock {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    /// `tool_use`: its id, tool name and input.
    pub id: Option<String>,
    pub name: Option<String>,
    pub input: Option<Value>,
    /// `tool_result`: the call it answers, and its content (a string or text blocks).
    pub tool_use_id: Option<String>,
    pub content: Option<Value>,
    pub is_error: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct AnthropicTool {
    pub name: String,
    pub description: Option<String>,
    /// A JSON schema of the tool's input.
    #[schema(value_type = Object)]
    pub input_schema: Value,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct AnthropicToolChoice {
    /// `auto`, `any`, `tool` (with `name`) or `none`.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: Option<String>,
    pub disable_parallel_tool_use: Option<bool>,
}

/// The answer: a `message`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MessageResponse {
    pub id: String,
    /// Always `message`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Always `assistant`.
    pub role: &'static str,
    pub model: String,
    pub content: Vec<OutputBlock>,
    /// `end_turn`, `max_tokens`, `stop_sequence` or `tool_use`; `null` while streaming.
    pub stop_reason: Option<&'static str>,
    /// The stop sequence that ended the answer, if one did.
    pub stop_sequence: Option<String>,
    pub usage: MessageUsage,
    /// How recycling went (this server's extension, as on the other routes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recycle: Option<crate::responses::RecycleStats>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputBlock {
    /// The model's reasoning; `signature` is empty (nothing is signed here).
    Thinking {
        thinking: String,
        signature: String,
    },
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[schema(value_type = Object)]
        input: Value,
    },
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct MessageUsage {
    pub input_tokens: usize,
    pub output_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cache_read_input_tokens: usize,
    pub cache_creation_input_tokens: usize,
}

/// What `POST /v1/messages/count_tokens` answers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenCount {
    pub input_tokens: usize,
}
