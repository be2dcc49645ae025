//! The web dashboard under `/ui/`: the fleet, a host's history, builds with their live log,
//! the cache and retention, as server-rendered HTML that works without JavaScript (one small
//! embedded script streams a running build's log). Reads need a `read` or `admin` token
//! (a login form makes a session: `session.rs`); actions (rollback, redeploy, pin, gc) need
//! `admin`, go through a confirmation page and carry a CSRF token (`csrf.rs`).
//!
//! Templates: minijinja (`render.rs`), not askama. Both are well kept and auto-escape HTML;
//! askama checks templates at compile time, but its releases since 0.14 need Rust 1.83 while
//! berth supports 1.80, and its derive macros cost build time on every change. minijinja
//! has no proc macros, auto-escapes every `.html` template, and a lib test renders each
//! template with realistic values, so a broken template fails `cargo test`, not a user.
//!
//! Every page and action calls the library functions the API uses: `deploy::fleet` (hosts,
//! history), `deploy::resend` (rollback, redeploy), `gc::pins::pin`, `gc::collect` (`gc::preview` to look). Handlers
//! here only extract, check access, call one of those and render.

mod actions;
mod assets;
mod auth;
pub mod csrf;
mod diffs;
mod error;
mod login;
mod pages;
mod render;
pub mod session;
pub mod view;

use std::sync::Arc;

use axum::{
    extract::{DefaultBodyLimit, Request},
    http::{header, HeaderValue},
    middleware::{self, Next},
    response::{Redirect, Response},
    routing::{get, post},
    Router,
};

use crate::app::AppState;
use session::Sessions;

/// What the dashboard's handlers share: the server's state and the sessions.
#[derive(Clone)]
pub struct UiState {
    app: AppState,
    sessions: Arc<Sessions>,
}

/// Form bodies are a few short fields.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// The dashboard's routes (`/`, `/ui`, `/ui/…`).
pub fn router(app: AppState) -> Router {
    let state = UiState { app, sessions: Arc::new(Sessions::default()) };
    Router::new()
        .route("/ui/", get(pages::fleet))
        .route("/ui/login", get(login::form).post(login::login))
        .route("/ui/logout", post(login::logout))
        .route("/ui/assets/{file}", get(assets::get))
        .route("/ui/hosts/{name}", get(pages::host))
        .route("/ui/hosts/{name}/rollback", get(actions::confirm_rollback).post(actions::rollback))
        .route("/ui/hosts/{name}/redeploy", get(actions::confirm_redeploy).post(actions::redeploy))
        .route("/ui/builds", get(pages::builds))
        .route("/ui/builds/{id}", get(pages::build))
        .route("/ui/builds/{id}/log", get(pages::build_log))
        .route("/ui/rollouts", get(pages::rollouts))
        .route("/ui/rollouts/{id}/{action}", get(actions::confirm_rollout).post(actions::rollout))
        .route("/ui/cache", get(pages::cache))
        .route("/ui/retention", get(pages::retention))
        .route("/ui/pins", get(actions::confirm_pin).post(actions::pin))
        .route("/ui/gc", get(actions::confirm_gc).post(actions::gc))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        // Under /ui/ a person gets a page, not the API's JSON refusal.
        .route("/ui/{*rest}", get(|| async { error::UiError::NotFound("no such page".into()) }))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
        .route("/", get(|| async { Redirect::to("/ui/") }))
}

/// Every dashboard response: no framing, no sniffing, no referrer to other sites (URLs name
/// hosts and builds; `no-referrer` would make browsers send `Origin: null` on the
/// dashboard's own forms), nothing cached, and only the dashboard's own style and script.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    let csp = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; \
               form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
