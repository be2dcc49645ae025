//! Staged rollouts (admin): `GET /api/v1/rollouts`, `GET /api/v1/rollouts/{id}`,
//! `POST /api/v1/rollouts/{id}/resume` and `…/abort`. The driver (`deploy::rollouts`) decides;
//! these only show and command it.

use axum::{
    extract::{rejection::PathRejection, Path, State},
    http::HeaderMap,
    Json,
};

use super::{auth, error::ApiError};
use crate::{
    app::AppState,
    auth::Scope,
    deploy::rollouts::{self, RolloutError, RolloutView},
};

/// How many rollouts the list shows, newest first.
const LIST_LIMIT: i64 = 20;

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::NotFound(_) => Self::NotFound(e.to_string()),
            RolloutError::WrongState { .. } => Self::Conflict(e.to_string()),
            RolloutError::Db(e) => e.into(),
        }
    }
}

fn rollout_id(path: Result<Path<i64>, PathRejection>) -> Result<i64, ApiError> {
    path.map(|Path(id)| id).map_err(|_| ApiError::BadRequest("a rollout id is a number".into()))
}

/// `GET /api/v1/rollouts`: the newest rollouts with their hosts.
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<RolloutView>>, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    Ok(Json(rollouts::list(&state, LIST_LIMIT).await?))
}

/// `GET /api/v1/rollouts/{id}`.
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<i64>, PathRejection>,
) -> Result<Json<RolloutView>, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    Ok(Json(rollouts::view(&state, rollout_id(path)?).await?))
}

/// `POST /api/v1/rollouts/{id}/resume`: a halted rollout goes on (409 otherwise).
pub async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<i64>, PathRejection>,
) -> Result<Json<RolloutView>, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    let id = rollout_id(path)?;
    rollouts::resume(&state, id).await?;
    Ok(Json(rollouts::view(&state, id).await?))
}

/// `POST /api/v1/rollouts/{id}/abort`: an open rollout stops (409 otherwise).
pub async fn abort(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<i64>, PathRejection>,
) -> Result<Json<RolloutView>, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    let id = rollout_id(path)?;
    rollouts::abort(&state, id).await?;
    Ok(Json(rollouts::view(&state, id).await?))
}
