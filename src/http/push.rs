//! berth's own push API, used by `berth push` and faster than Nix's PUT protocol: one
//! request says which paths are missing, then each missing path is one streamed request
//! carrying its claim and its compressed NAR.
//!
//! `POST /api/v1/paths` body: a 4-byte big-endian length `L`, `L` bytes of JSON
//! [`PathClaim`], then the zstd-compressed NAR until the end of the body.

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use bytes::{Buf, Bytes, BytesMut};
use futures::{stream, Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::{auth, error::ApiError, json};
use crate::{
    app::AppState,
    auth::Scope,
    ingest::{self, Published},
    metrics::{Metrics, Rejection},
    nixfmt::{Compression, PathClaim, StorePath, StorePathHash},
};

/// Largest claim accepted (a path with very many references still fits).
const MAX_CLAIM: usize = 1 << 20;

/// `POST /api/v1/paths/missing` request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissingRequest {
    /// Absolute store paths.
    pub paths: Vec<String>,
}

/// `POST /api/v1/paths/missing` answer.
#[derive(Debug, Serialize)]
pub struct MissingResponse {
    /// The requested paths that are not in the cache.
    pub missing: Vec<String>,
}

/// `POST /api/v1/paths/missing`: which of these paths does the cache lack?
pub async fn missing(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<MissingResponse>, ApiError> {
    auth::require(&state, &headers, Scope::Push).await?;
    let request: MissingRequest = json::read(&headers, body).await?;
    let mut hashes = Vec::with_capacity(request.paths.len());
    for path in &request.paths {
        let parsed: StorePath = path.parse().map_err(|e| ApiError::BadRequest(format!("{path:?}: {e}")))?;
        hashes.push(StorePathHash::of(&parsed).to_string());
    }
    let present = ingest::present(&state.db, &state.published, &hashes).await?;
    let missing = request.paths.into_iter().zip(hashes).filter(|(_, h)| !present.contains(h)).map(|(p, _)| p).collect();
    Ok(Json(MissingResponse { missing }))
}

/// `POST /api/v1/paths` answer.
#[derive(Debug, Serialize)]
struct UploadResponse {
    status: &'static str,
}

/// `POST /api/v1/paths`: one path, its claim and its NAR in one streamed body.
pub async fn upload(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    auth::require(&state, &headers, Scope::Push).await?;
    let (claim, rest) = read_claim(body.into_data_stream()).await.inspect_err(|e| {
        state.metrics.reject(if matches!(e, ApiError::TooLarge(_)) {
            Rejection::TooLarge
        } else {
            Rejection::Malformed
        })
    })?;
    let (status, word) = match ingest_upload(&state, &claim, rest).await? {
        Published::New => {
            Metrics::add(&state.metrics.paths_published, 1);
            tracing::info!(path = %claim.path, "published");
            (StatusCode::CREATED, "new")
        }
        Published::AlreadyPresent => (StatusCode::OK, "present"),
    };
    Ok((status, Json(UploadResponse { status: word })).into_response())
}

async fn ingest_upload<S>(state: &AppState, claim: &PathClaim, nar: S) -> Result<Published, ApiError>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    // Refuse before reading a byte of the NAR when a reference is missing.
    let malformed = |message: String| {
        state.metrics.reject(Rejection::Malformed);
        ApiError::BadRequest(message)
    };
    let own: StorePath = claim.path.parse().map_err(|e| malformed(format!("path: {e}")))?;
    let mut wanted = Vec::new();
    for reference in &claim.references {
        let r: StorePath = reference.parse().map_err(|e| malformed(format!("reference {reference:?}: {e}")))?;
        if r != own {
            wanted.push(StorePathHash::of(&r).to_string());
        }
    }
    let refused = |e: ingest::IngestError| {
        state.metrics.reject(e.rejection());
        ApiError::from(e)
    };
    let present = ingest::present(&state.db, &state.published, &wanted).await.map_err(refused)?;
    let absent: Vec<String> = wanted.into_iter().filter(|h| !present.contains(h)).collect();
    if !absent.is_empty() {
        return Err(refused(ingest::IngestError::MissingReferences(absent)));
    }
    ingest::ingest_claimed(state.cache(), claim, nar, Compression::Zstd).await.map_err(refused)
}

/// Splits the framed body into the claim and the stream of NAR bytes that follow it.
async fn read_claim<S>(
    mut body: S,
) -> Result<(PathClaim, impl Stream<Item = Result<Bytes, axum::Error>> + Unpin), ApiError>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    let mut head = BytesMut::new();
    let mut need = 4;
    while head.len() < need {
        let chunk = body
            .next()
            .await
            .ok_or_else(|| ApiError::BadRequest("body ended inside the path claim".into()))?
            .map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
        head.extend_from_slice(&chunk);
        if need == 4 && head.len() >= 4 {
            let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
            if len > MAX_CLAIM {
                return Err(ApiError::TooLarge(format!("path claim of {len} bytes exceeds {MAX_CLAIM}")));
            }
            need = 4 + len;
        }
    }
    let mut head = head.freeze();
    head.advance(4);
    let json = head.split_to(need - 4);
    let claim: PathClaim =
        serde_json::from_slice(&json).map_err(|e| ApiError::BadRequest(format!("path claim: {e}")))?;
    let rest = stream::once(async move { Ok(head) }).chain(body);
    Ok((claim, Box::pin(rest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claim and the rest of `body` delivered in chunks of `size` bytes.
    fn split(body: &[u8], size: usize) -> Option<(PathClaim, Vec<u8>)> {
        let chunks: Vec<Result<Bytes, axum::Error>> =
            body.chunks(size.max(1)).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        futures::executor::block_on(async {
            let (claim, rest) = read_claim(stream::iter(chunks)).await.ok()?;
            let rest: Vec<Bytes> = rest.map(|c| c.unwrap()).collect().await;
            Some((claim, rest.concat()))
        })
    }

    /// Fuzz target `push_frame`: any body of `POST /api/v1/paths`; however the body is
    /// chunked, the same claim and the same NAR bytes come out, exactly the bytes after
    /// the frame, and the claim's checks never panic.
    #[test]
    fn fuzz_push_frame() {
        crate::fuzz::run("push_frame", |body| {
            let whole = split(body, body.len());
            for size in [1, 3, 4096] {
                let chunked = split(body, size);
                assert_eq!(
                    chunked.as_ref().map(|(c, r)| (format!("{c:?}"), r)),
                    whole.as_ref().map(|(c, r)| (format!("{c:?}"), r)),
                    "chunks of {size}"
                );
            }
            let Some((claim, rest)) = whole else { return };
            let len = u32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
            assert_eq!(rest, body[4 + len..], "the NAR is exactly what follows the frame");
            if let Ok(digest) = claim.checked_nar() {
                assert_eq!(digest.size, claim.nar_size);
            }
        });
    }
}
