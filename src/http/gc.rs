//! Retention over HTTP (admin): `POST /api/v1/gc` runs (or plans) a collection; named pins
//! keep closures that are not hosts.

use axum::{
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    Json,
};
use serde::Deserialize;

use super::{auth, error::ApiError, json};
use crate::{
    app::AppState,
    auth::Scope,
    db::PinRow,
    gc::{
        self,
        pins::{self, valid_pin_name, PinError},
        GcError, GcReport,
    },
};

/// `POST /api/v1/gc` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    /// Generations kept per host for this run (default: the configured policy).
    #[serde(default)]
    keep: Option<usize>,
    /// Only print the plan.
    #[serde(default)]
    dry_run: bool,
}

impl From<GcError> for ApiError {
    fn from(e: GcError) -> Self {
        match e {
            GcError::Busy => ApiError::Conflict(e.to_string()),
            GcError::Db(e) => e.into(),
            GcError::Store(e) => e.into(),
        }
    }
}

/// `POST /api/v1/gc`.
pub async fn collect(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<GcReport>, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    let request: GcRequest = json::read(&headers, body).await?;
    let policy = match request.keep {
        Some(0) => return Err(ApiError::BadRequest("keep must be at least 1".into())),
        Some(keep) => state.config.retention.with_keep(keep),
        None => state.config.retention.clone(),
    };
    Ok(Json(gc::collect(&state, &policy, request.dry_run).await?))
}

fn pin_name(name: &str) -> Result<(), ApiError> {
    if valid_pin_name(name) {
        Ok(())
    } else {
        Err(PinError::BadName.into())
    }
}

impl From<PinError> for ApiError {
    fn from(e: PinError) -> Self {
        match e {
            PinError::BadName | PinError::BadPath(_) | PinError::NotInCache(_) => ApiError::BadRequest(e.to_string()),
            PinError::Db(e) => e.into(),
        }
    }
}

/// `PUT /api/v1/pins/{name}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    /// The store path whose closure the pin keeps.
    store_path: String,
}

/// `PUT /api/v1/pins/{name}`: keep this path's closure (like a GC root).
pub async fn pin(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    let request: PinRequest = json::read(&headers, body).await?;
    pins::pin(&state, &name, &request.store_path).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/pins/{name}`.
pub async fn unpin(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    pin_name(&name)?;
    if state.db.remove_pin(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no pin {name}")))
    }
}

/// `GET /api/v1/pins`.
pub async fn pins(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<PinRow>>, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    Ok(Json(state.db.pins().await?))
}
