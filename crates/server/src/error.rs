//! Every error a client can see, mapped to a status code and OpenAI's error shape in one place.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidParameter { param: Option<String>, message: String },
    #[error("{0}")]
    ContextLength(String),
    #[error("Malformed request body: {0}")]
    Malformed(String),
    #[error("The request body is larger than the server accepts")]
    TooLarge,
    #[error("The model `{0}` does not exist")]
    UnknownModel(String),
    #[error("Incorrect or missing API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("The server is busy: the request queue is full, retry later")]
    QueueFull,
    #[error("The server is shutting down")]
    Draining,
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError::InvalidParameter {
            param: Some(param.to_string()),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidParameter { .. } | ApiError::ContextLength(_) => StatusCode::BAD_REQUEST,
            ApiError::Malformed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnknownModel(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        let (kind, code, param) = match self {
            ApiError::InvalidParameter { param, .. } => ("invalid_request_error", "invalid_parameter", param.clone()),
            ApiError::ContextLength(_) => ("invalid_request_error", "context_length_exceeded", Some("max_tokens".into())),
            ApiError::Malformed(_) => ("invalid_request_error", "malformed_json", None),
            ApiError::TooLarge => ("invalid_request_error", "body_too_large", None),
            ApiError::UnknownModel(_) => ("invalid_request_error", "model_not_found", Some("model".into())),
            ApiError::Unauthorized => ("authentication_error", "invalid_api_key", None),
            ApiError::QueueFull => ("rate_limit_error", "queue_full", None),
            ApiError::Draining => ("server_error", "shutting_down", None),
            ApiError::Internal(_) => ("server_error", "internal_error", None),
        };
        serde_json::json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("recyclegpt_requests_total", "status" => self.status().as_u16().to_string()).increment(1);
        (self.status(), Json(self.body())).into_response()
    }
}

/// The error statuses of the generation endpoints, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
pub enum ErrorResponses {
    #[response(status = 400, description = "An invalid parameter (named in `param`), or prompt + max_tokens over the context")]
    Invalid,
    #[response(status = 401, description = "Missing or wrong API key")]
    Unauthorized,
    #[response(status = 404, description = "Unknown model")]
    UnknownModel,
    #[response(status = 413, description = "Body too large")]
    TooLarge,
    #[response(status = 422, description = "Malformed JSON")]
    Malformed,
    #[response(status = 429, description = "The request queue is full")]
    QueueFull,
    #[response(status = 503, description = "The server is draining")]
    Draining,
}

/// A JSON body whose rejections (too large, not JSON, wrong types) come out in OpenAI's shape.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::Malformed(rejection.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::Malformed(e.to_string()))
    }
}
