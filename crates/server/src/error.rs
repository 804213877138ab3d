//! Every error a client can see, mapped to a status code and OpenAI's error shape in one place.
use crate::backend::{Failure, SubmitError};
use crate::responses::{ErrorDetail, ErrorResponse};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidParameter { param: Option<String>, message: String },
    /// Prompt + `max_tokens` over the context; `param` is the field at fault (the prompt's when
    /// it alone is too long, the token limit's otherwise).
    #[error("{message}")]
    ContextLength { param: String, message: String },
    #[error("Malformed request body: {0}")]
    Malformed(String),
    #[error("The request body is larger than the server accepts")]
    TooLarge,
    #[error("The model `{0}` does not exist")]
    UnknownModel(String),
    #[error("Incorrect or missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`")]
    Unauthorized,
    #[error("The server is busy: the request queue is full, retry later")]
    QueueFull,
    #[error("The server is busy compiling other requests' schemas, retry later")]
    CompilerBusy,
    #[error("The server is shutting down: retry on another replica")]
    Draining,
    #[error("The server shut down before this request could finish")]
    Interrupted,
    #[error("The request body was not received in time")]
    BodyTimeout,
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("Content-Encoding `{0}` is not supported: send the body uncompressed")]
    UnsupportedEncoding(String),
    #[error("No route for {0}")]
    NotFound(String),
    /// A stored response that is not held (never stored, expired, evicted or deleted); `param`
    /// names the field that asked for it, if a field did.
    #[error("Response with id `{id}` not found: never stored, expired or deleted")]
    NoSuchResponse { id: String, param: Option<String> },
    #[error("Method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError::InvalidParameter { param: Some(param.to_string()), message: message.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidParameter { .. } | ApiError::ContextLength { .. } => StatusCode::BAD_REQUEST,
            ApiError::Malformed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnknownModel(_) | ApiError::NotFound(_) | ApiError::NoSuchResponse { .. } => {
                StatusCode::NOT_FOUND
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::QueueFull | ApiError::CompilerBusy => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Draining | ApiError::Interrupted => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType | ApiError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> ErrorResponse {
        let (kind, code, param) = match self {
            ApiError::InvalidParameter { param, .. } => ("invalid_request_error", "invalid_parameter", param.clone()),
            ApiError::ContextLength { param, .. } => {
                ("invalid_request_error", "context_length_exceeded", Some(param.clone()))
            }
            ApiError::Malformed(_) => ("invalid_request_error", "malformed_json", None),
            ApiError::TooLarge => ("invalid_request_error", "body_too_large", None),
            ApiError::UnknownModel(_) => ("invalid_request_error", "model_not_found", Some("model".into())),
            ApiError::Unauthorized => ("authentication_error", "invalid_api_key", None),
            ApiError::QueueFull => ("rate_limit_error", "queue_full", None),
            ApiError::CompilerBusy => ("rate_limit_error", "grammar_compiler_busy", None),
            ApiError::Draining => ("server_error", "shutting_down", None),
            ApiError::Interrupted => ("server_error", "interrupted", None),
            ApiError::BodyTimeout => ("invalid_request_error", "body_timeout", None),
            ApiError::UnsupportedMediaType => ("invalid_request_error", "unsupported_media_type", None),
            ApiError::UnsupportedEncoding(_) => ("invalid_request_error", "unsupported_encoding", None),
            ApiError::NotFound(_) => ("invalid_request_error", "not_found", None),
            ApiError::NoSuchResponse { param, .. } => ("invalid_request_error", "response_not_found", param.clone()),
            ApiError::MethodNotAllowed { .. } => ("invalid_request_error", "method_not_allowed", None),
            ApiError::Internal(_) => ("server_error", "internal_error", None),
        };
        ErrorResponse { error: ErrorDetail { message: self.to_string(), kind, param, code } }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::QueueFull => ApiError::QueueFull,
            SubmitError::Draining => ApiError::Draining,
            SubmitError::Stopped => ApiError::Internal(error.to_string()),
        }
    }
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::NotStarted => ApiError::Draining,
            Failure::Interrupted => ApiError::Interrupted,
            Failure::Engine(message) => ApiError::Internal(message),
        }
    }
}

/// Seconds a client should wait before retrying a 429 or a 503 while draining: about one
/// batch's turnover here, or time for a load balancer to pick another replica.
const RETRY_AFTER_SECONDS: &str = "1";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("recyclegpt_requests_total", "status" => self.status().as_u16().to_string()).increment(1);
        let mut response = (self.status(), Json(self.body())).into_response();
        let headers = response.headers_mut();
        match self {
            ApiError::QueueFull | ApiError::CompilerBusy | ApiError::Draining => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// The error statuses of the generation endpoints, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
pub enum ErrorResponses {
    #[response(
        status = 400,
        description = "An invalid parameter (named in `param`), or prompt + max_tokens over the context"
    )]
    Invalid(ErrorResponse),
    #[response(status = 401, description = "Missing or wrong API key")]
    Unauthorized(ErrorResponse),
    #[response(status = 404, description = "Unknown model")]
    UnknownModel(ErrorResponse),
    #[response(status = 408, description = "The body was not received in time")]
    BodyTimeout(ErrorResponse),
    #[response(status = 413, description = "Body too large")]
    TooLarge(ErrorResponse),
    #[response(status = 415, description = "Content-Type is not application/json")]
    UnsupportedMediaType(ErrorResponse),
    #[response(status = 422, description = "Malformed JSON")]
    Malformed(ErrorResponse),
    #[response(status = 429, description = "The request queue is full (see Retry-After)")]
    QueueFull(ErrorResponse),
    #[response(status = 503, description = "The server is draining or was shut down during the request")]
    Draining(ErrorResponse),
}

/// A JSON body whose rejections (too large, not JSON, wrong types) come out in OpenAI's shape.
pub struct ApiJson<T>(pub T);

/// Whether the request says its body is JSON. Requiring it keeps a web page from making a
/// browser send generation requests as a "simple" (preflight-free) form or text POST.
fn is_json(req: &axum::extract::Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// The body must arrive within `body_read_timeout_seconds`: a stalled upload must not hold its
/// connection and task forever.
impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<std::sync::Arc<crate::AppState>> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(
        req: axum::extract::Request,
        state: &std::sync::Arc<crate::AppState>,
    ) -> Result<Self, Self::Rejection> {
        if !is_json(&req) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let timeout = crate::config::seconds(state.config.body_read_timeout_seconds);
        let read = tokio::time::timeout(timeout, axum::body::Bytes::from_request(req, state));
        let bytes = read
            .await
            .map_err(|_| {
                metrics::counter!("recyclegpt_connections_timed_out_total", "phase" => "body").increment(1);
                ApiError::BodyTimeout
            })?
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge
                } else {
                    ApiError::Malformed(rejection.body_text())
                }
            })?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| match e.classify() {
            // Well-formed JSON with a field of the wrong type or shape: a bad parameter (400),
            // as OpenAI answers; only unparseable bodies are 422.
            serde_json::error::Category::Data => {
                ApiError::InvalidParameter { param: None, message: format!("Invalid request: {e}") }
            }
            _ => ApiError::Malformed(e.to_string()),
        })
    }
}
