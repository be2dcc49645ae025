//! `berth build submit|status|log|cancel|list`.

use std::{io::Write, time::Duration};

use futures::StreamExt;
use serde::Deserialize;

use crate::{
    client::{Api, ClientError},
    db::{BuildCommitRow, BuildHostRow, ForgeStatusRow},
};

/// What the API says about a build (the fields the commands show).
#[derive(Debug, Deserialize)]
pub struct Build {
    /// When it was requested (absent from old servers' answers).
    #[serde(default)]
    pub created_at: i64,
    /// Id.
    pub id: i64,
    /// Repository.
    pub repository: String,
    /// Commit.
    pub commit: String,
    /// Branch.
    pub branch: String,
    /// State.
    pub state: String,
    /// Why it ended as it did.
    pub reason: Option<String>,
    /// The commit's own signature.
    pub signature: Option<String>,
    /// Where the signed-history check started (absent from servers before it).
    #[serde(default)]
    pub history_base: Option<String>,
    /// The commits checked, oldest first.
    #[serde(default)]
    pub commits: Vec<BuildCommitRow>,
    /// Per host.
    pub hosts: Vec<BuildHostRow>,
    /// What was posted to the forge (absent from servers before it).
    #[serde(default)]
    pub forge_statuses: Vec<ForgeStatusRow>,
}

impl Build {
    /// Whether the build has ended.
    pub fn is_final(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "failed" | "cancelled")
    }
}

/// The table `berth build list` prints: one build a line, newest first, with why it ended
/// as it did.
pub fn render_list(builds: &[Build]) -> String {
    let mut out = format!(
        "{:>6}  {:<10} {:<16} {:<20} {:<12}  {:<19}  REASON\n",
        "ID", "STATE", "REPO", "BRANCH", "COMMIT", "CREATED"
    );
    for b in builds {
        let commit: String = b.commit.chars().take(12).collect();
        let reason = b.reason.as_deref().and_then(|r| r.lines().next()).unwrap_or("");
        out += &format!(
            "{:>6}  {:<10} {:<16} {:<20} {commit:<12}  {}  {reason}\n",
            b.id,
            b.state,
            b.repository,
            b.branch,
            super::timestamp(b.created_at)
        );
    }
    out
}

/// `berth build list [--repo R] [--branch B] [--state S]`.
pub async fn list(
    api: &Api,
    repo: Option<&str>,
    branch: Option<&str>,
    state: Option<&str>,
) -> Result<String, ClientError> {
    let mut query = ::url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in [("repo", repo), ("branch", branch), ("state", state)] {
        if let Some(value) = value {
            query.append_pair(key, value);
        }
    }
    let query = query.finish();
    let path = if query.is_empty() { "/api/v1/builds".to_owned() } else { format!("/api/v1/builds?{query}") };
    let builds: Vec<Build> = api.get(&path).await?;
    Ok(render_list(&builds))
}

/// The status report of a build, as `berth build status` prints it.
pub fn render(b: &Build) -> String {
    let mut out = format!("build {} {}: {} {} ({})\n", b.id, b.state, b.repository, b.branch, b.commit);
    if let Some(signature) = &b.signature {
        out += &format!("  commit: {signature}\n");
    }
    match &b.history_base {
        Some(base) => out += &format!("  checked {} commit(s) since {base}:\n", b.commits.len()),
        None if !b.commits.is_empty() => out += "  checked the commit alone (signed_commits = \"tip\"):\n",
        None => {}
    }
    for c in &b.commits {
        let verdict = match (c.verdict.as_str(), &c.signer, &c.reason) {
            ("trusted", Some(signer), _) => format!("signed by {signer}"),
            ("untrusted", _, Some(reason)) => format!("untrusted: {reason}"),
            (verdict, _, _) => verdict.to_owned(),
        };
        out += &format!("    {} {verdict}\n", c.commit);
    }
    for h in &b.hosts {
        // Why a host that built got no generation (`failed` says itself).
        let generation = match (h.generation, h.verdict.as_deref()) {
            (Some(g), _) => format!(" -> generation {g}"),
            (None, Some(verdict)) if verdict != "failed" => format!(" ({verdict})"),
            (None, _) => String::new(),
        };
        out += &format!("  {:<20} {:<10} {}{generation}\n", h.host, h.state, h.store_path.as_deref().unwrap_or("-"));
        if let Some(error) = &h.error {
            for line in error.lines() {
                out += &format!("      {line}\n");
            }
        }
    }
    if let Some(reason) = &b.reason {
        out += &format!("  {reason}\n");
    }
    for f in &b.forge_statuses {
        let delivery = match (f.delivery.as_str(), &f.error) {
            ("delivered", _) => String::new(),
            (delivery, Some(error)) => format!(" [{delivery} after {} attempt(s): {error}]", f.attempts),
            (delivery, None) => format!(" [{delivery}]"),
        };
        out += &format!("  forge {} {}: {}{delivery}\n", f.context, f.state, f.description);
    }
    out
}

