//! `berth gc`, `berth pin`, `berth unpin`.

use serde::Deserialize;

use crate::client::{Api, ClientError};

/// A collection's report as the API gives it.
#[derive(Debug, Deserialize)]
pub struct Report {
    /// Nothing changed.
    pub dry_run: bool,
    /// The plan as text.
    pub summary: String,
    /// How long it took.
    pub duration_ms: u64,
    /// NAR deletions left for the next collection (replicas' cached narinfos not expired).
    #[serde(default)]
    pub deferred_deletions: u64,
}

/// `berth gc [--keep N] [--dry-run]`: the plan, and what was done.
pub async fn collect(api: &Api, keep: Option<usize>, dry_run: bool) -> Result<String, ClientError> {
    let report: Report = api.post("/api/v1/gc", &serde_json::json!({ "keep": keep, "dry_run": dry_run })).await?;
    let what = if report.dry_run { "dry run, nothing deleted" } else { "done" };
    let mut text = format!("{}{what} in {} ms\n", report.summary, report.duration_ms);
    if report.deferred_deletions > 0 {
        text += &format!(
            "{} NAR deletion(s) deferred until other replicas' cached narinfos expire; the next collection finishes them\n",
            report.deferred_deletions
        );
    }
    Ok(text)
}

/// `berth pin NAME PATH`.
pub async fn pin(api: &Api, name: &str, path: &str) -> Result<(), ClientError> {
    api.put(&format!("/api/v1/pins/{name}"), &serde_json::json!({ "store_path": path })).await
}

/// `berth unpin NAME`.
pub async fn unpin(api: &Api, name: &str) -> Result<(), ClientError> {
    api.delete(&format!("/api/v1/pins/{name}")).await
}
