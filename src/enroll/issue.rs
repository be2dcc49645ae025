//! The two enrollment steps over the database, shared by the HTTP handlers and the CLI's
//! local mode (`berth hosts add --data-dir`): validate into typed values, make the secrets,
//! call one `Db` transaction. No HTTP here.

use serde::{Deserialize, Serialize};

use super::{code, new_code, render::Enrollment, HostKey, HostKeyError, MalformedCode, Refusal};
use crate::{
    auth::{new_token, valid_host_name},
    db::{now, Db, DbError, Enrolled},
};

/// `POST /api/v1/hosts` body: a host to add (or re-enroll).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddHost {
    /// Host name, as in the fleet flake's `nixosConfigurations`.
    pub name: String,
    /// Free labels (`web`, `eu`), stored comma-separated.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The repository that defines the host (default: set by its first build).
    pub repository: Option<String>,
    /// Seconds the code lives (default one hour, at most seven days).
    pub expires_secs: Option<i64>,
}

/// `POST /api/v1/enroll` body (no token: the code is the credential).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The host enrolling (optional: the code names its host; when given, they must agree).
    #[serde(default)]
    pub host: Option<String>,
    /// The code `berth hosts add` printed.
    pub code: String,
    /// The host's `ssh-ed25519` public key line.
    pub ssh_host_key: String,
}

/// `POST /api/v1/enroll` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Granted {
    /// Host name.
    pub host: String,
    /// The host's new `host:<name>` token, shown this once.
    pub token: String,
}

/// Why a host cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// Not a NixOS host name.
    #[error("invalid host name: letters, digits, '-' and '_', at most 63, not starting with '-'")]
    Name,
    /// A tag with a comma, space or control character, or too long.
    #[error("invalid tag {0:?}: letters, digits, '-', '_', '.' and ':', at most 63")]
    Tag(String),
    /// An empty repository name.
    #[error("invalid repository name")]
    Repository,
    /// Expiry out of range.
    #[error("expires_secs must be between 60 and {}", super::MAX_EXPIRY_SECS)]
    Expiry,
    /// No randomness.
    #[error("no randomness available: {0}")]
    Random(#[from] getrandom::Error),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Why a code cannot be traded.
#[derive(Debug, thiserror::Error)]
pub enum TradeError {
    /// Not a NixOS host name.
    #[error("invalid host name")]
    Name,
    /// Not a code at all.
    #[error(transparent)]
    Malformed(#[from] MalformedCode),
    /// Bad key material.
    #[error(transparent)]
    Key(#[from] HostKeyError),
    /// A well-formed code the server refuses.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// No randomness.
    #[error("no randomness available: {0}")]
    Random(#[from] getrandom::Error),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty() && tag.len() <= 63 && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Adds `request.name` (or updates it) with a fresh code; earlier unused codes stop working.
pub async fn add_host(db: &Db, deploy_public_key: String, request: &AddHost) -> Result<Enrollment, AddError> {
    if !valid_host_name(&request.name) {
        return Err(AddError::Name);
    }
    if let Some(bad) = request.tags.iter().find(|t| !valid_tag(t)) {
        return Err(AddError::Tag(bad.chars().take(63).collect()));
    }
    if request.repository.as_deref().is_some_and(|r| r.is_empty() || r.len() > 200) {
        return Err(AddError::Repository);
    }
    let secs = request.expires_secs.unwrap_or(super::DEFAULT_EXPIRY_SECS);
    if !(60..=super::MAX_EXPIRY_SECS).contains(&secs) {
        return Err(AddError::Expiry);
    }
    let code = new_code()?;
    let expires_at = now() + secs;
    let tags = (!request.tags.is_empty()).then(|| request.tags.join(","));
    db.add_enrollment(&request.name, request.repository.as_deref(), tags.as_deref(), &code, expires_at).await?;
    tracing::info!(host = %request.name, code_id = %code.id, expires_at, "enrollment code made");
    Ok(Enrollment { host: request.name.clone(), code: code.secret, expires_at, deploy_public_key })
}

/// Trades a code for the host's token and records its key. Every attempt is logged with the
/// code's public id (never the code).
pub async fn enroll(db: &Db, request: &EnrollRequest) -> Result<Granted, TradeError> {
    if request.host.as_deref().is_some_and(|h| !valid_host_name(h)) {
        return Err(TradeError::Name);
    }
    let presented = code::parse(&request.code)?;
    let key = HostKey::parse(&request.ssh_host_key)?;
    let token = new_token()?;
    match db.enroll(&presented, request.host.as_deref(), &key, &token, now()).await? {
        Enrolled::Enrolled { host, revoked } => {
            tracing::info!(%host, code_id = %presented.id, revoked, "host enrolled");
            Ok(Granted { host, token: token.secret })
        }
        Enrolled::Refused(refusal) => {
            let host = request.host.as_deref().unwrap_or("-");
            tracing::warn!(%host, code_id = %presented.id, %refusal, "enrollment refused");
            Err(refusal.into())
        }
    }
}
