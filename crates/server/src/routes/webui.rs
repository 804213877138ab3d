//! The chat page at `/`: static files compiled into the binary (no build step), served with a
//! content security policy that allows only this origin's scripts, styles and API. The assets'
//! paths carry a hash of their contents, so they can be cached for good while the page itself
//! is revalidated on every load.
use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::hash::{Hash, Hasher};
use std::sync::LazyLock;

const INDEX: &str = include_str!("../../webui/index.html");
const ASSETS: [(&str, &str, &str); 3] = [
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../webui/app.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../../webui/style.css")),
    ("icon.svg", "image/svg+xml", include_str!("../../webui/icon.svg")),
];

/// Scripts, styles, the icon and `fetch` from this origin only; no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The assets' version: a hash of their contents (not for security, only to name a change).
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    ASSETS.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
});

static PAGE: LazyLock<String> = LazyLock::new(|| INDEX.replace("ASSET_VERSION", &VERSION));

fn with_headers(content_type: &'static str, cache: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

pub async fn page() -> Response {
    with_headers("text/html; charset=utf-8", "no-cache", PAGE.as_str())
}

/// An asset; cached for good under the current version, revalidated under any other.
pub async fn asset(Path((version, name)): Path<(String, String)>) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(file, _, _)| *file == name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let cache = if version == *VERSION { "public, max-age=31536000, immutable" } else { "no-cache" };
    with_headers(content_type, cache, body)
}

/// Whether `path` is the page's: a 401 there asks the browser for the key (`WWW-Authenticate`).
pub fn is_page(path: &str) -> bool {
    path == "/" || path.starts_with("/webui/")
}
