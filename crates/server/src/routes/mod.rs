//! The HTTP surface.
mod chat;
mod completions;
mod system;

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/completions", post(completions::create))
        .route("/v1/chat/completions", post(chat::create))
        .route("/v1/models", get(system::models))
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_api_key));
    let origins: Vec<_> = state.config.cors_origins.iter().filter_map(|o| o.parse().ok()).collect();
    let cors = if state.config.cors_origins.iter().any(|o| o == "*") {
        CorsLayer::permissive()
    } else {
        CorsLayer::new().allow_origin(AllowOrigin::list(origins))
    };
    Router::new()
        .merge(api)
        .route("/health", get(system::health))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(system::openapi))
        .layer(DefaultBodyLimit::max(state.config.body_limit_bytes))
        .layer(cors)
        .with_state(state)
}

/// With an API key configured, `/v1/*` needs `Authorization: Bearer <key>`.
async fn require_api_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Result<Response, ApiError> {
    if let Some(key) = &state.config.api_key {
        let given = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(request).await)
}
