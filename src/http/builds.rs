//! Build requests: `POST /api/v1/builds` (ci), `GET /api/v1/builds` (filtered),
//! `GET /api/v1/builds/{id}` and its log (followed while the build runs; both also to the
//! ID token of the job that submitted it), and `POST …/cancel`.

use axum::{
    body::Body,
    extract::{rejection::QueryRejection, Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};

use super::{auth, error::ApiError, json};
use crate::{
    app::AppState,
    auth::{valid_host_name, Scope},
    build::model::{valid_branch, valid_commit, BuildState},
    db::{BuildCommitRow, BuildFilter, BuildHostRow, BuildRow, ForgeStatusRow},
    metrics::Metrics,
};

/// `POST /api/v1/builds` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// A repository named in the configuration.
    pub repository: String,
    /// Full commit hash.
    pub commit: String,
    /// The branch it was pushed to.
    pub branch: String,
    /// Only these hosts (default: every host of the flake).
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// A build as the API shows it.
#[derive(Debug, Serialize)]
pub struct BuildView {
    id: i64,
    repository: String,
    commit: String,
    branch: String,
    requested_hosts: Vec<String>,
    state: String,
    reason: Option<String>,
    signature: Option<String>,
    /// Where the signed-history check started.
    history_base: Option<String>,
    /// Each commit it checked, oldest first, with its verdict and signer.
    commits: Vec<BuildCommitRow>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    attempts: i64,
    hosts: Vec<BuildHostRow>,
    /// What was posted to the forge, by context, and how its delivery went.
    forge_statuses: Vec<ForgeStatusRow>,
}

impl BuildView {
    fn new(
        b: BuildRow,
        hosts: Vec<BuildHostRow>,
        commits: Vec<BuildCommitRow>,
        forge_statuses: Vec<ForgeStatusRow>,
    ) -> Self {
        Self {
            id: b.id,
            requested_hosts: b.hosts.split_whitespace().map(str::to_owned).collect(),
            repository: b.repository,
            commit: b.commit_sha,
            branch: b.branch,
            state: b.state,
            reason: b.reason,
            signature: b.signature,
            history_base: b.history_base,
            commits,
            created_at: b.created_at,
            started_at: b.started_at,
            finished_at: b.finished_at,
            attempts: b.attempts,
            hosts,
            forge_statuses,
        }
    }
}

/// Validates a request and queues it; `(id, created)`. Shared with the webhooks.
pub async fn submit_build(state: &AppState, request: &SubmitRequest) -> Result<(i64, bool), ApiError> {
    if state.config.repository(&request.repository).is_none() {
        return Err(ApiError::BadRequest(format!(
            "unknown repository {:?}: it must be configured on the server",
            truncate(&request.repository)
        )));
    }
    if !valid_commit(&request.commit) {
        return Err(ApiError::BadRequest("commit must be a full 40-character lowercase hex hash".into()));
    }
    if !valid_branch(&request.branch) {
        return Err(ApiError::BadRequest(format!("invalid branch name {:?}", truncate(&request.branch))));
    }
    if let Some(bad) = request.hosts.iter().find(|h| !valid_host_name(h)) {
        return Err(ApiError::BadRequest(format!("invalid host name {:?}", truncate(bad))));
    }
    let mut hosts = request.hosts.clone();
    hosts.sort();
    hosts.dedup();
    Ok(state.builds.submit(&state.db, &request.repository, &request.commit, &request.branch, &hosts).await?)
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// `POST /api/v1/builds`: 202 with the build (a known commit answers the existing build).
pub async fn submit(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let oidc = auth::presented_token(&headers).filter(|t| crate::oidc::looks_like_jwt(t));
    if oidc.is_none() {
        auth::require(&state, &headers, Scope::Ci).await?;
    }
    let request: SubmitRequest = json::read(&headers, body).await?;
    if let Some(token) = oidc {
        auth::require_oidc(&state, &token, &request.repository, &request.branch, &request.commit).await?;
    }
    let (id, created) = submit_build(&state, &request).await?;
    tracing::info!(id, created, repository = %request.repository, commit = %request.commit, branch = %request.branch, "build submitted");
    let view = load(&state, id).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

async fn load(state: &AppState, id: i64) -> Result<BuildView, ApiError> {
    let build = state.db.build(id).await?.ok_or_else(|| ApiError::NotFound(format!("no build {id}")))?;
    let hosts = state.db.build_hosts(id).await?;
    let commits = state.db.build_commits(id).await?;
    let forge = state.db.forge_statuses(id).await?;
    Ok(BuildView::new(build, hosts, commits, forge))
}

/// Who may follow build `id`: a `ci` token, or the ID token of the CI job that may submit
/// exactly this build (its repository, branch and commit), so a job that authenticated with
/// its ID token can follow what it submitted and nothing else.
async fn require_follower(state: &AppState, headers: &HeaderMap, id: i64) -> Result<BuildRow, ApiError> {
    let Some(token) = auth::presented_token(headers).filter(|t| crate::oidc::looks_like_jwt(t)) else {
        auth::require(state, headers, Scope::Ci).await?;
        return state.db.build(id).await?.ok_or_else(|| ApiError::NotFound(format!("no build {id}")));
    };
    // No answer tells an ID token's holder which other builds exist.
    let Some(build) = state.db.build(id).await? else {
        Metrics::add(&state.metrics.auth_refusals, 1);
        return Err(ApiError::Unauthorized(format!("an ID token reads only the build its job submitted, not {id}")));
    };
    auth::require_oidc(state, &token, &build.repository, &build.branch, &build.commit_sha).await?;
    Ok(build)
}

/// `GET /api/v1/builds/{id}`.
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<BuildView>, ApiError> {
    require_follower(&state, &headers, id).await?;
    Ok(Json(load(&state, id).await?))
}

/// `GET /api/v1/builds?repo=R&branch=B&state=S&limit=N`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this repository's builds.
    repo: Option<String>,
    /// Only builds of this branch.
    branch: Option<String>,
    /// Only builds in this state (`queued`, `running`, `succeeded`, `failed`, `cancelled`).
    state: Option<String>,
    /// How many (default 50, at most 500).
    limit: Option<i64>,
}

/// `GET /api/v1/builds`: the most recent builds (50 by default), optionally only a
/// repository's, a branch's or those in one state.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<BuildView>>, ApiError> {
    auth::require(&state, &headers, Scope::Ci).await?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let build_state = match q.state.as_deref() {
        Some(s) => Some(BuildState::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown state {s:?}: expected queued, running, succeeded, failed or cancelled"
            ))
        })?),
        None => None,
    };
    let filter = BuildFilter {
        repository: q.repo.as_deref(),
        branch: q.branch.as_deref(),
        state: build_state.map(BuildState::as_str),
    };
    let mut views = Vec::new();
    for build in state.db.find_builds(&filter, q.limit.unwrap_or(50).clamp(1, 500)).await? {
        let hosts = state.db.build_hosts(build.id).await?;
        let commits = state.db.build_commits(build.id).await?;
        let forge = state.db.forge_statuses(build.id).await?;
        views.push(BuildView::new(build, hosts, commits, forge));
    }
    Ok(Json(views))
}

/// `GET /api/v1/builds/{id}/log`: plain text, streamed until the build ends.
pub async fn log(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let build = require_follower(&state, &headers, id).await?;
    if build.state == BuildState::Queued.as_str() {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "").into_response());
    }
    let stream = crate::build::log::of_build(&state, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("build {id} has no log")))?;
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(header::CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("valid"));
    Ok(response)
}

/// `POST /api/v1/builds/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<BuildView>, ApiError> {
    auth::require(&state, &headers, Scope::Ci).await?;
    load(&state, id).await?;
    state.builds.cancel(&state.db, id).await?;
    Ok(Json(load(&state, id).await?))
}
