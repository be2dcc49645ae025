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

/// The token of `Authorization: Bearer <token>` or `Basic base64(user:token)`; the scheme
/// is case-insensitive (RFC 9110 §11.1), so `bearer` and `BASIC` are the same.
pub(crate) fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(credentials).ok()?;
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

/// Checks that `token` is a CI ID token allowed to submit builds of `repository`
/// (`[repositories.oidc]`): header, then the issuer's key, signature, and the claim policy.
/// It allows nothing else: following that one build (`http::builds`) is the only other use;
/// every other route takes berth tokens only.
pub async fn require_oidc(
    state: &AppState,
    token: &str,
    repository: &str,
    branch: &str,
    commit: &str,
) -> Result<(), ApiError> {
    use crate::oidc::{policy, verify};
    let refuse = |e: ApiError| {
        Metrics::add(&state.metrics.auth_refusals, 1);
        e
    };
    let unauthorized = |e: &dyn std::fmt::Display| refuse(ApiError::Unauthorized(e.to_string()));
    let header = verify::header(token).map_err(|e| unauthorized(&e))?;
    let Some(policy) = state.config.repository(repository).and_then(|r| r.oidc.as_ref()) else {
        return Err(refuse(ApiError::Forbidden(format!(
            "repository {:?} accepts no OIDC ID tokens (no [repositories.oidc])",
            repository.chars().take(80).collect::<String>()
        ))));
    };
    let key = state.oidc_keys.key(&policy.issuer, &header.kid).await.map_err(|e| unauthorized(&e))?;
    let claims = verify::verify(token, &header, &key).map_err(|e| unauthorized(&e))?;
    let now = jiff::Timestamp::now().as_second();
    policy::check(policy, &claims, now).and_then(|()| policy::binds(&claims, branch, commit)).map_err(|e| {
        if e.is_forbidden() {
            refuse(ApiError::Forbidden(e.to_string()))
        } else {
            unauthorized(&e)
        }
    })
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
        for (value, token) in [
            ("bearer abc", Some("abc")),
            ("BEARER  abc ", Some("abc")),
            ("bEaReR abc", Some("abc")),
            ("Token abc", None),
            ("Bearer", None),
            ("Bearerabc", None),
        ] {
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(presented_token(&h).as_deref(), token, "{value:?}");
        }
        h.insert(header::AUTHORIZATION, format!("basic {}", STANDARD.encode("x:sekrit")).parse().unwrap());
        assert_eq!(presented_token(&h).as_deref(), Some("sekrit"));
    }
}
