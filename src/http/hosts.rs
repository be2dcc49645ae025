//! Hosts and their generations: `GET /api/v1/hosts` (admin) and
//! `GET /api/v1/hosts/{name}/generations` (admin, or that host's own token).

use axum::{
    extract::{Path, State},
    http::HeaderMap,
    Json,
};

use super::{auth, error::ApiError};
use crate::{
    app::AppState,
    auth::{valid_host_name, Scope},
    db::{GenerationRow, HostRow},
};

/// `GET /api/v1/hosts`.
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<HostRow>>, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    Ok(Json(state.db.hosts().await?))
}

/// `GET /api/v1/hosts/{name}/generations`: newest first.
pub async fn generations(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Vec<GenerationRow>>, ApiError> {
    if !valid_host_name(&name) {
        return Err(ApiError::BadRequest("invalid host name".into()));
    }
    auth::require(&state, &headers, Scope::Host(name.clone())).await?;
    if !state.db.host_exists(&name).await? {
        return Err(ApiError::NotFound(format!("no host {name}")));
    }
    Ok(Json(state.db.generations(&name).await?))
}
