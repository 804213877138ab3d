//! The shapes of OpenAI's Responses API (`POST /v1/responses`), stateless: the request, the
//! `response` object, and the typed events of its stream.
use crate::openai::{Content, Role};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `input`: a string (one user message), or message items.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged, try_from = "Value")]
pub enum ResponseInput {
    Text(String),
    Items(Vec<InputItem>),
}

/// Read by hand so that a bad item is named with what is wrong with it (an unknown role, a
/// missing field), where an untagged enum says only that no variant matched.
impl TryFrom<Value> for ResponseInput {
    type Error = String;

    fn try_from(value: Value) -> Result<Self, String> {
        match value {
            Value::String(text) => Ok(ResponseInput::Text(text)),
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| serde_json::from_value(item).map_err(|e| format!("input[{i}]: {e}")))
                .collect::<Result<_, _>>()
                .map(ResponseInput::Items),
            _ => Err("`input` must be a string or a list of items".into()),
        }
    }
}

/// An input item: a message (`type` absent or `message`; content parts `input_text`, or
/// `output_text` in earlier assistant turns), an earlier `function_call`, or a
/// `function_call_output` answering one.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct InputItem {
    #[serde(rename = "type")]
    #[schema(pattern = "^(message|function_call|function_call_output)$")]
    pub kind: Option<String>,
    pub role: Option<Role>,
    pub content: Option<Content>,
    pub call_id: Option<String>,
    pub name: Option<String>,
    pub arguments: Option<String>,
    pub output: Option<String>,
}

/// A function the model may call (the Responses API's flat form).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ResponseTool {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[schema(value_type = Object)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `none`, `auto`, `required`, or `{"type": "function", "name": …}`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ResponseToolChoice {
    Mode(String),
    Function {
        #[serde(rename = "type")]
        kind: String,
        name: String,
    },
}

/// A call the model made, as an output item.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FunctionCallItem {
    /// Always `function_call`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub call_id: String,
    pub name: String,
    /// JSON text.
    pub arguments: String,
    pub status: &'static str,
}

/// The model's reasoning, as an output item: its text in `content` (`reasoning_text`), no
/// summary.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReasoningItem {
    /// Always `reasoning`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    #[schema(value_type = Vec<Object>)]
    pub summary: Vec<Value>,
    pub content: Vec<ReasoningText>,
    pub status: &'static str,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReasoningText {
    /// Always `reasoning_text`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
}

/// An output item: the model's reasoning, the assistant's message or a function call.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum OutputItem {
    Reasoning(ReasoningItem),
    Message(OutputMessage),
    FunctionCall(FunctionCallItem),
}

/// `text.format`: like chat's `response_format`, with the schema's fields at the top level.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TextFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        #[schema(value_type = Object)]
        schema: Option<Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct TextConfig {
    pub format: TextFormat,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ResponsesRequest {
    pub model: Option<String>,
    pub input: ResponseInput,
    /// A system message before the input.
    pub instructions: Option<String>,
    #[schema(minimum = 1)]
    pub max_output_tokens: Option<i64>,
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    pub text: Option<TextConfig>,
    #[serde(default)]
    pub stream: bool,
    /// Keep the response (default true, as in OpenAI's API) for `previous_response_id` and
    /// `GET /v1/responses/{id}`, in memory, bounded and expiring (`response_store_*`).
    pub store: Option<bool>,
    /// Continue from a stored response: its conversation (input and output, and those it
    /// continued) comes before this input; its `instructions` are not carried over.
    pub previous_response_id: Option<String>,
    pub tools: Option<Vec<ResponseTool>>,
    pub tool_choice: Option<ResponseToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    #[schema(value_type = Object)]
    pub metadata: Option<Value>,
    pub user: Option<String>,
    /// `auto` | `off` | `alternate` | `verify` (an extension, as on the other endpoints).
    #[schema(pattern = "^(auto|off|alternate|verify)$")]
    pub recycle: Option<String>,
    #[serde(default)]
    pub seed: Option<i64>,
    /// `{"effort": …}`: given to the chat template as chat's `reasoning_effort` is.
    pub reasoning: Option<ReasoningParams>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ReasoningParams {
    pub effort: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutputText {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
    #[schema(value_type = Vec<Object>)]
    pub annotations: Vec<Value>,
}

impl OutputText {
    pub fn new(text: String) -> Self {
        Self { kind: "output_text", text, annotations: Vec::new() }
    }
}

/// The assistant's message, the one output item.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutputMessage {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub status: &'static str,
    pub role: &'static str,
    pub content: Vec<OutputText>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InputTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseUsage {
    pub input_tokens: usize,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: usize,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IncompleteDetails {
    /// `max_output_tokens` (or the end of the context).
    pub reason: &'static str,
}

/// A `response` object: whole, or as the stream's `response.created` / `.completed` carry it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: u64,
    /// `in_progress`, `completed` or `incomplete`.
    pub status: &'static str,
    pub incomplete_details: Option<IncompleteDetails>,
    #[schema(value_type = Object)]
    pub error: Option<Value>,
    pub model: String,
    pub output: Vec<OutputItem>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub temperature: f64,
    pub top_p: f64,
    pub text: TextConfig,
    pub tool_choice: ResponseToolChoice,
    pub tools: Vec<ResponseTool>,
    pub parallel_tool_calls: bool,
    pub store: bool,
    pub previous_response_id: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub truncation: &'static str,
    pub usage: Option<ResponseUsage>,
    /// How recycling went (an extension, as on the other endpoints).
    pub recycle: Option<crate::responses::RecycleStats>,
}

/// What `DELETE /v1/responses/{id}` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedResponse {
    pub id: String,
    /// Always `response.deleted`.
    pub object: &'static str,
    pub deleted: bool,
}
