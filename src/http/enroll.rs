//! Enrollment endpoints: `POST /api/v1/hosts` (admin: a host and its one-time code),
//! `POST /api/v1/enroll` (no token: the code is the credential, traded for the host's token),
//! `DELETE /api/v1/hosts/{name}` (admin: revoke everything of a host) and
//! `GET /api/v1/hosts/keys` (admin: every recorded SSH host key).

use axum::{
    body::Body,
    extract::{rejection::QueryRejection, Path, Query, State},
    http::{HeaderMap, StatusCode},
    Json,
};

use super::{auth, error::ApiError, json};
use crate::{
    app::AppState,
    auth::{valid_host_name, Scope},
    db::HostRemoval,
    enroll::{
        issue::{self, AddError, AddHost, EnrollRequest, Granted, TradeError},
        render::{Enrollment, RecordedKey},
        Refusal,
    },
    metrics::Metrics,
};

/// Largest enrollment body: it is read before anything is authenticated.
const MAX_ENROLL_BODY: usize = 4096;

/// `POST /api/v1/hosts` (admin).
pub async fn add(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Enrollment>), ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    let request: AddHost = json::read(&headers, body).await?;
    let made = issue::add_host(&state.db, state.deploy_keys.ring().current_public(), &request).await?;
    Ok((StatusCode::CREATED, Json(made)))
}

/// `POST /api/v1/enroll` (no token).
pub async fn enroll(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Json<Granted>, ApiError> {
    let request: EnrollRequest = json::read_at_most(&headers, body, MAX_ENROLL_BODY).await?;
    issue::enroll(&state.db, &request).await.map(Json).map_err(|e| {
        if matches!(e, TradeError::Refused(_) | TradeError::Malformed(_)) {
            Metrics::add(&state.metrics.auth_refusals, 1);
        }
        e.into()
    })
}

/// `DELETE /api/v1/hosts/{name}?purge=true` query.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    #[serde(default)]
    purge: bool,
}

/// `DELETE /api/v1/hosts/{name}` (admin).
pub async fn remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<RemoveQuery>, QueryRejection>,
) -> Result<Json<HostRemoval>, ApiError> {
    if !valid_host_name(&name) {
        return Err(ApiError::BadRequest("invalid host name".into()));
    }
    auth::require(&state, &headers, Scope::Admin).await?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let removed = state.db.remove_host(&name, q.purge).await?;
    let removed = removed.ok_or_else(|| ApiError::NotFound(format!("no host {name}")))?;
    tracing::info!(host = %name, ?removed, "host removed");
    // Its waiting long-polls end; their next poll is refused.
    state.deploys.wake(&name);
    Ok(Json(removed))
}

/// `GET /api/v1/hosts/keys` (admin).
pub async fn keys(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<RecordedKey>>, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    Ok(Json(state.db.host_keys().await?))
}

impl From<AddError> for ApiError {
    fn from(e: AddError) -> Self {
        match e {
            AddError::Name | AddError::Tag(_) | AddError::Repository | AddError::Expiry => {
                Self::BadRequest(e.to_string())
            }
            AddError::Random(_) => Self::Internal(e.to_string()),
            AddError::Db(e) => e.into(),
        }
    }
}

impl From<TradeError> for ApiError {
    fn from(e: TradeError) -> Self {
        match e {
            TradeError::Name | TradeError::Key(_) => Self::BadRequest(e.to_string()),
            TradeError::Malformed(_) | TradeError::Refused(Refusal::Unknown | Refusal::OtherHost) => {
                Self::Unauthorized(e.to_string())
            }
            TradeError::Refused(Refusal::Used | Refusal::Expired) => Self::Gone(e.to_string()),
            TradeError::Random(_) => Self::Internal(e.to_string()),
            TradeError::Db(e) => e.into(),
        }
    }
}
