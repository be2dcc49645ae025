//! The deployment side of the API: a host long-polls for its signed manifest and reports
//! what it did (its `host:<name>` token allows nothing else); an admin rolls a host back or
//! redeploys a generation.

use std::time::Duration;

use axum::{
    body::Body,
    extract::{rejection::QueryRejection, Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;

use super::{auth, error::ApiError, json};
use crate::{
    app::AppState,
    auth::{valid_host_name, Scope},
    db::{GenerationRow, ReportRow},
    deploy::{
        keyset::{self, KEYS_HEADER},
        manifest::VERSION_HEADER,
        manifest_of, resend,
        status::Phase,
    },
    text::{clip_head, clip_tail, without_nul},
};

fn host_name(name: &str) -> Result<(), ApiError> {
    if valid_host_name(name) {
        Ok(())
    } else {
        Err(ApiError::BadRequest("invalid host name".into()))
    }
}

/// `?after=N&timeout=S`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestQuery {
    /// The generation the host applied last.
    after: Option<i64>,
    /// Seconds to hold the request (default 30, at most 60).
    timeout: Option<u64>,
}

/// `GET /api/v1/hosts/{name}/manifest`: the newest generation's signed manifest when it is
/// newer than `after`; otherwise held until one is made or the timeout passes (204).
pub async fn manifest(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<ManifestQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    host_name(&name)?;
    auth::require(&state, &headers, Scope::Host(name.clone())).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(query.timeout.unwrap_or(30).min(60));
    let after = query.after.unwrap_or(0);
    // The deploy keys the agent trusts (an agent before rotation sends none): its
    // acknowledgement, recorded with its poll, and its request for the key announcement.
    let trusted = match headers.get(KEYS_HEADER) {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| ApiError::BadRequest(format!("{KEYS_HEADER}: not ASCII")))?;
            let keys = keyset::parse_header(text).map_err(|e| ApiError::BadRequest(format!("{KEYS_HEADER}: {e}")))?;
            Some(keys.iter().map(|k| k.to_nix_string()).collect::<Vec<_>>())
        }
    };
    let acknowledged = trusted.as_ref().map(|keys| keys.join(","));
    if let Some(keys) = acknowledged.as_deref().filter(|k| state.deploy_keys.acknowledged(&name, k)) {
        state.db.touch_host(&name, Some(keys)).await?;
    }
    // An agent that names no version (berth before manifest version 2) gets version 1.
    let version = headers
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(1);
    // Nothing looks at the database while the host's generation does not change: the watch
    // wakes this request when one is made, here or (PostgreSQL) on another replica.
    let watch = state.deploys.subscribe(&name);
    loop {
        // Registered before the check, so a generation made in between is not missed.
        let made = watch.notified();
        tokio::pin!(made);
        made.as_mut().enable();
        // A paused host is handed nothing newer until it is resumed (which wakes this loop),
        // none a rollout holds until its wave is released (which wakes it too), and none
        // outside its activation window (looked at again by the agent's next poll).
        let offer = crate::deploy::offer::offer(&state, &name).await?;
        watch.knows(offer.latest);
        if let Some(g) = offer.generation.filter(|g| g.number > after) {
            state.db.touch_host(&name, acknowledged.as_deref()).await?;
            let ring = state.deploy_keys.for_signing(&state.db).await?;
            return Ok(Json(ring.sign(&manifest_of(&g, version), trusted.is_some())).into_response());
        }
        // Nothing new to run, but the agent is behind the deploy keys: it is told now, not
        // with its next generation, so a rotation never waits for a deploy.
        if let Some(trusted) = trusted.as_deref().filter(|t| state.deploy_keys.ring().needs_announcement(t)) {
            state.db.touch_host(&name, acknowledged.as_deref()).await?;
            let ring = state.deploy_keys.for_signing(&state.db).await?;
            if ring.needs_announcement(trusted) {
                return Ok(Json(KeysOnly { keys: ring.announcement() }).into_response());
            }
        }
        tokio::select! {
            _ = &mut made => {}
            _ = tokio::time::sleep_until(deadline) => {
                state.db.touch_host(&name, acknowledged.as_deref()).await?;
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
        }
    }
}

