//! `UiError`: every refusal of the dashboard, as a page for a person with the status an API
//! client would get. A page that needs a login redirects there (GET); any other request
//! without one is 401. Internal failures are logged once and shown as "internal error".

use axum::{
    http::{header, StatusCode},
    response::{IntoResponse, Redirect, Response},
};

use super::{csrf::CsrfError, render};
use crate::{
    db::DbError,
    deploy::{resend::ResendError, rollback::RollbackError},
    gc::{pins::PinError, GcError},
    store::StoreError,
};

/// A dashboard request that cannot be answered with its page.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// A page asked for without a session: go to the login form, then back to `next`.
    #[error("log in to see this page")]
    LoginRequired {
        /// Where to come back to (a path under `/ui/`).
        next: String,
    },
    /// Any other request without a valid session.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid session whose token may not do this (a read token acting).
    #[error("{0}")]
    Forbidden(String),
    /// A form without this session's CSRF token, or from another site.
    #[error(transparent)]
    Csrf(#[from] CsrfError),
    /// Malformed input (a host name, a number).
    #[error("{0}")]
    BadRequest(String),
    /// Nothing here.
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with work in progress.
    #[error("{0}")]
    Conflict(String),
    /// Our fault; the detail is logged, not shown.
    #[error("internal error")]
    Internal(String),
}

impl UiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::LoginRequired { .. } => StatusCode::SEE_OTHER,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::Csrf(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::LoginRequired { next } => {
                let to = format!(
                    "/ui/login?next={}",
                    url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
                );
                return Redirect::to(&to).into_response();
            }
            Self::Internal(detail) => tracing::error!(%detail, "internal error"),
            Self::Unauthorized(reason) | Self::Forbidden(reason) => {
                tracing::warn!(%status, reason, "dashboard refused")
            }
            Self::Csrf(e) => tracing::warn!(%status, reason = %e, "dashboard refused"),
            other => tracing::debug!(%status, reason = %other, "dashboard refused"),
        }
        let message = self.to_string();
        match render::page("error.html", minijinja::context! { status => status.as_u16(), message }) {
            Ok(mut page) => {
                *page.status_mut() = status;
                page
            }
            // The error page is embedded and tested; should it fail, say so in plain text.
            Err(_) => (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], "error").into_response(),
        }
    }
}

impl From<DbError> for UiError {
    fn from(e: DbError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<StoreError> for UiError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<minijinja::Error> for UiError {
    fn from(e: minijinja::Error) -> Self {
        Self::Internal(format!("template: {e:#}"))
    }
}

impl From<RollbackError> for UiError {
    fn from(e: RollbackError) -> Self {
        match e {
            RollbackError::NoGenerations | RollbackError::NoSuchGeneration(_) => Self::NotFound(e.to_string()),
            RollbackError::NothingEarlier { .. } => Self::BadRequest(e.to_string()),
        }
    }
}

impl From<ResendError> for UiError {
    fn from(e: ResendError) -> Self {
        match e {
            ResendError::NoHost(_) => Self::NotFound(e.to_string()),
            ResendError::Target(e) => e.into(),
            ResendError::Collected(_) => Self::BadRequest(e.to_string()),
            ResendError::Unparsable(_) | ResendError::Vanished(_) => Self::Internal(e.to_string()),
            ResendError::Db(e) => e.into(),
        }
    }
}

impl From<crate::deploy::rollouts::RolloutError> for UiError {
    fn from(e: crate::deploy::rollouts::RolloutError) -> Self {
        use crate::deploy::rollouts::RolloutError;
        match e {
            RolloutError::NotFound(_) => Self::NotFound(e.to_string()),
            RolloutError::WrongState { .. } => Self::Conflict(e.to_string()),
            RolloutError::Db(e) => e.into(),
        }
    }
}

impl From<PinError> for UiError {
    fn from(e: PinError) -> Self {
        match e {
            PinError::BadName | PinError::BadPath(_) | PinError::NotInCache(_) => Self::BadRequest(e.to_string()),
            PinError::Db(e) => e.into(),
        }
    }
}

impl From<GcError> for UiError {
    fn from(e: GcError) -> Self {
        match e {
            GcError::Busy => Self::Conflict(e.to_string()),
            GcError::Db(e) => e.into(),
            GcError::Store(e) => e.into(),
        }
    }
}
