//! OpenAI's request and response shapes for completions and chat completions.
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::ToSchema;

/// `prompt`: a string, a list of strings, token ids, or a list of token-id lists.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(#[serde(deserialize_with = "token_ids")] Vec<u32>),
    IdLists(#[serde(deserialize_with = "token_id_lists")] Vec<Vec<u32>>),
}

/// An optional integer, also when written as an integral float (`13.0` is an integer in JSON
/// Schema, and some clients serialise every number as a float).
fn integral<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Int(i64),
        Float(f64),
    }
    match Option::<Number>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Number::Int(value)) => Ok(Some(value)),
        // Beyond 2^53 a float no longer holds every integer; such values are refused.
        Some(Number::Float(value)) if value.fract() == 0.0 && value.abs() <= 9.0e15 => Ok(Some(value as i64)),
        Some(Number::Float(value)) => Err(serde::de::Error::custom(format!("{value} is not an integer"))),
    }
}

/// A token id, also when written as an integral float (`42.0` is an integer in JSON Schema).
#[derive(Deserialize)]
#[serde(transparent)]
struct TokenId(#[serde(deserialize_with = "token_id")] u32);

fn token_id<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if value.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&value) {
        Ok(value as u32)
    } else {
        Err(serde::de::Error::custom(format!("{value} is not a token id")))
    }
}

fn token_ids<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<u32>, D::Error> {
    Ok(Vec::<TokenId>::deserialize(deserializer)?.into_iter().map(|t| t.0).collect())
}

fn token_id_lists<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<Vec<u32>>, D::Error> {
    let lists = Vec::<Vec<TokenId>>::deserialize(deserializer)?;
    Ok(lists.into_iter().map(|l| l.into_iter().map(|t| t.0).collect()).collect())
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling and stopping fields shared by both endpoints. The ranges declared here are the
/// ones validation enforces; a request may still be refused for what only the model knows
/// (prompt + max_tokens over the context, a token id outside the vocabulary).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct SamplingFields {
    /// The served model's name (see `/v1/models`).
    pub model: Option<String>,
    /// At least 1; prompt + max_tokens must fit the model's context.
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "integral")]
    pub max_tokens: Option<i64>,
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// Greater than 0.
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    /// -1 or 0: off.
    #[schema(minimum = -1)]
    #[serde(default, deserialize_with = "integral")]
    pub top_k: Option<i64>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub min_p: Option<f64>,
    /// Prompts × n must not exceed `max_sequences_per_request`.
    #[schema(minimum = 1, maximum = 16)]
    #[serde(default, deserialize_with = "integral")]
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Up to 4 non-empty strings of at most `max_stop_bytes` bytes each.
    pub stop: Option<Stop>,
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub presence_penalty: Option<f64>,
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub frequency_penalty: Option<f64>,
    #[schema(minimum = 0.01, maximum = 10.0)]
    pub repetition_penalty: Option<f64>,
    /// Token id (a decimal string without leading zeros) → bias in [-100, 100].
    pub logit_bias: Option<HashMap<String, f64>>,
    #[serde(default, deserialize_with = "integral")]
    pub seed: Option<i64>,
    pub user: Option<String>,
    /// `auto` | `off` | `alternate` | `verify`; the server's default when absent.
    #[schema(pattern = "^(auto|off|alternate|verify)$")]
    pub recycle: Option<String>,
    /// Constrains the output to JSON: any object, or one that fits a schema.
    pub response_format: Option<ResponseFormat>,
}

/// `response_format`: plain text, any JSON object, or JSON that fits a schema.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct JsonSchemaFormat {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema; absent means any JSON value.
    #[schema(value_type = Object)]
    pub schema: Option<serde_json::Value>,
    /// Output always fits the schema, strict or not.
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[schema(minimum = 0, maximum = 5)]
    #[serde(default, deserialize_with = "integral")]
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    /// Only 1 is supported.
    #[schema(minimum = 1, maximum = 1)]
    #[serde(default, deserialize_with = "integral")]
    pub best_of: Option<i64>,
    /// Not supported: any value is refused (so not part of the documented request).
    #[schema(ignore)]
    pub suffix: Option<String>,
}

/// Message content: a string, or a list of parts of which the text parts are used.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ContentPart {
    /// Only text parts are served (the models read text): `text`, or `input_text` and
    /// `output_text` as the Responses API names them.
    #[serde(rename = "type")]
    #[schema(pattern = "^(text|input_text|output_text)$")]
    pub kind: String,
    #[schema(value_type = String, required = true)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct Message {
    pub role: Role,
    pub content: Option<Content>,
    /// An assistant turn's calls.
    pub tool_calls: Option<Vec<ToolCall>>,
    /// A `tool` message: the call it answers.
    pub tool_call_id: Option<String>,
}

/// A function the model may call.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct Tool {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct FunctionDef {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON schema of the arguments.
    #[schema(value_type = Object)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `none`, `auto`, `required`, or `{"type": "function", "function": {"name": …}}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Function {
        #[serde(rename = "type")]
        kind: String,
        function: FunctionName,
    },
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct FunctionName {
    pub name: String,
}

/// A call the model made: the function's name and its arguments as JSON text.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// Who wrote a message; `developer` is read as `system`, and a `tool` result is shown to the
/// model as a user turn holding a `<tool_response>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// The role as the chat template sees it.
    pub fn template_name(self) -> &'static str {
        match self {
            Role::System | Role::Developer => "system",
            Role::User | Role::Tool => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatRequest {
    #[schema(min_items = 1)]
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "integral")]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub logprobs: bool,
    /// Alternatives per token; ignored without `logprobs: true`.
    #[schema(minimum = 0, maximum = 20)]
    #[serde(default, deserialize_with = "integral")]
    pub top_logprobs: Option<i64>,
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<ToolChoice>,
    /// With `tool_choice: "required"`, whether several calls may come at once (default true).
    pub parallel_tool_calls: Option<bool>,
    /// Extra variables for the chat template (vLLM's field), e.g. `{"enable_thinking": false}`.
    #[schema(value_type = Object)]
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// none | minimal | low | medium | high | xhigh: given to the template as
    /// `reasoning_effort`, and as `enable_thinking` (false for none and minimal).
    pub reasoning_effort: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq, ToSchema)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_tokens: usize,
}