/// The answer to an agent behind the deploy keys with nothing new to run: the announcement
/// alone (no `manifest`; only agents that sent their keys get it).
#[derive(serde::Serialize)]
struct KeysOnly<'a> {
    keys: &'a crate::deploy::keyset::SignedAnnouncement,
}

/// `POST /api/v1/hosts/{name}/reports` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    generation: i64,
    phase: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    log_tail: Option<String>,
    #[serde(default)]
    duration_ms: Option<i64>,
    /// The generation the host runs now (after a rollback: the previous one).
    #[serde(default)]
    active_generation: Option<i64>,
    /// On `confirmed`: the host's own profile generation it became.
    #[serde(default)]
    profile_generation: Option<i64>,
}

/// Bytes kept of a report's one-line message (its beginning) and of its log tail (its end).
const MESSAGE_BYTES: usize = 1000;
const LOG_TAIL_BYTES: usize = 64 * 1024;

/// `POST /api/v1/hosts/{name}/reports`.
pub async fn report(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    host_name(&name)?;
    auth::require(&state, &headers, Scope::Host(name.clone())).await?;
    let r: ReportRequest = json::read(&headers, body).await?;
    let Some(phase) = Phase::parse(&r.phase) else {
        let names: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        return Err(ApiError::BadRequest(format!("unknown phase: expected one of {}", names.join(", "))));
    };
    if r.profile_generation.is_some_and(|n| n < 1) {
        return Err(ApiError::BadRequest("profile_generation: expected a number from 1".into()));
    }
    let Some(generation) = state.db.generation(&name, r.generation).await? else {
        return Err(ApiError::NotFound(format!("host {name} has no generation {}", r.generation)));
    };
    let message = r.message.map(|m| without_nul(clip_head(m.lines().next().unwrap_or_default(), MESSAGE_BYTES)));
    let row = ReportRow {
        generation: r.generation,
        phase: r.phase,
        message,
        log_tail: r.log_tail.map(|t| without_nul(clip_tail(&t, LOG_TAIL_BYTES))),
        duration_ms: r.duration_ms,
        profile_generation: r.profile_generation,
        created_at: 0,
    };
    crate::deploy::reporting::record(&state, &name, &generation, phase, &row, r.active_generation).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/hosts/{name}/reports`: the newest 100.
pub async fn reports(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<ReportRow>>, ApiError> {
    host_name(&name)?;
    auth::require(&state, &headers, Scope::Host(name.clone())).await?;
    Ok(Json(state.db.reports(&name, 100).await?))
}

/// `POST /api/v1/hosts/{name}/rollback` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The generation to go back to (default: the newest the host confirmed before what it
    /// runs, `deploy::rollback`).
    #[serde(default)]
    to: Option<i64>,
}

/// `POST /api/v1/hosts/{name}/rollback` (admin): a new generation with an older system.
pub async fn rollback(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<GenerationRow>), ApiError> {
    host_name(&name)?;
    auth::require(&state, &headers, Scope::Admin).await?;
    let request: RollbackRequest = json::read(&headers, body).await?;
    let made = resend::rollback(&state, &name, request.to).await?;
    Ok((StatusCode::CREATED, Json(made)))
}

/// `POST /api/v1/hosts/{name}/redeploy` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeployRequest {
    /// The generation to send again (default: the newest, the desired one).
    #[serde(default)]
    generation: Option<i64>,
}

/// `POST /api/v1/hosts/{name}/redeploy` (admin): a new generation with the same system as
/// `generation` (default: the newest), so a host that gave one up (rolled back, failed)
/// tries it again once the cause is fixed.
pub async fn redeploy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<GenerationRow>), ApiError> {
    host_name(&name)?;
    auth::require(&state, &headers, Scope::Admin).await?;
    let request: RedeployRequest = json::read(&headers, body).await?;
    let made = resend::redeploy(&state, &name, request.generation).await?;
    Ok((StatusCode::CREATED, Json(made)))
}
