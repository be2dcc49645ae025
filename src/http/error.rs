//! `ApiError`: the one mapping from every module's errors to HTTP. Each refusal is a status
//! plus a stable code and a one-line reason; internal failures are logged once and reach the
//! client as "internal error", never with paths or backend details.

use axum::{
    extract::Request,
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Json,
};

use crate::{db::DbError, ingest::IngestError, nixfmt::VerifyError, store::StoreError};

/// A request that cannot be answered with success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input.
    #[error("{0}")]
    BadRequest(String),
    /// No token, or one that is unknown or revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token whose scope does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// Nothing at this address.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with work in progress.
    #[error("{0}")]
    Conflict(String),
    /// A `Range` outside the object.
    #[error("range not satisfiable (object has {0} bytes)")]
    RangeNotSatisfiable(u64),
    /// A request body over its limit.
    #[error("{0}")]
    TooLarge(String),
    /// A credential that existed and is used up or expired for good (an enrollment code).
    #[error("{0}")]
    Gone(String),
    /// A body of a type the endpoint does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A route that exists, asked with a method it does not answer.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The storage is out of space: the client may retry once the operator made room.
    #[error("the cache's storage is full; try again later")]
    StorageFull(String),
    /// Our fault; the detail is logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::RangeNotSatisfiable(_) => (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::Gone(_) => (StatusCode::GONE, "gone"),
            Self::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::StorageFull(_) => (StatusCode::INSUFFICIENT_STORAGE, "storage_full"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            Self::Internal(detail) => tracing::error!(%detail, "internal error"),
            Self::StorageFull(detail) => tracing::error!(%detail, "storage full"),
            Self::Unauthorized(reason) | Self::Forbidden(reason) | Self::Gone(reason) => {
                tracing::warn!(%status, reason, "refused")
            }
            other => tracing::debug!(%status, reason = %other, "refused"),
        }
        let body = serde_json::json!({ "code": code, "message": self.to_string() });
        let mut response = (status, Json(body)).into_response();
        if let Self::Unauthorized(_) = self {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"berth\""));
        }
        if let Self::RangeNotSatisfiable(size) = self {
            let value = HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii");
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        response
    }
}

impl From<crate::deploy::rollback::RollbackError> for ApiError {
    fn from(e: crate::deploy::rollback::RollbackError) -> Self {
        use crate::deploy::rollback::RollbackError;
        match e {
            RollbackError::NoGenerations | RollbackError::NoSuchGeneration(_) => Self::NotFound(e.to_string()),
            RollbackError::NothingEarlier { .. } => Self::BadRequest(e.to_string()),
        }
    }
}

impl From<crate::deploy::keys::KeysError> for ApiError {
    fn from(e: crate::deploy::keys::KeysError) -> Self {
        use crate::deploy::keys::KeysError;
        match e {
            KeysError::Db(e) => e.into(),
            KeysError::Rotate(_) | KeysError::Raced => Self::Conflict(e.to_string()),
            KeysError::NoCurrent | KeysError::NoSecret(_) | KeysError::BadSecret { .. } | KeysError::Generate(_) => {
                Self::Internal(e.to_string())
            }
        }
    }
}

impl From<crate::deploy::resend::ResendError> for ApiError {
    fn from(e: crate::deploy::resend::ResendError) -> Self {
        use crate::deploy::resend::ResendError;
        match e {
            ResendError::NoHost(_) => Self::NotFound(e.to_string()),
            ResendError::Target(e) => e.into(),
            ResendError::Collected(_) => Self::BadRequest(e.to_string()),
            ResendError::Unparsable(_) | ResendError::Vanished(_) => Self::Internal(e.to_string()),
            ResendError::Db(e) => e.into(),
        }
    }
}

impl ApiError {
    /// The error a status stands for, for refusals made outside berth's handlers (axum's
    /// routing and extractors), with their one-line reason.
    fn from_status(status: StatusCode, reason: String) -> Self {
        match status {
            StatusCode::UNAUTHORIZED => Self::Unauthorized(reason),
            StatusCode::FORBIDDEN => Self::Forbidden(reason),
            StatusCode::NOT_FOUND => Self::NotFound(reason),
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed(reason),
            StatusCode::CONFLICT => Self::Conflict(reason),
            StatusCode::PAYLOAD_TOO_LARGE => Self::TooLarge(reason),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType(reason),
            s if s.is_server_error() => Self::Internal(reason),
            _ => Self::BadRequest(reason),
        }
    }
}

/// Middleware: every refusal is `{code, message}` JSON, including those axum makes itself
/// (a path or query that does not parse, a method a route does not answer), which are
/// plain text or empty. berth's own errors are JSON already and pass untouched, as do the
/// dashboard's HTML refusals and every success.
pub async fn json_refusals(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    // The dashboard's refusals are pages, for a person.
    let is_html = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_json || is_html {
        return response;
    }
    let (parts, body) = response.into_parts();
    // axum's rejection texts are one short line; anything longer is cut.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().next().map(str::trim).filter(|l| !l.is_empty());
    let reason = line.map(str::to_owned).unwrap_or_else(|| status.canonical_reason().unwrap_or("refused").to_owned());
    let mut refusal = ApiError::from_status(status, reason).into_response();
    *refusal.status_mut() = status;
    for (name, value) in parts.headers.iter().filter(|(n, _)| *n == header::ALLOW || *n == header::WWW_AUTHENTICATE) {
        refusal.headers_mut().insert(name, value.clone());
    }
    refusal
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_storage_full() {
            Self::StorageFull(e.to_string())
        } else {
            Self::Internal(e.to_string())
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if e.is_storage_full() {
            Self::StorageFull(e.to_string())
        } else {
            Self::Internal(e.to_string())
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Store(e) => e.into(),
            IngestError::Db(e) => e.into(),
            IngestError::Verify(VerifyError::DecoderMemory { .. }) => Self::TooLarge(e.to_string()),
            IngestError::Verify(_)
            | IngestError::NarInfo(_)
            | IngestError::Listing(_)
            | IngestError::NameMismatch { .. }
            | IngestError::NarMissing(_)
            | IngestError::Mismatch { .. }
            | IngestError::MissingReferences(_)
            | IngestError::NotInCache(_)
            | IngestError::Body(_) => Self::BadRequest(e.to_string()),
            IngestError::TooLarge(_) => Self::TooLarge(e.to_string()),
        }
    }
}
