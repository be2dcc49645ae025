//! `berth hosts` and `berth hosts history NAME`.

use super::timestamp;
use crate::{
    client::{Api, ClientError},
    db::{GenerationRow as Generation, HostRow as Host},
    deploy::status::{HostState, Outcome},
};

/// The table `berth hosts` prints: desired and current generation, the state of the desired
/// one (or `offline`), last contact, and the error of that generation only.
pub fn render_hosts(hosts: &[Host]) -> String {
    let mut out = format!(
        "{:<20} {:>7} {:>7}  {:<12} {:<19}  {:<12} LAST ERROR\n",
        "HOST", "DESIRED", "CURRENT", "STATE", "LAST SEEN", "COMMIT"
    );
    for h in hosts {
        let dash = || "-".to_owned();
        let desired = h.latest.as_ref().map_or_else(dash, |g| g.number.to_string());
        let current = h.status.active_generation.map_or_else(dash, |n| n.to_string());
        let commit: String = h.latest.as_ref().map_or_else(dash, |g| g.commit_sha.chars().take(12).collect());
        let seen = h.status.last_seen.map_or_else(dash, timestamp);
        // A server before per-generation states sends only the last phase and error.
        let (state, error) = match &h.state {
            Some(state) => (state.label().to_owned(), reason(state).unwrap_or("")),
            None => (
                h.status.phase.clone().unwrap_or_else(|| "never seen".into()),
                h.status.last_error.as_deref().unwrap_or(""),
            ),
        };
        out += &format!("{:<20} {desired:>7} {current:>7}  {state:<12} {seen:<19}  {commit:<12} {error}\n", h.name);
    }
    out
}

fn reason(state: &HostState) -> Option<&str> {
    match state {
        HostState::Generation(outcome) => outcome.reason(),
        _ => None,
    }
}

/// The table `berth hosts history NAME` prints: each generation and what became of it
/// (with the host's reason when it was rolled back or failed).
pub fn render_history(generations: &[Generation]) -> String {
    let mut out = format!(
        "{:>4}  {:<19}  {:<16} {:<12} {:>6}  {:<13}  STORE PATH\n",
        "GEN", "CREATED", "BRANCH", "COMMIT", "BUILD", "OUTCOME"
    );
    for g in generations {
        let commit: String = g.commit_sha.chars().take(12).collect();
        let build = g.build_id.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
        let outcome = g.outcome.as_ref().map_or("-", Outcome::label);
        out += &format!(
            "{:>4}  {}  {:<16} {:<12} {:>6}  {outcome:<13}  {}\n",
            g.number,
            timestamp(g.created_at),
            g.branch,
            commit,
            build,
            g.store_path
        );
        if let Some(reason) = g.outcome.as_ref().and_then(Outcome::reason) {
            out += &format!("      {outcome}: {reason}\n");
        }
    }
    out
}

/// `berth hosts`.
pub async fn list(api: &Api) -> Result<String, ClientError> {
    let hosts: Vec<Host> = api.get("/api/v1/hosts").await?;
    Ok(render_hosts(&hosts))
}

/// `berth rollback NAME [--to N]`: the new generation, as one line.
pub async fn rollback(api: &Api, name: &str, to: Option<i64>) -> Result<String, ClientError> {
    let made: Generation =
        api.post(&format!("/api/v1/hosts/{name}/rollback"), &serde_json::json!({ "to": to })).await?;
    Ok(format!("{name}: generation {} ({}) -> {}\n", made.number, made.branch, made.store_path))
}

/// `berth redeploy NAME [N]`: the new generation, as one line.
pub async fn redeploy(api: &Api, name: &str, generation: Option<i64>) -> Result<String, ClientError> {
    let made: Generation =
        api.post(&format!("/api/v1/hosts/{name}/redeploy"), &serde_json::json!({ "generation": generation })).await?;
    Ok(format!("{name}: generation {} ({}) -> {}\n", made.number, made.branch, made.store_path))
}

/// `berth hosts history NAME`.
pub async fn history(api: &Api, name: &str) -> Result<String, ClientError> {
    let generations: Vec<Generation> = api.get(&format!("/api/v1/hosts/{name}/generations")).await?;
    Ok(render_history(&generations))
}
