//! HTTP: the only module that imports axum. One file per endpoint group; handlers extract,
//! validate into a typed value, call one function, render. Every response carries an
//! `x-request-id`, and every request is logged in a span with it.

pub(crate) mod auth;
mod builds;
mod cache;
mod conn;
mod deploy;
mod derivations;
mod enroll;
mod error;
mod events;
mod gc;
mod hosts;
mod json;
mod keys;
mod observe;
mod ops;
mod push;
mod range;
mod resign;
mod rollouts;
mod webhooks;

use std::future::Future;

use axum::{
    extract::{DefaultBodyLimit, Request},
    http::HeaderValue,
    middleware::{self, Next},
    response::Response,
    routing::{get, post, put},
    Router,
};
use tokio::net::TcpListener;
use tracing::Instrument;

pub use error::ApiError;

use crate::app::AppState;

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/nix-cache-info", get(cache::cache_info))
        .route("/{file}", get(cache::get_top_level).put(cache::put_top_level))
        .route("/nar/{file}", get(cache::get_nar).head(cache::head_nar).put(cache::put_nar))
        .route("/realisations/{file}", get(derivations::get_realisation).put(derivations::put_realisation))
        .route("/log/{drv}", get(derivations::get_log).put(derivations::put_log))
        .route("/api/v1/paths/missing", post(push::missing))
        .route("/api/v1/paths", post(push::upload))
        .route("/api/v1/builds", get(builds::list).post(builds::submit))
        .route("/api/v1/builds/{id}", get(builds::status))
        .route("/api/v1/builds/{id}/log", get(builds::log))
        .route("/api/v1/builds/{id}/cancel", post(builds::cancel))
        .route("/api/v1/hosts", get(hosts::list).post(enroll::add))
        .route("/api/v1/hosts/keys", get(enroll::keys))
        .route("/api/v1/hosts/{name}", axum::routing::delete(enroll::remove))
        .route("/api/v1/enroll", post(enroll::enroll))
        .route("/api/v1/hosts/{name}/generations", get(hosts::generations))
        .route("/api/v1/hosts/{name}/diff", get(hosts::diff))
        .route("/api/v1/hosts/{name}/pause", post(hosts::pause))
        .route("/api/v1/hosts/{name}/resume", post(hosts::resume))
        .route("/api/v1/hosts/{name}/manifest", get(deploy::manifest))
        .route("/api/v1/hosts/{name}/reports", get(deploy::reports).post(deploy::report))
        .route("/api/v1/hosts/{name}/rollback", post(deploy::rollback))
        .route("/api/v1/hosts/{name}/redeploy", post(deploy::redeploy))
        .route("/api/v1/rollouts", get(rollouts::list))
        .route("/api/v1/rollouts/{id}", get(rollouts::status))
        .route("/api/v1/rollouts/{id}/resume", post(rollouts::resume))
        .route("/api/v1/rollouts/{id}/abort", post(rollouts::abort))
        .route(
            "/api/v1/webhooks/{forge}",
            post(webhooks::receive).layer(DefaultBodyLimit::max(crate::webhook::MAX_BODY_BYTES)),
        )
        .route("/api/v1/events", get(events::stream))
        .route("/api/v1/gc", post(gc::collect))
        .route("/api/v1/cache/resign", get(resign::status).post(resign::start))
        .route("/api/v1/keys/deploy", get(keys::status))
        .route("/api/v1/keys/deploy/rotate", post(keys::rotate))
        .route("/api/v1/pins", get(gc::pins))
        .route("/api/v1/pins/{name}", put(gc::pin).delete(gc::unpin))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .with_state(state.clone())
        // The dashboard: `/` redirects to `/ui/` (`/{file}` above never matches `/`).
        .merge(crate::ui::router(state.clone()))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(middleware::from_fn(error::json_refusals))
        .layer(middleware::from_fn(request_span))
        .layer(middleware::from_fn_with_state(state, observe::observe))
}

/// Serves until `shutdown` resolves, with the connection limits of `[server]` (see `conn`).
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.config.server;
    conn::serve(router(state), listener, limits, shutdown).await
}

/// A request id unique to this process run: a random prefix drawn once, then a counter
/// (a random id per request costs a system call on the hottest path).
fn next_request_id() -> String {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    };
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
    format!("{prefix}-{:x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A narinfo, NAR or `nix-cache-info` read: the hottest requests, where an info-level span
/// costs ~12% of a lookup (the subscriber formats and stores its fields for every request).
fn is_cache_read(request: &Request) -> bool {
    let path = request.uri().path();
    matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD)
        && (path.starts_with("/nar/")
            || path == "/nix-cache-info"
            || (path.ends_with(".narinfo") && path.rfind('/') == Some(0)))
}

/// A cache read without a span (unless debug logging is on): its id is still sent back, and
/// a failure is logged with it after the fact (the error itself was logged just before).
async fn cache_read(request: Request, next: Next, id: String) -> Response {
    // A `Uri` clone shares its bytes: no allocation on the hot path.
    let uri = request.uri().clone();
    let mut response = next.run(request).await;
    if response.status().is_server_error() {
        tracing::error!(id = %id, path = %uri.path(), status = response.status().as_u16(), "request failed");
    }
    response.headers_mut().insert("x-request-id", HeaderValue::from_str(&id).expect("validated ascii"));
    response
}

async fn request_span(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .map(str::to_owned)
        .unwrap_or_else(next_request_id);
    if is_cache_read(&request) && !tracing::enabled!(tracing::Level::DEBUG) {
        return cache_read(request, next, id).await;
    }
    let span = tracing::info_span!("request", id = %id, method = %request.method(), path = %request.uri().path());
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "done"));
    response.headers_mut().insert("x-request-id", HeaderValue::from_str(&id).expect("validated ascii"));
    response
}
