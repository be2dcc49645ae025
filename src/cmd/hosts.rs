//! `berth hosts`, `berth hosts history NAME`, `berth hosts log NAME [N]`, `berth rollback`
//! and `berth redeploy`.

use super::timestamp;
use crate::{
    client::{Api, ClientError},
    db::{GenerationRow as Generation, HostRow as Host, LastBuild, ReportRow},
    deploy::{
        diff::DiffView,
        status::{HostState, Outcome},
    },
};

/// The table `berth hosts` prints: desired and current generation, the state of the desired
/// one (or `offline`), last contact, the host's newest build and what it decided for the host
/// (why main did not deploy, without a build id), and the error of that generation only.
pub fn render_hosts(hosts: &[Host]) -> String {
    let mut out = format!(
        "{:<20} {:>7} {:>7}  {:<12} {:<19}  {:<12} {:<24} LAST ERROR\n",
        "HOST", "DESIRED", "CURRENT", "STATE", "LAST SEEN", "COMMIT", "LAST BUILD"
    );
    for h in hosts {
        let dash = || "-".to_owned();
        let desired = h.latest.as_ref().map_or_else(dash, |g| g.number.to_string());
        let current = h.status.active_generation.map_or_else(dash, |n| n.to_string());
        let commit: String = h.latest.as_ref().map_or_else(dash, |g| g.commit_sha.chars().take(12).collect());
        let seen = h.status.last_seen.map_or_else(dash, timestamp);
        // A server before per-generation states sends only the last phase and error.
        let (state, error) = match &h.state {
            // Which rollout holds it (`berth rollout status N` says why).
            Some(HostState::Held { rollout }) => ("held".to_owned(), format!("rollout {rollout}")),
            Some(HostState::OutsideWindow { windows }) => ("outside_window".to_owned(), windows.join(", ")),
            Some(state) => (state.label().to_owned(), reason(state).unwrap_or("").to_owned()),
            None => (
                h.status.phase.clone().unwrap_or_else(|| "never seen".into()),
                h.status.last_error.clone().unwrap_or_default(),
            ),
        };
        let build = h.last_build.as_ref().map_or_else(dash, last_build);
        let name = match h.delivery.as_deref() {
            Some("push") => format!("{} (push)", h.name),
            _ => h.name.clone(),
        };
        out += &format!(
            "{name:<20} {desired:>7} {current:>7}  {state:<12} {seen:<19}  {commit:<12} {build:<24} {error}\n"
        );
    }
    out
}

/// `#12 deployed 5`, `#13 unsigned`, `#14 building`: a build, and its verdict for the host
/// or, while it runs, where the host is in it.
pub fn last_build(b: &LastBuild) -> String {
    match (&b.verdict, b.generation) {
        (Some(verdict), Some(generation)) => format!("#{} {verdict} {generation}", b.id),
        (Some(verdict), None) => format!("#{} {verdict}", b.id),
        (None, _) if matches!(b.state.as_str(), "cancelled" | "failed") => format!("#{} {}", b.id, b.state),
        (None, _) => format!("#{} {}", b.id, b.host_state),
    }
}

fn reason(state: &HostState) -> Option<&str> {
    match state {
        HostState::Generation(outcome) => outcome.reason(),
        _ => None,
    }
}

