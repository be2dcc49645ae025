//! The Nix binary-cache protocol: `nix-cache-info`, narinfos, NAR listings and NARs, for
//! reading (`GET`/`HEAD`) and for Nix's own uploads (`PUT`, as `nix copy --to http://…`
//! sends them: the NAR first, then its narinfo).

use axum::{
    body::Body,
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures::TryStreamExt;

use super::{auth, error::ApiError, range};
use crate::{
    app::AppState,
    auth::Scope,
    config::NarRedirect,
    ingest,
    metrics::{Lookup, MemoryCache, Metrics, Rejection},
    nixfmt::{NameError, NarFileName, PathInfo, StorePathHash},
    store::ObjectKey,
};

/// NARs and narinfos never change once published: let clients and CDNs keep them.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Largest narinfo or listing accepted in a PUT.
const SMALL_BODY_LIMIT: usize = 16 << 20;

/// `GET /nix-cache-info`.
pub async fn cache_info(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    auth::require_read(&state, &headers).await?;
    let text = crate::app::cache_info_text(&state.cache);
    Ok(([(header::CONTENT_TYPE, "text/x-nix-cache-info")], text).into_response())
}

/// What a top-level file name addresses.
enum TopLevel {
    NarInfo(StorePathHash),
    Listing(StorePathHash),
}

fn top_level(file: &str) -> Result<TopLevel, ApiError> {
    let bad = |e: crate::nixfmt::NameError| ApiError::BadRequest(e.to_string());
    if let Some(hash) = file.strip_suffix(".narinfo") {
        Ok(TopLevel::NarInfo(StorePathHash::parse(hash).map_err(bad)?))
    } else if let Some(hash) = file.strip_suffix(".ls") {
        Ok(TopLevel::Listing(StorePathHash::parse(hash).map_err(bad)?))
    } else {
        Err(ApiError::NotFound(format!("no such file {:?}", file.chars().take(80).collect::<String>())))
    }
}

/// `GET|HEAD /<hash>.narinfo` and `/<hash>.ls`.
pub async fn get_top_level(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    auth::require_read(&state, &headers).await?;
    match top_level(&file)? {
        TopLevel::NarInfo(hash) => match narinfo(&state, &hash).await? {
            Some(text) => {
                Metrics::add(&state.metrics.narinfo_hits, 1);
                Ok(([(header::CONTENT_TYPE, "text/x-nix-narinfo")], text).into_response())
            }
            None => {
                Metrics::add(&state.metrics.narinfo_misses, 1);
                Err(ApiError::NotFound(format!("{hash} is not in this cache")))
            }
        },
        // Only a published path's listing (one stored by an older berth for any hash is not).
        TopLevel::Listing(hash) if narinfo(&state, &hash).await?.is_none() => {
            Err(ApiError::NotFound(format!("{hash} is not in this cache")))
        }
        TopLevel::Listing(hash) => match state.store.get_bytes(&ObjectKey::Listing(hash.clone())).await? {
            Some(json) => Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response()),
            None => Err(ApiError::NotFound(format!("no listing for {hash}"))),
        },
    }
}

/// A published narinfo, from memory when it was looked up recently.
async fn narinfo(state: &AppState, hash: &StorePathHash) -> Result<Option<Bytes>, ApiError> {
    if let Some(text) = state.narinfos.get(hash.as_str()) {
        state.metrics.lookup(MemoryCache::Narinfo, Lookup::Hit);
        return Ok(Some(text));
    }
    state.metrics.lookup(MemoryCache::Narinfo, Lookup::Miss);
    // A miss never reaches the index (`published.rs`).
    if state.published.certainly_absent(hash) {
        state.metrics.lookup(MemoryCache::Published, Lookup::Hit);
        return Ok(None);
    }
    state.metrics.lookup(MemoryCache::Published, Lookup::Miss);
    let epoch = state.narinfos.epoch();
    let Some(text) = state.db.narinfo(hash.as_str()).await? else { return Ok(None) };
    let text = Bytes::from(text);
    state.narinfos.insert(epoch, hash.as_str(), text.clone());
    Ok(Some(text))
}

/// `PUT /<hash>.narinfo` (publish, after its NAR) and `PUT /<hash>.ls` (store a listing).
pub async fn put_top_level(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    auth::require(&state, &headers, Scope::Push).await?;
    let target = top_level(&file)?;
    let bytes = axum::body::to_bytes(body, SMALL_BODY_LIMIT)
        .await
        .map_err(|_| ApiError::TooLarge(format!("body over {SMALL_BODY_LIMIT} bytes, or cut short")))?;
    match target {
        TopLevel::NarInfo(hash) => {
            let info = PathInfo::parse(&bytes).map_err(|e| {
                state.metrics.reject(Rejection::Malformed);
                ApiError::BadRequest(e.to_string())
            })?;
            if info.hash() != hash {
                state.metrics.reject(Rejection::Mismatch);
                return Err(ApiError::BadRequest(format!("narinfo for {} uploaded as {hash}.narinfo", info.hash())));
            }
            let outcome =
                ingest::publish(state.cache(), info).await.inspect_err(|e| state.metrics.reject(e.rejection()))?;
            if outcome == ingest::Published::New {
                Metrics::add(&state.metrics.paths_published, 1);
                tracing::info!(%hash, "published");
            }
            ingest::adopt_listing(&state.store, &hash).await?;
            Ok(StatusCode::OK.into_response())
        }
        TopLevel::Listing(hash) => {
            ingest::receive_listing(&state.store, &state.db, hash, bytes).await?;
            Ok(StatusCode::OK.into_response())
        }
    }
}

