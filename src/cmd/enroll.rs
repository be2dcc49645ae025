//! `berth hosts add NAME`, `berth hosts remove NAME` and `berth hosts keys`: the admin's side
//! of enrollment, over the API (or, for `add`, on the data directory like `berth token`).

use super::timestamp;
use crate::{
    client::{Api, ClientError},
    db::HostRemoval,
    enroll::{
        issue::AddHost,
        render::{self, Enrollment, KeyFormat, RecordedKey},
    },
};

/// `berth hosts add NAME` over the API: the code and the host's configuration lines.
pub async fn add(api: &Api, server: &str, request: &AddHost) -> Result<String, ClientError> {
    let made: Enrollment = api.post("/api/v1/hosts", request).await?;
    Ok(render(&made, server))
}

/// What `berth hosts add` prints for a made code.
pub fn render(made: &Enrollment, server: &str) -> String {
    render::enrollment(made, server, &timestamp(made.expires_at))
}

/// `berth hosts remove NAME [--purge]`: one line saying what was revoked.
pub async fn remove(api: &Api, name: &str, purge: bool) -> Result<String, ClientError> {
    let removed: HostRemoval = api.delete_json(&format!("/api/v1/hosts/{name}?purge={purge}")).await?;
    let kept = if removed.purged { "history deleted" } else { "history kept (--purge deletes it)" };
    Ok(format!(
        "{name}: removed; {} token(s) revoked, {} pending code(s) dropped, {kept}\n",
        removed.tokens_revoked, removed.codes_deleted
    ))
}

/// `berth hosts keys [--format F]`.
pub async fn keys(api: &Api, format: KeyFormat) -> Result<String, ClientError> {
    let keys: Vec<RecordedKey> = api.get("/api/v1/hosts/keys").await?;
    Ok(render::keys(&keys, format))
}
