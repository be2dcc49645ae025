//! Hosts and their generations: `GET /api/v1/hosts` (admin) and
//! `GET /api/v1/hosts/{name}/generations` (admin, or that host's own token).

use std::collections::HashMap;

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
    deploy::status::{self, Phase},
};

/// `GET /api/v1/hosts`: each host with the state of its newest generation (or `offline`).
/// A fixed number of queries, whatever the fleet's size.
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<HostRow>>, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    let mut hosts = state.db.hosts().await?;
    let mut reports: HashMap<String, Vec<(i64, String, Option<String>)>> = HashMap::new();
    for (host, generation, phase, message) in state.db.newest_report_phases().await? {
        reports.entry(host).or_default().push((generation, phase, message));
    }
    let now = crate::db::now();
    for h in &mut hosts {
        let seen = seen(reports.get(&h.name).map_or(&[], Vec::as_slice));
        let newest = h.latest.as_ref().map(|g| g.number);
        h.state = Some(status::host_state(newest, &seen, h.status.last_seen, now, state.config.offline_after_secs));
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
    for g in &mut generations {
        g.outcome = Some(status::outcome(g.number, newest, &seen));
    }
    Ok(Json(generations))
}
