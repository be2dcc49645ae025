//! Hosts and their generations: `GET /api/v1/hosts` (admin) and
//! `GET /api/v1/hosts/{name}/generations` (admin, or that host's own token).

use std::collections::HashMap;

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
    deploy::status::{self, Phase},
};

/// `GET /api/v1/hosts`: each host with the state of its newest generation (or `offline`)
/// and its newest build's verdict. A fixed number of queries, whatever the fleet's size.
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<HostRow>>, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    let mut hosts = state.db.hosts().await?;
    let mut last_builds: HashMap<_, _> = state.db.last_builds().await?.into_iter().collect();
    let mut reports: HashMap<String, Vec<(i64, String, Option<String>)>> = HashMap::new();
    for (host, generation, phase, message) in state.db.newest_report_phases().await? {
        reports.entry(host).or_default().push((generation, phase, message));
    }
    let now = crate::db::now();
    for h in &mut hosts {
        h.last_build = last_builds.remove(&h.name);
        let seen = seen(reports.get(&h.name).map_or(&[], Vec::as_slice));
        let newest = h.latest.as_ref().map(|g| g.number);
        let (seen_at, paused) = (h.status.last_seen, h.status.paused_at.is_some());
        let offline_after = state.config.offline_after_secs;
        h.state = Some(status::host_state(newest, &seen, seen_at, paused, h.held_by, now, offline_after));
    }
    Ok(Json(hosts))
}

/// Reports as the status rule reads them (phases it does not know are left out).
fn seen(reports: &[(i64, String, Option<String>)]) -> Vec<status::Seen<'_>> {
    reports
        .iter()
        .filter_map(|(generation, phase, message)| {
            Some(status::Seen { generation: *generation, phase: Phase::parse(phase)?, message: message.as_deref() })
        })
        .collect()
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
    if !state.db.host_exists(&name).await? {
        return Err(ApiError::NotFound(format!("no host {name}")));
    }
    let mut generations = state.db.generations(&name).await?;
    let reports = state.db.report_phases(&name).await?;
    let seen = seen(&reports);
    let newest = generations.first().map_or(0, |g| g.number);
    let profiles: std::collections::HashMap<i64, i64> =
        state.db.profile_generations(&name).await?.into_iter().collect();
    for g in &mut generations {
        g.outcome = Some(status::outcome(g.number, newest, &seen));
        g.profile_generation = profiles.get(&g.number).copied();
    }
    Ok(Json(generations))
}

/// `GET /api/v1/hosts/{name}/diff?from=N&to=M` query.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    from: Option<i64>,
    to: Option<i64>,
}

/// `GET /api/v1/hosts/{name}/diff?from=N&to=M` (admin, or that host's own token): what
/// switching from generation N (default: what the host runs) to M (default: the newest)
/// changes, from the cache's index.
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
    Ok(Json(DiffView { host: name, from, to, diff }))
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
