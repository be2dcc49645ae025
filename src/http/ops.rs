//! Operational endpoints: `/healthz` (the index and the storage answer) and `/metrics`
//! (Prometheus text).

use axum::{
    extract::State,
    http::{header, HeaderMap},
    response::IntoResponse,
};

use super::{auth, error::ApiError};
use crate::{
    app::AppState,
    auth::Scope,
    db::{now, DbError},
    deploy::fleet,
    metrics::{Metrics, Scrape},
    store::ObjectKey,
};

/// `GET /healthz`: 200 when the index answers and the storage holds `nix-cache-info` (a
/// replica whose bucket or credentials broke leaves the load balancer's rotation).
pub async fn healthz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.db.ping().await?;
    if state.store.head(&ObjectKey::CacheInfo).await?.is_none() {
        return Err(ApiError::Internal("nix-cache-info is missing from the storage".into()));
    }
    Ok("ok\n")
}

/// `GET /metrics`: public, or for a `metrics` (or admin) token (`metrics_public`). Reads the
/// build queue and the host list (four queries, whatever the fleet's size), counted apart.
/// When the index fails, the counters are still served (they matter most then), without
/// the figures read from it, and `berth_index_up` says 0.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    if !state.config.metrics_public {
        auth::require(&state, &headers, Scope::Metrics).await?;
    }
    let scrape = crate::db::scraping(async {
        let (queued, running) = state.db.active_builds().await?;
        let hosts = fleet::hosts(&state.db, &state.config).await?;
        Ok::<_, DbError>(Scrape { queued, running, hosts, now: now() })
    })
    .await
    .inspect_err(|e| tracing::error!(error = %e, "reading the index for /metrics"));
    let mut text = state.metrics.render();
    if let Ok(scrape) = &scrape {
        scrape.render(&mut text);
    }
    let waiting = state.deploys.polls();
    Metrics::render_gauge(&mut text, "berth_manifest_polls_waiting", "manifest long-polls held", waiting);
    let up = u64::from(scrape.is_ok());
    Metrics::render_gauge(&mut text, "berth_index_up", "1 when this scrape could read the index, else 0", up);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}
