//! Operational endpoints: `/healthz` (the index and the storage answer) and `/metrics`
//! (Prometheus text).

use axum::{extract::State, http::header, response::IntoResponse};

use super::error::ApiError;
use crate::{app::AppState, store::ObjectKey};

/// `GET /healthz`: 200 when the index answers and the storage holds `nix-cache-info` (a
/// replica whose bucket or credentials broke leaves the load balancer's rotation).
pub async fn healthz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.db.ping().await?;
    if state.store.head(&ObjectKey::CacheInfo).await?.is_none() {
        return Err(ApiError::Internal("nix-cache-info is missing from the storage".into()));
    }
    Ok("ok\n")
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
