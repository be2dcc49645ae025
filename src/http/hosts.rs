//! Hosts and their generations: `GET /api/v1/hosts` (admin) and
//! `GET /api/v1/hosts/{name}/generations` (admin, or that host's own token).

use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    http::HeaderMap,
    Json,
};

use super::{auth, error::ApiError};
use crate::{
    app::AppState,
    auth::{valid_host_name, Scope},
    db::{GenerationRow, HostRow},
    deploy::diff::{DiffEnd, DiffView},
    deploy::fleet,
};

/// `GET /api/v1/hosts`: each host with the state of its newest generation (or `offline`)
/// and its newest build's verdict. A fixed number of queries, whatever the fleet's size.
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<HostRow>>, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    Ok(Json(fleet::hosts(&state.db, &state.config).await?))
}

/// `GET /api/v1/hosts/{name}/generations`: newest first, each with its outcome.
pub async fn generations(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Vec<GenerationRow>>, ApiError> {
    if !valid_host_name(&name) {
        return Err(ApiError::BadRequest("invalid host name".into()));
    }
    auth::require(&state, &headers, Scope::Host(name.clone())).await?;
    let history = fleet::history(&state.db, &name).await?;
    Ok(Json(history.ok_or_else(|| ApiError::NotFound(format!("no host {name}")))?))
}

/// `GET /api/v1/hosts/{name}/diff?from=N&to=M` query.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    from: Option<i64>,
    to: Option<i64>,
}

/// `GET /api/v1/hosts/{name}/diff?from=N&to=M` (admin, or that host's own token): what
/// switching from generation N to M (default: the newest) changes. Without N: M's own diff,
/// stored when it was made; when it has none, from what the host runs, computed from the
/// cache's index (as is every diff with N).
pub async fn diff(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Json<DiffView>, ApiError> {
    if !valid_host_name(&name) {
        return Err(ApiError::BadRequest("invalid host name".into()));
    }
    auth::require(&state, &headers, Scope::Host(name.clone())).await?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let newest = state
        .db
        .latest_generation(&name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("host {name} has no generation")))?;
    let to_number = q.to.unwrap_or(newest.number);
    // Without FROM: the generation's own diff, stored when it was made, when it has one.
    if q.from.is_none() {
        if let Some((from, diff)) = crate::deploy::closures::stored(&state.db, &name, to_number).await? {
            let to = diff_end(&state, &name, to_number).await?;
            let from = match from {
                Some(n) => Some(diff_end(&state, &name, n).await?),
                None => None,
            };
            return Ok(Json(DiffView { host: name, from, to, diff, stored: true }));
        }
    }
    let active = state.db.host_status(&name).await?.active_generation;
    let (from, to) = crate::deploy::diff::endpoints(newest.number, active, q.from, q.to);
    let to = diff_end(&state, &name, to).await?;
    let from = match from {
        Some(n) => Some(diff_end(&state, &name, n).await?),
        None => None,
    };
    let diff =
        crate::deploy::closures::between(&state.db, from.as_ref().map(|f| f.store_path.as_str()), &to.store_path)
            .await?;
    Ok(Json(DiffView { host: name, from, to, diff, stored: false }))
}

/// Generation `number` of `name` as one end of a diff (404 when it has none).
async fn diff_end(state: &AppState, name: &str, number: i64) -> Result<DiffEnd, ApiError> {
    let g = state.db.generation(name, number).await?;
    let g = g.ok_or_else(|| ApiError::NotFound(format!("host {name} has no generation {number}")))?;
    Ok(DiffEnd { number, store_path: g.store_path })
}

/// `POST /api/v1/hosts/{name}/pause` and `…/resume` answer.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PauseView {
    /// Host name.
    pub host: String,
    /// Whether it is held on its current generation now.
    pub paused: bool,
}

/// `POST /api/v1/hosts/{name}/pause` (admin): holds the host on its current generation; its
/// agent is handed no newer one until `resume`.
pub async fn pause(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<PauseView>, ApiError> {
    set_paused(state, headers, name, true).await
}

/// `POST /api/v1/hosts/{name}/resume` (admin): releases a paused host; its agent is woken and
/// handed its newest generation.
pub async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<PauseView>, ApiError> {
    set_paused(state, headers, name, false).await
}

async fn set_paused(
    state: AppState,
    headers: HeaderMap,
    name: String,
    paused: bool,
) -> Result<Json<PauseView>, ApiError> {
    if !valid_host_name(&name) {
        return Err(ApiError::BadRequest("invalid host name".into()));
    }
    auth::require(&state, &headers, Scope::Admin).await?;
    if !state.db.set_paused(&name, paused).await? {
        return Err(ApiError::NotFound(format!("no host {name}")));
    }
    tracing::info!(host = %name, paused, "pause");
    // Its waiting long-polls here look again: on resume they find the newest generation (on
    // another replica, at their next poll).
    state.deploys.wake(&name);
    Ok(Json(PauseView { host: name, paused }))
}