/// The NAR a read asks for: a name in a compression berth never stores is a miss (Nix
/// asks for `.nar.bz2` and `.nar.br` files too), not a malformed request.
fn nar_to_read(file: &str) -> Result<NarFileName, ApiError> {
    NarFileName::parse(file).map_err(|e| match e {
        NameError::UnstoredCompression(_) => ApiError::NotFound(format!("no NAR {file}")),
        other => ApiError::BadRequest(other.to_string()),
    })
}

/// `GET /nar/<file>`, with `Range`.
pub async fn get_nar(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    auth::require_read(&state, &headers).await?;
    let name = nar_to_read(&file)?;
    if let Some(redirect) = &state.cache.nar_redirect {
        return redirect_nar(&state, name, redirect).await;
    }
    let key = ObjectKey::Nar(name);
    let wanted = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(range::parse);
    if let Some(r) = wanted {
        let size = state.store.head(&key).await?.ok_or_else(|| ApiError::NotFound(format!("no NAR {file}")))?;
        if !range::satisfiable(r, size) {
            return Err(ApiError::RangeNotSatisfiable(size));
        }
    }
    let body = state.store.get(&key, wanted).await?.ok_or_else(|| ApiError::NotFound(format!("no NAR {file}")))?;
    let counted = state.clone();
    let stream = body
        .stream
        .inspect_ok(move |chunk: &Bytes| Metrics::add(&counted.metrics.nar_bytes_served, chunk.len() as u64));
    let length = body.range.end - body.range.start;
    let mut response = nar_response(Body::from_stream(stream), length);
    if wanted.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let value = format!("bytes {}-{}/{}", body.range.start, body.range.end.saturating_sub(1), body.size);
        response.headers_mut().insert(header::CONTENT_RANGE, HeaderValue::from_str(&value).expect("ascii"));
    }
    Ok(response)
}

/// Sends the client to where the bucket (or a CDN in front of it) serves the NAR, when the
/// NAR object exists (so a missing one is our 404, not the bucket's). The object, not the
/// index: after a collection another replica may still serve a cached narinfo, whose NAR
/// is kept (deferred) until that cache has expired. `Range` is the target's business: the
/// client sends it again there.
async fn redirect_nar(state: &AppState, name: NarFileName, redirect: &NarRedirect) -> Result<Response, ApiError> {
    if state.store.head(&ObjectKey::Nar(name.clone())).await?.is_none() {
        return Err(ApiError::NotFound(format!("no NAR {name}")));
    }
    let (location, cache_control) = match redirect {
        NarRedirect::Presigned(ttl) => {
            let url = state.store.presigned_get(&ObjectKey::Nar(name.clone()), *ttl).await?;
            (url.ok_or_else(|| ApiError::NotFound(format!("no NAR {name}")))?, "private, no-store")
        }
        NarRedirect::BaseUrl(base) => (format!("{base}/nar/{name}"), IMMUTABLE),
    };
    Metrics::add(&state.metrics.nar_redirects, 1);
    let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
    let location = HeaderValue::from_str(&location).map_err(|e| ApiError::Internal(e.to_string()))?;
    response.headers_mut().insert(header::LOCATION, location);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    Ok(response)
}

/// A NAR answer's headers: type, length, ranges, and caching (NAR files never change).
fn nar_response(body: Body, length: u64) -> Response {
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-nix-nar"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, length.into());
    response
}

/// `HEAD /nar/<file>`: existence and size without opening the object. Nix's uploader asks
/// this to skip NARs the cache has, so the answer comes from the index as well as storage: a
/// NAR object whose record a crash lost is "absent", and the client sends it again (which
/// records it) instead of skipping it and having every narinfo refused.
pub async fn head_nar(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    auth::require_read(&state, &headers).await?;
    let name = nar_to_read(&file)?;
    if state.db.nar_file(name.as_str()).await?.is_none() {
        return Err(ApiError::NotFound(format!("no NAR {file}")));
    }
    let key = ObjectKey::Nar(name);
    let size = state.store.head(&key).await?.ok_or_else(|| ApiError::NotFound(format!("no NAR {file}")))?;
    Ok(nar_response(Body::empty(), size))
}

/// `PUT /nar/<file>`: a NAR from `nix copy`, verified while it streams in.
pub async fn put_nar(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    auth::require(&state, &headers, Scope::Push).await?;
    let name = NarFileName::parse(&file).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let stream = body.into_data_stream();
    let row = ingest::receive_nar(
        state.cache(),
        stream,
        name.compression(),
        ingest::Expected { name: Some(&name), nar: None },
    )
    .await
    .inspect_err(|e| state.metrics.reject(e.rejection()))?;
    Metrics::add(&state.metrics.nars_received, 1);
    Metrics::add(&state.metrics.nar_bytes_received, row.file_size as u64);
    Ok(StatusCode::OK.into_response())
}
