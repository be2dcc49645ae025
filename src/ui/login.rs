//! The login form: a `read` or `admin` token in, a session cookie out (the token itself is
//! neither kept nor logged: only its at-rest hash, in the session). Logging out ends the
//! session. A login from another site is refused like any other cross-site form.

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::{header, HeaderMap},
    response::{IntoResponse, Redirect, Response},
    Form,
};
use minijinja::context;

use super::{auth, csrf, error::UiError, render, session, UiState};
use crate::{auth::hash_token, db::now, metrics::Metrics};

/// `?next=/ui/…`: where to go after logging in.
#[derive(Debug, Default, serde::Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// The login form's fields.
#[derive(serde::Deserialize)]
pub struct LoginForm {
    token: String,
    #[serde(default)]
    next: Option<String>,
}

/// Where a login may send the browser: a path of the dashboard, never another site
/// (`//evil.example`, `/ui/\evil`) — an open redirect would lend berth's name to phishing.
pub fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.contains("//") && !n.contains('\\') && n.is_ascii() => n,
        _ => "/ui/",
    }
}

/// `GET /ui/login`.
pub async fn form(query: Result<Query<NextQuery>, QueryRejection>) -> Result<Response, UiError> {
    let next = query.ok().and_then(|Query(q)| q.next);
    Ok(render::page("login.html", context! { next => safe_next(next.as_deref()), error => None::<&str> })?)
}

/// `POST /ui/login`: 303 to `next` with the session cookie, or the form again with 401.
pub async fn login(
    State(state): State<UiState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, UiError> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    csrf::check_origin(text("sec-fetch-site"), text("origin"), text("host"))?;
    let next = safe_next(f.next.as_deref()).to_owned();
    let hash = hash_token(f.token.trim());
    let Some(role) = auth::role_of(&state, &hash).await? else {
        Metrics::add(&state.app.metrics.auth_refusals, 1);
        tracing::warn!("dashboard login refused: not a live read or admin token");
        let error = "That is not a live read or admin token.";
        let mut page = render::page("login.html", context! { next, error })?;
        *page.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
        return Ok(page);
    };
    let id = state.sessions.open(hash, role, now()).map_err(|e| UiError::Internal(format!("random: {e}")))?;
    tracing::info!(?role, "dashboard login");
    let secure = text("x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https"));
    Ok(([(header::SET_COOKIE, session::set_cookie(&id, secure))], Redirect::to(&next)).into_response())
}

/// The logout form's field.
#[derive(serde::Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf: Option<String>,
}

/// `POST /ui/logout`: ends the session (a forged logout is refused like any other form).
pub async fn logout(
    State(state): State<UiState>,
    viewer: auth::Viewer,
    headers: HeaderMap,
    Form(f): Form<LogoutForm>,
) -> Result<Response, UiError> {
    let Some((id, expected)) = &viewer.session else {
        return Ok(Redirect::to("/ui/").into_response());
    };
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    csrf::check_origin(text("sec-fetch-site"), text("origin"), text("host"))?;
    csrf::check_token(expected, f.csrf.as_deref())?;
    state.sessions.close(id);
    Ok(([(header::SET_COOKIE, session::clear_cookie())], Redirect::to("/ui/login")).into_response())
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn logins_only_return_to_the_dashboard() {
        for (next, to) in [
            (None, "/ui/"),
            (Some("/ui/builds/3"), "/ui/builds/3"),
            (Some("/ui/builds?state=running"), "/ui/builds?state=running"),
            (Some("https://evil.example/"), "/ui/"),
            (Some("//evil.example/ui/"), "/ui/"),
            (Some("/ui//evil.example"), "/ui/"),
            (Some("/ui/\\evil.example"), "/ui/"),
            (Some("/api/v1/hosts"), "/ui/"),
            (Some("/ui"), "/ui/"),
        ] {
            assert_eq!(safe_next(next), to, "{next:?}");
        }
    }
}
