//! The HTTP surface.
mod chat;
mod chat_stream;
mod completions;
mod messages;
mod messages_stream;
mod responses_api;
mod responses_shape;
mod responses_stream;
mod system;
mod tokens;
mod webui;

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use std::sync::Arc;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub fn router(state: Arc<AppState>) -> Router {
    let mut guarded = Router::new()
        .route("/v1/completions", with_405(post(completions::create)))
        .route("/v1/chat/completions", with_405(post(chat::create)))
        .route("/v1/responses", with_405(post(responses_api::create)))
        .route("/v1/responses/{response_id}", with_405(get(responses_api::retrieve).delete(responses_api::delete)))
        .route("/v1/messages", with_405(post(messages::create)))
        .route("/v1/messages/count_tokens", with_405(post(messages::count_tokens)))
        .route("/v1/models", with_405(get(system::models)))
        .route("/tokenize", with_405(post(tokens::tokenize)))
        .route("/detokenize", with_405(post(tokens::detokenize)))
        .route("/openapi.json", with_405(get(system::openapi)));
    if state.config.webui {
        guarded = guarded
            .route("/", with_405(get(webui::page)))
            .route("/webui/{version}/{name}", with_405(get(webui::asset)));
    }
    let mut open = Router::new().route("/health", with_405(get(system::health)));
    if state.config.metrics_require_api_key {
        guarded = guarded.route("/metrics", with_405(get(system::metrics)));
    } else {
        open = open.route("/metrics", with_405(get(system::metrics)));
    }
    let guarded = guarded
        .layer(axum::middleware::from_fn(refuse_encoded_bodies))
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_api_key));
    let origins: Vec<_> = state.config.cors_origins.iter().filter_map(|o| o.parse().ok()).collect();
    let cors = if state.config.cors_origins.iter().any(|o| o == "*") {
        CorsLayer::permissive()
    } else {
        CorsLayer::new().allow_origin(AllowOrigin::list(origins))
    };
    Router::new()
        .merge(guarded)
        .merge(open)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.config.body_limit_bytes))
        .layer(axum::middleware::from_fn(messages::anthropic_errors))
        .layer(cors)
        .with_state(state)
}

/// A known path with the wrong method gets a 405 in OpenAI's shape, not an empty body.
fn with_405(route: MethodRouter<Arc<AppState>>) -> MethodRouter<Arc<AppState>> {
    route.fallback(|method: Method, uri: Uri| async move {
        ApiError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_string() }
    })
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_string())
}

/// With an API key configured, every route but `/health` (and `/metrics` when so configured)
/// needs `Authorization: Bearer <key>` or, as Anthropic's clients send it, `x-api-key: <key>`,
/// or (for the chat page, which a browser opens without headers) HTTP Basic credentials with
/// the key as the password; the page's 401 asks the browser for them. Schemes are
/// case-insensitive (RFC 9110) and the key is compared in constant time, so response timing
/// does not reveal how much of a guess was right.
async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(key) = &state.config.api_key {
        let headers = request.headers();
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let basic = authorization.and_then(basic_password);
        let given = authorization
            .and_then(bearer_token)
            .or(basic.as_deref())
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim))
            .unwrap_or("");
        if !constant_time_eq::constant_time_eq(given.as_bytes(), key.as_bytes()) {
            let mut response = ApiError::Unauthorized.into_response();
            if webui::is_page(request.uri().path()) {
                let ask = header::HeaderValue::from_static("Basic realm=\"recyclegpt\", charset=\"UTF-8\"");
                response.headers_mut().insert(header::WWW_AUTHENTICATE, ask);
            }
            return Ok(response);
        }
    }
    Ok(next.run(request).await)
}

/// A compressed body would be read as JSON and fail as garbage: say what is wrong instead. No
/// OpenAI client compresses requests, and decompressing them would put a bomb's expansion
/// ahead of the body limit.
async fn refuse_encoded_bodies(request: Request, next: Next) -> Result<Response, ApiError> {
    let encoding = request.headers().get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?").trim());
    match encoding {
        None | Some("") => Ok(next.run(request).await),
        Some(e) if e.eq_ignore_ascii_case("identity") => Ok(next.run(request).await),
        Some(other) => Err(ApiError::UnsupportedEncoding(other.to_string())),
    }
}

/// The credentials of a `Bearer` authorization header, whatever the case of the scheme.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The password of a `Basic` authorization header (`user:password`, base64), any user.
fn basic_password(value: &str) -> Option<String> {
    use base64::Engine;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(_, password)| password.to_string())
}

#[cfg(test)]
mod tests {
    use super::{basic_password, bearer_token};

    #[test]
    fn basic_credentials_give_their_password() {
        assert_eq!(basic_password("Basic dXNlcjpzM2NyZXQ="), Some("s3cret".into()));
        assert_eq!(basic_password("basic OnMzY3JldA=="), Some("s3cret".into()));
        assert_eq!(basic_password("Basic !!!"), None);
        assert_eq!(basic_password("Bearer dXNlcjpzM2NyZXQ="), None);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer k1"), Some("k1"));
        assert_eq!(bearer_token("bearer k1"), Some("k1"));
        assert_eq!(bearer_token("BEARER  k1 "), Some("k1"));
        assert_eq!(bearer_token("Basic k1"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
