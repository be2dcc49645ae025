//! `ApiError`: the one mapping from every module's errors to HTTP. Each refusal is a status
//! plus a stable code and a one-line reason; internal failures are logged once and reach the
//! client as "internal error", never with paths or backend details.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

use crate::{db::DbError, ingest::IngestError, store::StoreError};

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
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            Self::Internal(detail) => tracing::error!(%detail, "internal error"),
            Self::Unauthorized(reason) | Self::Forbidden(reason) => {
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

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Store(e) => e.into(),
            IngestError::Db(e) => e.into(),
            IngestError::Verify(_)
            | IngestError::NarInfo(_)
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
