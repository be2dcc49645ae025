//! What Nix reads and writes about derivations beside store paths: realisations of
//! content-addressed outputs (`realisations/<id>.doi`, uploaded by `nix copy` with
//! `ca-derivations`, looked up before a build) and build logs (`log/<drv>`, uploaded by
//! `nix store copy-log` or the build host, read by `nix log --store URL`).

use axum::{
    body::Body,
    extract::{Path, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};

use super::{auth, error::ApiError};
use crate::{
    app::AppState,
    auth::Scope,
    ingest::attached,
    nixfmt::{DrvName, DrvOutputId, Realisation},
    store::ObjectKey,
};

/// Largest realisation accepted (Nix's are a few hundred bytes).
const MAX_REALISATION: usize = 256 << 10;

fn realisation_id(file: &str) -> Result<DrvOutputId, ApiError> {
    let id = file.strip_suffix(".doi").ok_or_else(|| ApiError::NotFound("realisations are <id>.doi".into()))?;
    DrvOutputId::parse(id).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn drv_name(file: &str) -> Result<DrvName, ApiError> {
    DrvName::parse(file).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// `GET /realisations/<id>.doi`.
pub async fn get_realisation(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    auth::require_read(&state, &headers).await?;
    let id = realisation_id(&file)?;
    match state.store.get_bytes(&ObjectKey::Realisation(id.clone())).await? {
        Some(json) => Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response()),
        None => Err(ApiError::NotFound(format!("no realisation of {id}"))),
    }
}

/// `PUT /realisations/<id>.doi`: signed with the cache key when its output is in the cache.
pub async fn put_realisation(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    auth::require(&state, &headers, Scope::Push).await?;
    let id = realisation_id(&file)?;
    let bytes = axum::body::to_bytes(body, MAX_REALISATION)
        .await
        .map_err(|_| ApiError::TooLarge(format!("realisation over {MAX_REALISATION} bytes, or cut short")))?;
    let realisation = Realisation::parse(&bytes).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if realisation.id() != &id {
        return Err(ApiError::BadRequest(format!("realisation of {} uploaded as {id}.doi", realisation.id())));
    }
    attached::realisation(state.cache(), realisation).await?;
    Ok(StatusCode::OK.into_response())
}

/// `GET /log/<drv>`: a derivation's build log, streamed.
pub async fn get_log(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    auth::require_read(&state, &headers).await?;
    let drv = drv_name(&file)?;
    let body = state
        .store
        .get(&ObjectKey::DrvLog(drv.clone()), None)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no build log of {drv}")))?;
    let headers = [
        (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
        (header::CONTENT_LENGTH, body.size.to_string()),
    ];
    Ok((headers, Body::from_stream(body.stream)).into_response())
}

/// `PUT /log/<drv>`: the build log of a derivation that built a path in the cache.
pub async fn put_log(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    auth::require(&state, &headers, Scope::Push).await?;
    let drv = drv_name(&file)?;
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING).filter(|v| v.as_bytes() != b"identity") {
        let encoding = String::from_utf8_lossy(encoding.as_bytes()).chars().take(40).collect::<String>();
        return Err(ApiError::BadRequest(format!(
            "build logs are stored as plain text: Content-Encoding {encoding:?} is not accepted (Nix: ?log-compression=none)"
        )));
    }
    attached::drv_log(state.cache(), &drv, body.into_data_stream()).await?;
    Ok(StatusCode::OK.into_response())
}
