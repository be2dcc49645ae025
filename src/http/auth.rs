//! Bearer tokens on requests: `Authorization: Bearer <token>`, or HTTP Basic with the token
//! as password (what Nix sends from a netrc file). The token is hashed and looked up; its
//! scope must allow what the route needs. Every refusal is 401/403 with a reason.

use axum::http::{header, HeaderMap};
use base64::{engine::general_purpose::STANDARD, Engine as _};

use super::error::ApiError;
use crate::{
    app::AppState,
    auth::{hash_token, Scope},
    metrics::Metrics,
};

fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_owned());
    }
    let decoded = STANDARD.decode(value.strip_prefix("Basic ")?.trim()).ok()?;
    let (_user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(password.to_owned())
}

/// Checks that the request carries a token whose scope allows `needed`; returns its scope.
pub async fn require(state: &AppState, headers: &HeaderMap, needed: Scope) -> Result<Scope, ApiError> {
    let refuse = |e: ApiError| {
        Metrics::add(&state.metrics.auth_refusals, 1);
        e
    };
    let Some(token) = presented_token(headers) else {
        return Err(refuse(ApiError::Unauthorized(format!(
            "a token with scope {needed} is required: send `Authorization: Bearer <token>` (or a netrc password)"
        ))));
    };
    let scope = state.db.token_scope(&hash_token(&token)).await?;
    let Some(scope) = scope.and_then(|s| Scope::parse(&s).ok()) else {
        return Err(refuse(ApiError::Unauthorized("unknown or revoked token".into())));
    };
    if !scope.allows(&needed) {
        return Err(refuse(ApiError::Forbidden(format!("a {scope} token cannot do this: it needs scope {needed}"))));
    }
    Ok(scope)
}

/// Checks read access: free unless the cache requires a read token.
pub async fn require_read(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.cache.require_read_token {
        require(state, headers, Scope::Read).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_and_basic() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(presented_token(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, format!("Basic {}", STANDARD.encode("x:sekrit")).parse().unwrap());
        assert_eq!(presented_token(&h).as_deref(), Some("sekrit"));
        h.insert(header::AUTHORIZATION, "Basic !!".parse().unwrap());
        assert_eq!(presented_token(&h), None);
    }
}
