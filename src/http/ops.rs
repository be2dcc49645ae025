//! Operational endpoints: `/healthz` (the index answers) and `/metrics` (Prometheus text).

use axum::{extract::State, http::header, response::IntoResponse};

use super::error::ApiError;
use crate::app::AppState;

/// `GET /healthz`: 200 when the index answers.
pub async fn healthz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.db.present(&[]).await?;
    Ok("ok\n")
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
