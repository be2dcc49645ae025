//! `POST /api/v1/webhooks/{forgejo,gitea,github}`: a signed push event becomes a build. No
//! token: the HMAC-SHA256 signature, checked in constant time against each configured
//! repository's secret, is the authentication, and it also says which repository it is.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

use super::{builds, error::ApiError};
use crate::{
    app::AppState,
    metrics::Metrics,
    webhook::{self, Forge},
};

/// Handles one webhook delivery.
pub async fn receive(
    State(state): State<AppState>,
    Path(forge): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let forge = Forge::parse(&forge).map_err(|e| ApiError::NotFound(e.to_string()))?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signature = header(webhook::signature_header(forge));
    let repo = state
        .config
        .repositories
        .iter()
        .filter_map(|r| r.webhook_secret.as_ref().map(|s| (r, s)))
        .find(|(_, secret)| webhook::verify_signature(forge, &secret.0, &body, signature).is_ok())
        .map(|(r, _)| r);
    let Some(repo) = repo else {
        Metrics::add(&state.metrics.auth_refusals, 1);
        let why = match signature {
            None => format!("missing {} header", webhook::signature_header(forge)),
            Some(_) => "the signature matches no configured repository's webhook secret".to_owned(),
        };
        return Err(ApiError::Unauthorized(why));
    };
    let event = webhook::parse_push(forge, header(webhook::event_header(forge)), &body)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let Some(event) = event.filter(|e| !e.deleted) else {
        return Ok((StatusCode::OK, Json(serde_json::json!({ "status": "ignored" }))).into_response());
    };
    if !event.is_for(&repo.url) {
        return Err(ApiError::BadRequest(format!(
            "the event is for {}, not for repository {}",
            event.repository_full_name, repo.name
        )));
    }
    let request = builds::SubmitRequest {
        repository: repo.name.clone(),
        commit: event.commit,
        branch: event.branch,
        hosts: vec![],
    };
    let (id, created) = builds::submit_build(&state, &request).await?;
    tracing::info!(id, created, forge = forge.as_str(), repository = %repo.name, "webhook queued a build");
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "status": "queued", "id": id, "created": created })))
        .into_response())
}
