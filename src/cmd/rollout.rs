//! `berth rollout status|resume|abort [ID]`: staged rollouts, with pure renderers.

use crate::{
    client::{Api, ClientError},
    deploy::rollouts::RolloutView,
};

/// What `berth rollout status` prints of one rollout: its state, wave, halt and each host.
pub fn render_rollout(v: &RolloutView) -> String {
    let r = &v.rollout;
    let commit: String = r.commit_sha.chars().take(12).collect();
    let wave = if r.wave < 0 { "-".to_owned() } else { format!("{}/{}", r.wave + 1, r.waves) };
    let mut out =
        format!("rollout {} {} {}@{} wave {wave}: {}\n", r.id, r.repository, r.branch, commit, r.state.as_str());
    match (&r.halted_host, &r.reason) {
        (Some(host), Some(reason)) => out += &format!("  halted by {host}: {reason}\n"),
        (None, Some(reason)) => out += &format!("  {reason}\n"),
        _ => {}
    }
    out += &format!("  {:<6} {:<20} {:>10}  STATE\n", "WAVE", "HOST", "GENERATION");
    for h in &v.hosts {
        let generation = h.generation.map_or_else(|| "-".to_owned(), |n| n.to_string());
        let state = match (h.held, h.waived) {
            (true, _) => "held",
            (false, true) => "released (failure accepted)",
            (false, false) => "released",
        };
        out += &format!("  {:<6} {:<20} {generation:>10}  {state}\n", h.wave + 1, h.host);
    }
    out
}

/// `berth rollout status [ID]`: one rollout, or the newest ones.
pub async fn status(api: &Api, id: Option<i64>) -> Result<String, ClientError> {
    let views = match id {
        Some(id) => vec![api.get::<RolloutView>(&format!("/api/v1/rollouts/{id}")).await?],
        None => api.get::<Vec<RolloutView>>("/api/v1/rollouts").await?,
    };
    if views.is_empty() {
        return Ok("no rollouts\n".into());
    }
    Ok(views.iter().map(render_rollout).collect::<Vec<_>>().join("\n"))
}

/// `berth rollout resume|abort [ID]` (default: the newest halted or running one).
pub async fn command(api: &Api, action: &str, id: Option<i64>) -> Result<String, ClientError> {
    let id = match id {
        Some(id) => id,
        None => {
            let views: Vec<RolloutView> = api.get("/api/v1/rollouts").await?;
            let open = views.iter().find(|v| v.rollout.state.is_open());
            open.map(|v| v.rollout.id).ok_or_else(|| ClientError::Nothing("no open rollout".into()))?
        }
    };
    let view: RolloutView = api.post(&format!("/api/v1/rollouts/{id}/{action}"), &serde_json::json!({})).await?;
    Ok(render_rollout(&view))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{RolloutHostRow, RolloutRow};

    #[test]
    fn a_halted_rollout_names_its_host_and_reason() {
        let host = |name: &str, wave, held| RolloutHostRow {
            host: name.into(),
            wave,
            waived: false,
            generation: Some(2),
            held,
            last_seen: None,
            newest_released: None,
        };
        let view = RolloutView {
            rollout: RolloutRow {
                id: 3,
                repository: "fleet".into(),
                branch: "main".into(),
                commit_sha: "0123456789abcdef".into(),
                build_id: Some(7),
                state: crate::deploy::rollout::RolloutState::Halted,
                wave: 0,
                waves: 2,
                released_at: None,
                settled_at: None,
                halted_host: Some("alpha".into()),
                reason: Some("rolled back: health check failed".into()),
                created_at: 0,
                updated_at: 0,
            },
            hosts: vec![host("alpha", 0, false), host("beta", 1, true)],
        };
        let text = render_rollout(&view);
        assert_eq!(
            text,
            "rollout 3 fleet main@0123456789ab wave 1/2: halted\n  halted by alpha: rolled back: health check failed\n  WAVE   HOST                 GENERATION  STATE\n  1      alpha                         2  released\n  2      beta                          2  held\n"
        );
    }
}
