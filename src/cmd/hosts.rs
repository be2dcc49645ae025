//! `berth hosts` and `berth hosts history NAME`.

use serde::Deserialize;

use super::timestamp;
use crate::client::{Api, ClientError};

/// A generation as the API shows it.
#[derive(Debug, Deserialize)]
pub struct Generation {
    /// Number.
    pub number: i64,
    /// Toplevel.
    pub store_path: String,
    /// Commit.
    pub commit_sha: String,
    /// Branch.
    pub branch: String,
    /// Build.
    pub build_id: Option<i64>,
    /// When.
    pub created_at: i64,
}

/// A host as the API shows it.
#[derive(Debug, Deserialize)]
pub struct Host {
    /// Name.
    pub name: String,
    /// Repository.
    pub repository: String,
    /// Newest generation.
    pub latest: Option<Generation>,
}

/// The table `berth hosts` prints.
pub fn render_hosts(hosts: &[Host]) -> String {
    let mut out = format!("{:<20} {:<12} {:>4}  {:<19}  {:<12} STORE PATH\n", "HOST", "REPOSITORY", "GEN", "CREATED", "COMMIT");
    for h in hosts {
        match &h.latest {
            Some(g) => {
                let commit: String = g.commit_sha.chars().take(12).collect();
                out += &format!("{:<20} {:<12} {:>4}  {}  {:<12} {}\n", h.name, h.repository, g.number, timestamp(g.created_at), commit, g.store_path);
            }
            None => out += &format!("{:<20} {:<12} {:>4}\n", h.name, h.repository, "-"),
        }
    }
    out
}

/// The table `berth hosts history NAME` prints.
pub fn render_history(generations: &[Generation]) -> String {
    let mut out = format!("{:>4}  {:<19}  {:<16} {:<12} {:>6}  STORE PATH\n", "GEN", "CREATED", "BRANCH", "COMMIT", "BUILD");
    for g in generations {
        let commit: String = g.commit_sha.chars().take(12).collect();
        let build = g.build_id.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
        out += &format!("{:>4}  {}  {:<16} {:<12} {:>6}  {}\n", g.number, timestamp(g.created_at), g.branch, commit, build, g.store_path);
    }
    out
}

/// `berth hosts`.
pub async fn list(api: &Api) -> Result<String, ClientError> {
    let hosts: Vec<Host> = api.get("/api/v1/hosts").await?;
    Ok(render_hosts(&hosts))
}

/// `berth hosts history NAME`.
pub async fn history(api: &Api, name: &str) -> Result<String, ClientError> {
    let generations: Vec<Generation> = api.get(&format!("/api/v1/hosts/{name}/generations")).await?;
    Ok(render_history(&generations))
}