/// A build request.
#[derive(Debug, serde::Serialize)]
pub struct Submit {
    /// Repository name.
    pub repository: String,
    /// Full commit hash.
    pub commit: String,
    /// Branch.
    pub branch: String,
    /// Only these hosts.
    pub hosts: Vec<String>,
}

/// Submits a build; with `wait`, streams its log and returns whether it succeeded.
pub async fn submit(api: &Api, request: &Submit, wait: bool) -> Result<bool, ClientError> {
    let build: Build = api.post("/api/v1/builds", request).await?;
    eprintln!("build {} {} ({} {} {})", build.id, build.state, build.repository, build.branch, build.commit);
    if !wait {
        println!("{}", build.id);
        return Ok(true);
    }
    follow(api, build.id).await
}

/// Streams the log of build `id` to stdout until it ends, then prints its status to stderr.
/// Returns whether it succeeded.
pub async fn follow(api: &Api, id: i64) -> Result<bool, ClientError> {
    let path = format!("/api/v1/builds/{id}");
    let mut build: Build = api.get(&path).await?;
    while build.state == "queued" {
        tokio::time::sleep(Duration::from_millis(500)).await;
        build = api.get(&path).await?;
    }
    print_log(api, id).await?;
    while !build.is_final() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        build = api.get(&path).await?;
    }
    eprint!("{}", render(&build));
    Ok(build.state == "succeeded")
}

/// Copies the log of build `id` to stdout (following it while the build runs).
pub async fn print_log(api: &Api, id: i64) -> Result<(), ClientError> {
    let mut log = std::pin::pin!(api.stream(&format!("/api/v1/builds/{id}/log")).await?);
    let mut stdout = std::io::stdout();
    while let Some(chunk) = log.next().await {
        let _ = stdout.write_all(&chunk?);
        let _ = stdout.flush();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_report() {
        let build = Build {
            created_at: 0,
            id: 3,
            repository: "fleet".into(),
            commit: "abc".into(),
            branch: "main".into(),
            state: "failed".into(),
            reason: Some("1 of 2 hosts failed: b".into()),
            signature: Some("signed by alice@example.org".into()),
            history_base: Some("the last commit deployed from main d0".into()),
            commits: vec![
                BuildCommitRow {
                    commit: "c1".into(),
                    verdict: "untrusted".into(),
                    signer: None,
                    signing_key: None,
                    reason: Some("bad signature".into()),
                },
                BuildCommitRow {
                    commit: "abc".into(),
                    verdict: "trusted".into(),
                    signer: Some("alice@example.org".into()),
                    signing_key: Some("SHA256:k".into()),
                    reason: None,
                },
            ],
            hosts: vec![
                BuildHostRow {
                    host: "a".into(),
                    state: "succeeded".into(),
                    store_path: Some("/nix/store/x-a".into()),
                    error: None,
                    generation: Some(2),
                    started_at: None,
                    finished_at: None,
                    verdict: None,
                },
                BuildHostRow {
                    host: "b".into(),
                    state: "failed".into(),
                    store_path: None,
                    error: Some("boom\ntail".into()),
                    generation: None,
                    started_at: None,
                    finished_at: None,
                    verdict: Some("failed".into()),
                },
                BuildHostRow {
                    host: "c".into(),
                    state: "succeeded".into(),
                    store_path: Some("/nix/store/x-c".into()),
                    error: None,
                    generation: None,
                    started_at: None,
                    finished_at: None,
                    verdict: Some("held-back".into()),
                },
            ],
            forge_statuses: vec![
                ForgeStatusRow {
                    context: "berth/build".into(),
                    state: "failure".into(),
                    description: "1 of 2 hosts failed: b".into(),
                    delivery: "failed".into(),
                    attempts: 6,
                    error: Some("no answer: connection refused".into()),
                    updated_at: 0,
                },
                ForgeStatusRow {
                    context: "berth/deploy/a".into(),
                    state: "pending".into(),
                    description: "generation 2 waiting for a".into(),
                    delivery: "delivered".into(),
                    attempts: 1,
                    error: None,
                    updated_at: 0,
                },
            ],
        };
        insta::assert_snapshot!(render(&build), @r"
        build 3 failed: fleet main (abc)
          commit: signed by alice@example.org
          checked 2 commit(s) since the last commit deployed from main d0:
            c1 untrusted: bad signature
            abc signed by alice@example.org
          a                    succeeded  /nix/store/x-a -> generation 2
          b                    failed     -
              boom
              tail
          c                    succeeded  /nix/store/x-c (held-back)
          1 of 2 hosts failed: b
          forge berth/build failure: 1 of 2 hosts failed: b [failed after 6 attempt(s): no answer: connection refused]
          forge berth/deploy/a pending: generation 2 waiting for a
        ");
    }
}
