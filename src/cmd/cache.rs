//! `berth cache resign`: starts or resumes the server's re-signing run and follows it.

use std::time::Duration;

use serde::Deserialize;

use crate::client::{Api, ClientError};

/// How often a followed run is asked for its progress.
const POLL: Duration = Duration::from_millis(500);

/// A run as `/api/v1/cache/resign` reports it.
#[derive(Debug, Deserialize)]
pub struct Status {
    /// Key it signs with.
    pub key_name: String,
    /// `keep` or `drop`.
    pub old_signatures: String,
    /// `running` or `done`.
    pub state: String,
    /// Narinfos rewritten so far.
    pub resigned: i64,
    /// Published paths now.
    pub paths: i64,
    /// Whether a server works on it now.
    pub working: bool,
}

/// The API's `old_signatures` for the flags given (`None`: the server decides).
pub fn choice(keep_old: bool, drop_old: bool) -> Option<&'static str> {
    match (keep_old, drop_old) {
        (_, true) => Some("drop"),
        (true, false) => Some("keep"),
        (false, false) => None,
    }
}

fn line(status: &Status) -> String {
    format!(
        "{}: {} narinfo(s) re-signed with {} ({} old signatures) of {} published",
        status.state, status.resigned, status.key_name, status.old_signatures, status.paths
    )
}

/// Starts or resumes the run; with `follow`, prints its progress until it is done.
pub async fn resign(
    api: &Api,
    old: Option<&str>,
    follow: bool,
    out: &mut impl std::io::Write,
) -> Result<(), ClientError> {
    let mut status: Status = api.post("/api/v1/cache/resign", &serde_json::json!({ "old_signatures": old })).await?;
    let mut last = line(&status);
    print(out, &last);
    while follow && status.state != "done" {
        tokio::time::sleep(POLL).await;
        status = api.get("/api/v1/cache/resign").await?;
        let now = line(&status);
        if now != last {
            print(out, &now);
            last = now;
        }
        if status.state != "done" && !status.working {
            return Err(ClientError::Nothing(
                "the run stopped before its end (see the server's log); run `berth cache resign` again to resume it"
                    .into(),
            ));
        }
    }
    Ok(())
}

fn print(out: &mut impl std::io::Write, text: &str) {
    if let Err(e) = writeln!(out, "{text}") {
        tracing::warn!(error = %e, "writing progress");
    }
}
