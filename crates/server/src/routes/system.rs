//! `/v1/models`, `/health`, `/metrics`.
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub async fn models(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let modes: Vec<&str> = if state.limits.has_recycle { vec!["off", "alternate", "verify"] } else { vec!["off"] };
    let default_mode = match state.limits.default_mode {
        recyclegpt_engine::DecodeMode::Standard => "off",
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

/// 200 while the model is loaded and the worker alive; 503 otherwise or while draining.
pub async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if !state.worker.is_alive() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"status": "worker stopped"})));
    }
    if state.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"status": "draining"})));
    }
    (StatusCode::OK, Json(serde_json::json!({"status": "ok"})))
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
