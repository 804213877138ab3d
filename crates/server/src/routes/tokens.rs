//! `POST /tokenize` and `POST /detokenize`, in vLLM's shape: what a prompt or a chat costs in
//! tokens before sending it, and the text of token ids.
use crate::error::{ApiError, ApiJson};
use crate::openai::Message;
use crate::validation::{check_model, check_token_ids};
use crate::AppState;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

/// A prompt, or chat messages rendered through the chat template (with the assistant's turn
/// opened, as a chat request renders them).
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<Message>>,
    /// With `messages`: the chat template's extra variables, as on chat completions.
    #[schema(value_type = Object)]
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// Add the tokenizer's special tokens (BOS). Default: true for a prompt; a chat's come from
    /// its template.
    pub add_special_tokens: Option<bool>,
    /// Also return each token's text.
    #[serde(default)]
    pub return_token_strs: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenizeResponse {
    pub count: usize,
    /// The model's context length.
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
    pub token_strs: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

/// Token ids of a prompt or a chat.
#[utoipa::path(post, path = "/tokenize", operation_id = "tokenize", tag = "tokens", request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse), crate::error::ErrorResponses))]
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    check_model(request.model.as_ref(), &state.limits)?;
    let tokens = match (request.prompt, &request.messages) {
        (Some(prompt), None) => {
            let mut ids = state.prompts.completion(vec![prompt]).await?.pop().unwrap_or_default();
            let bos = state.tokenizer.bos_id().filter(|_| state.tokenizer.adds_bos());
            if request.add_special_tokens == Some(false) && bos.is_some() && ids.first() == bos.as_ref() {
                ids.remove(0);
            }
            ids
        }
        (None, Some(messages)) => {
            let messages = super::chat::template_messages(messages)?;
            let args = crate::answer::template_args(request.chat_template_kwargs.as_ref(), None)?;
            state.prompts.chat(messages, args, "messages").await?.ids
        }
        _ => return Err(ApiError::invalid("prompt", "give either `prompt` or `messages`")),
    };
    let token_strs = request.return_token_strs.then(|| tokens.iter().map(|&t| state.tokenizer.token_text(t)).collect());
    Ok(Json(TokenizeResponse { count: tokens.len(), max_model_len: state.limits.context_len, tokens, token_strs }))
}

/// The text of token ids.
#[utoipa::path(post, path = "/detokenize", operation_id = "detokenize", tag = "tokens", request_body = DetokenizeRequest,
    responses((status = 200, body = DetokenizeResponse), crate::error::ErrorResponses))]
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    check_model(request.model.as_ref(), &state.limits)?;
    check_token_ids("tokens", &request.tokens, &state.limits)?;
    let prompt = state.tokenizer.decode(&request.tokens).map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(Json(DetokenizeResponse { prompt }))
}
