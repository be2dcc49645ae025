//! Who is looking: the session of the request's cookie (its token checked again against the
//! index, so a revoked token ends it at once), or a bearer token an operator's reverse proxy
//! adds to every request (`Authorization: Bearer`, read-only: a proxy's own login is an
//! ambient credential, so acting needs a dashboard session and its CSRF token). Without
//! either, a page redirects to the login form and anything else is 401.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts, HeaderMap, Method},
};

use super::{csrf, error::UiError, session::Role, UiState};
use crate::{
    auth::{hash_token, Scope},
    db::now,
    http::auth::presented_token,
    metrics::Metrics,
};

/// An authenticated dashboard user.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// What they may do.
    pub role: Role,
    /// Their session's cookie value and CSRF token (none when a proxy's header let them in).
    pub session: Option<(String, String)>,
}

impl Viewer {
    /// The CSRF token forms of this page carry (empty without a session: its forms are
    /// refused).
    pub fn csrf(&self) -> &str {
        self.session.as_ref().map_or("", |(_, csrf)| csrf.as_str())
    }

    /// Checks that this viewer may act and that the form is this session's, from this site.
    pub fn may_act(&self, headers: &HeaderMap, form_csrf: Option<&str>) -> Result<(), UiError> {
        if self.role != Role::Admin {
            return Err(UiError::Forbidden("a read token cannot do this: it needs scope admin".into()));
        }
        let Some((_, expected)) = &self.session else {
            return Err(UiError::Forbidden("log in to the dashboard with an admin token to act".into()));
        };
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        csrf::check_origin(text("sec-fetch-site"), text("origin"), text("host"))?;
        csrf::check_token(expected, form_csrf)?;
        Ok(())
    }

    /// Checks that this viewer is an admin (for confirmation pages).
    pub fn require_admin(&self) -> Result<(), UiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Read => Err(UiError::Forbidden("a read token cannot do this: it needs scope admin".into())),
        }
    }
}

impl FromRequestParts<UiState> for Viewer {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, state: &UiState) -> Result<Self, UiError> {
        let reason = match viewer(parts, state).await? {
            Ok(viewer) => return Ok(viewer),
            Err(reason) => reason,
        };
        Metrics::add(&state.app.metrics.auth_refusals, 1);
        if matches!(parts.method, Method::GET | Method::HEAD) {
            let next = parts.uri.path_and_query().map_or("/ui/", |p| p.as_str()).to_owned();
            return Err(UiError::LoginRequired { next });
        }
        Err(UiError::Unauthorized(reason.into()))
    }
}

/// The viewer of a request, or why there is none.
async fn viewer(parts: &Parts, state: &UiState) -> Result<Result<Viewer, &'static str>, UiError> {
    if let Some(id) = super::session::session_id(&parts.headers) {
        if let Some(session) = state.sessions.get(&id, now()) {
            if role_of(state, &session.token_hash).await? == Some(session.role) {
                return Ok(Ok(Viewer { role: session.role, session: Some((id, session.csrf)) }));
            }
            state.sessions.close(&id);
            return Ok(Err("the token of this session was revoked: log in again"));
        }
    }
    if parts.headers.contains_key(header::AUTHORIZATION) {
        let role = match presented_token(&parts.headers) {
            Some(token) => role_of(state, &hash_token(&token)).await?,
            None => None,
        };
        return Ok(role.map(|role| Viewer { role, session: None }).ok_or("the token is not a read or admin token"));
    }
    Ok(Err("log in with a read or admin token"))
}

/// The dashboard role of the token with at-rest hash `hash`, if it is a live read or admin
/// token.
pub async fn role_of(state: &UiState, hash: &str) -> Result<Option<Role>, UiError> {
    let scope = state.app.db.token_scope(hash).await?;
    Ok(scope.and_then(|s| Scope::parse(&s).ok()).as_ref().and_then(Role::of))
}
