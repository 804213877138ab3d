//! `/v1/models`, `/health`, `/metrics`.
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[utoipa::path(get, path = "/v1/models", responses((status = 200, description = "The served model, with its recycle modes")))]
pub async fn models(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let modes: Vec<&str> = if state.limits.has_recycle { vec!["off", "alternate", "verify"] } else { vec!["off"] };
    let default_mode = match state.limits.default_mode {
        recyclegpt_engine::DecodeMode::Off => "off",
        other => other.as_str(),
    };
    Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": state.limits.served_model_name,
            "object": "model",
            "created": state.created,
            "owned_by": "recyclegpt",
            "max_model_len": state.limits.context_len,
            "recycle": {"module": state.recycle_source, "modes": modes, "default": default_mode},
        }]
    }))
}

#[utoipa::path(get, path = "/health", responses((status = 200, description = "Ready"), (status = 503, description = "Worker stopped or draining")))]
/// 200 while the model is loaded and the worker alive; 503 otherwise or while draining.
pub async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if !state.backend.is_alive() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"status": "worker stopped"})));
    }
    if state.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"status": "draining"})));
    }
    (StatusCode::OK, Json(serde_json::json!({"status": "ok"})))
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "recyclegpt", description = "OpenAI-compatible inference for RecycleGPT models"),
    paths(super::completions::create, super::chat::create, models, health, metrics),
    components(schemas(crate::openai::CompletionRequest, crate::openai::ChatRequest, crate::openai::Usage))
)]
struct ApiDoc;

pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(<ApiDoc as utoipa::OpenApi>::openapi())
}
