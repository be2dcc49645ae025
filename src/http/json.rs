//! JSON request bodies, read only once the request is authenticated: a handler calls
//! `auth::require` first and [`read`] second, so a client without a token learns nothing
//! from how its body is parsed, and an unauthenticated body is never buffered. Refusals are
//! `ApiError`s like every other (415, 413, 400), never axum's plain-text rejections.

use axum::{
    body::Body,
    http::{header, HeaderMap},
};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest JSON body accepted (axum's default limit, which these endpoints had before).
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// Parses the request body as JSON `T`: `Content-Type: application/json` (or `…+json`),
/// at most [`MAX_BODY_BYTES`].
pub async fn read<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    read_at_most(headers, body, MAX_BODY_BYTES).await
}

/// [`read`] with a smaller limit, for bodies read before any token is checked.
pub async fn read_at_most<T: DeserializeOwned>(headers: &HeaderMap, body: Body, limit: usize) -> Result<T, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::UnsupportedMediaType("expected a JSON body (Content-Type: application/json)".into()));
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge(format!("JSON body over {limit} bytes, or cut short")))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Whether the request says its body is JSON.
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let mime = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        for (value, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/problem+json", true),
            ("text/plain", false),
            ("application/jsonx", false),
            ("", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(is_json(&h), json, "{value:?}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
