//! `/v1/models`, `/health`, `/metrics`, `/openapi.json`.
use crate::responses::{Health, ModelCard, ModelList, ModelRecycle};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[utoipa::path(get, path = "/v1/models", operation_id = "listModels", tag = "models",
    responses((status = 200, description = "The served model, with its recycle modes", body = ModelList)))]
pub async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    let modes = if state.limits.has_recycle { vec!["off", "alternate", "verify"] } else { vec!["off"] };
    let module = serde_json::to_value(state.recycle_source)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.limits.served_model_name.clone(),
            object: "model",
            created: state.created,
            owned_by: "recyclegpt",
            max_model_len: state.limits.context_len,
            recycle: ModelRecycle { module, modes, default: state.limits.default_mode.as_str() },
        }],
    })
}

/// 200 while the model is loaded and the worker alive; 503 when the worker has died or the
/// server is draining (so that load balancers stop sending work).
#[utoipa::path(get, path = "/health", operation_id = "health", tag = "system",
    responses((status = 200, description = "Ready", body = Health), (status = 503, description = "Worker stopped, or draining", body = Health)))]
pub async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Health>) {
    let status = if !state.backend.is_alive() {
        "worker stopped"
    } else if state.draining.load(Ordering::Relaxed) {
        "draining"
    } else {
        return (StatusCode::OK, Json(Health { status: "ok" }));
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status }))
}

#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "recyclegpt", description = "OpenAI-compatible inference for RecycleGPT models"),
    paths(super::completions::create, super::chat::create, models, health, metrics, openapi),
    components(schemas(crate::openai::CompletionRequest, crate::openai::ChatRequest, crate::openai::Usage)),
    tags(
        (name = "completions", description = "Text completions"),
        (name = "chat", description = "Chat completions"),
        (name = "models", description = "The served model"),
        (name = "system", description = "Health, metrics and this document")
    )
)]
struct ApiDoc;

#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "system",
    responses((status = 200, description = "This OpenAPI document", content_type = "application/json", body = Object)))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(<ApiDoc as utoipa::OpenApi>::openapi())
}
