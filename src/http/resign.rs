//! Re-signing over HTTP (admin): `POST /api/v1/cache/resign` starts or resumes a run of
//! `berth cache resign` (see `resign`), `GET` reports its progress.

use axum::{body::Body, extract::State, http::HeaderMap, http::StatusCode, Json};
use serde::{Deserialize, Serialize};

use super::{auth, error::ApiError, json};
use crate::{
    app::AppState,
    auth::Scope,
    db::ResignRun,
    nixfmt::OldSignatures,
    resign::{self, ResignError},
};

/// `POST /api/v1/cache/resign` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResignRequest {
    /// `keep` or `drop`; absent: what an unfinished run does, else `keep`.
    #[serde(default)]
    old_signatures: Option<OldSignatures>,
}

/// A run as the API reports it.
#[derive(Debug, Serialize)]
pub struct ResignStatus {
    /// The run as recorded.
    #[serde(flatten)]
    run: ResignRun,
    /// Published paths now (the run's goal, give or take what is published meanwhile).
    paths: i64,
    /// Whether a process is working on it now (else an unfinished run waits to be resumed).
    working: bool,
}

async fn working(state: &AppState) -> Result<bool, ApiError> {
    if state.resign_running.try_lock().is_err() {
        return Ok(true);
    }
    // Another replica's run holds the database lock; taking it for a moment tells.
    Ok(state.db.try_lock_resign().await?.is_none())
}

impl From<ResignError> for ApiError {
    fn from(e: ResignError) -> Self {
        match e {
            ResignError::Busy | ResignError::OtherChoice { .. } => ApiError::Conflict(e.to_string()),
            ResignError::Db(e) => e.into(),
            ResignError::Store(e) => e.into(),
        }
    }
}

/// `POST /api/v1/cache/resign`: 202 with the run as it starts.
pub async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ResignStatus>), ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    let request: ResignRequest = json::read(&headers, body).await?;
    let run = resign::start(&state, request.old_signatures).await?;
    let paths = state.db.count_paths().await?;
    Ok((StatusCode::ACCEPTED, Json(ResignStatus { run, paths, working: true })))
}

/// `GET /api/v1/cache/resign`: the last run's progress.
pub async fn status(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<ResignStatus>, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    let run = state.db.resign_run().await?.ok_or_else(|| ApiError::NotFound("no re-signing run yet".into()))?;
    let paths = state.db.count_paths().await?;
    Ok(Json(ResignStatus { run, paths, working: working(&state).await? }))
}
