//! The deploy keys over HTTP (admin): `GET /api/v1/keys/deploy` shows every key, its state
//! and what each host's agent trusts; `POST /api/v1/keys/deploy/rotate` starts a rotation
//! (`deploy::keys`). Neither ever shows a secret.

use axum::{extract::State, http::HeaderMap, http::StatusCode, Json};

use super::{auth, error::ApiError};
use crate::{
    app::AppState,
    auth::Scope,
    deploy::keys::{KeyView, KeysStatus},
};

/// `GET /api/v1/keys/deploy`.
pub async fn status(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<KeysStatus>, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    let pushed = crate::deploy::keys::pushed_hosts(&state);
    let mut status = state.deploy_keys.status(&state.db, &pushed).await?;
    let cache_key = state.signing_key.public().to_nix_string();
    status.cache = crate::deploy::keys::cache_key_view(&state.db, &state.config.keys, &cache_key).await?;
    Ok(Json(status))
}

/// `POST /api/v1/keys/deploy/rotate`: `201` with the next key; `409` while a rotation waits.
pub async fn rotate(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    let next = state.deploy_keys.rotate(&state.db).await?;
    state.deploys.wake_all();
    Ok((StatusCode::CREATED, Json(KeyView::of(&next))))
}