/// The table `berth hosts history NAME` prints: each generation, what became of it (with
/// the host's reason when it was rolled back or failed) and the host's own profile
/// generation it became (`PROFILE` 5: the host's `system-5-link`).
pub fn render_history(generations: &[Generation]) -> String {
    let mut out = format!(
        "{:>4}  {:<19}  {:<16} {:<12} {:>6}  {:<13} {:>7}  STORE PATH\n",
        "GEN", "CREATED", "BRANCH", "COMMIT", "BUILD", "OUTCOME", "PROFILE"
    );
    for g in generations {
        let commit: String = g.commit_sha.chars().take(12).collect();
        let build = g.build_id.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
        let outcome = g.outcome.as_ref().map_or("-", Outcome::label);
        let profile = g.profile_generation.map_or_else(|| "-".into(), |n| n.to_string());
        out += &format!(
            "{:>4}  {}  {:<16} {:<12} {:>6}  {outcome:<13} {profile:>7}  {}\n",
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

/// What `berth hosts log NAME [N]` prints: the reports about generation `generation`
/// (default: the newest one reported on), oldest first, each phase with its message and the
/// tail of what the commands printed. `reports` newest first, as the API gives them.
pub fn render_log(reports: &[ReportRow], generation: Option<i64>) -> Result<String, NoReports> {
    let generation = generation.or_else(|| reports.first().map(|r| r.generation)).ok_or(NoReports::AtAll)?;
    let mut out = String::new();
    for r in reports.iter().rev().filter(|r| r.generation == generation) {
        let took = r.duration_ms.map(|ms| format!(" ({:.1} s)", ms as f64 / 1000.0)).unwrap_or_default();
        out += &format!("{}  generation {}  {}{took}", timestamp(r.created_at), r.generation, r.phase);
        if let Some(message) = r.message.as_deref().filter(|m| !m.is_empty()) {
            out += &format!(": {message}");
        }
        out.push('\n');
        for line in r.log_tail.as_deref().unwrap_or("").lines() {
            out += &format!("    {line}\n");
        }
    }
    if out.is_empty() {
        return Err(NoReports::About(generation));
    }
    Ok(out)
}

/// Why `berth hosts log` has nothing to print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoReports {
    /// The host never reported.
    #[error("the host has reported nothing yet")]
    AtAll,
    /// Nothing about that generation among the newest reports.
    #[error("no reports about generation {0} among the host's newest 100")]
    About(i64),
}

/// `berth hosts log NAME [N]`.
pub async fn log(api: &Api, name: &str, generation: Option<i64>) -> Result<String, ClientError> {
    let reports: Vec<ReportRow> = api.get(&format!("/api/v1/hosts/{name}/reports")).await?;
    render_log(&reports, generation).map_err(|e| ClientError::Nothing(e.to_string()))
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

/// What `berth diff HOST [FROM] [TO]` prints: the two generations, the summary line, and
/// each package added, removed and changed.
pub fn render_diff(view: &DiffView) -> String {
    let from = view.from.as_ref().map_or_else(|| "nothing".to_owned(), |f| format!("{} ({})", f.number, f.store_path));
    let stored = if view.stored { " [stored when it was made]" } else { "" };
    let mut out = format!(
        "{}: generation {from} -> {} ({}){stored}\n{}\n",
        view.host, view.to.number, view.to.store_path, view.diff
    );
    for added in &view.diff.added {
        out += &format!("  + {added}\n");
    }
    for removed in &view.diff.removed {
        out += &format!("  - {removed}\n");
    }
    for c in &view.diff.changed {
        out += &format!("  ~ {} {} -> {}\n", c.name, c.from.join(", "), c.to.join(", "));
    }
    out
}

/// `berth diff HOST [FROM] [TO]`.
pub async fn diff(api: &Api, name: &str, from: Option<i64>, to: Option<i64>) -> Result<String, ClientError> {
    let mut query = ::url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in [("from", from), ("to", to)] {
        if let Some(value) = value {
            query.append_pair(key, &value.to_string());
        }
    }
    let view: DiffView = api.get(&format!("/api/v1/hosts/{name}/diff?{}", query.finish())).await?;
    Ok(render_diff(&view))
}

/// `berth hosts pause NAME` (`paused`) and `berth hosts resume NAME`, as one line.
pub async fn pause(api: &Api, name: &str, paused: bool) -> Result<String, ClientError> {
    let action = if paused { "pause" } else { "resume" };
    let view: serde_json::Value = api.post(&format!("/api/v1/hosts/{name}/{action}"), &serde_json::json!({})).await?;
    let held = view["paused"].as_bool().unwrap_or(paused);
    Ok(match held {
        true => format!("{name}: paused; newer generations wait for `berth hosts resume {name}`\n"),
        false => format!("{name}: resumed\n"),
    })
}

/// `berth hosts history NAME`.
pub async fn history(api: &Api, name: &str) -> Result<String, ClientError> {
    let generations: Vec<Generation> = api.get(&format!("/api/v1/hosts/{name}/generations")).await?;
    Ok(render_history(&generations))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_build_says_what_the_build_decided_or_where_it_is() {
        let b = |state: &str, host_state: &str, verdict: Option<&str>, generation: Option<i64>| LastBuild {
            id: 12,
            commit_sha: "c".into(),
            branch: "main".into(),
            state: state.into(),
            host_state: host_state.into(),
            verdict: verdict.map(Into::into),
            generation,
        };
        for (build, shown) in [
            (b("succeeded", "succeeded", Some("deployed"), Some(5)), "#12 deployed 5"),
            (b("succeeded", "succeeded", Some("unsigned"), None), "#12 unsigned"),
            (b("failed", "succeeded", Some("held-back"), None), "#12 held-back"),
            (b("running", "building", None, None), "#12 building"),
            (b("failed", "succeeded", None, None), "#12 failed"),
            (b("cancelled", "building", None, None), "#12 cancelled"),
        ] {
            assert_eq!(last_build(&build), shown);
        }
    }
}
