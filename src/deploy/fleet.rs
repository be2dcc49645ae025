//! The fleet as `berth hosts`, `GET /api/v1/hosts` and the dashboard show it: each host with
//! its newest generation, its state (from its own reports, or `offline`, `paused`) and its
//! newest build; and a host's history with each generation's outcome. One reading, shared by
//! the API and the dashboard, so the two never disagree.

use std::collections::HashMap;

use super::status::{self, HostState, Outcome, Phase};
use crate::config::Config;
use crate::db::{now, Db, DbError, GenerationRow, HostRow};

/// Every host, by name, with its state and its newest build's verdict filled in. A host is
/// `offline` when its agent has not been seen for `offline_after_secs`, and
/// `outside_window` while its newest generation waits for its activation window. Three
/// queries, whatever the fleet's size.
pub async fn hosts(db: &Db, config: &Config) -> Result<Vec<HostRow>, DbError> {
    let offline_after_secs = config.offline_after_secs;
    let mut hosts = db.hosts().await?;
    let mut last_builds: HashMap<_, _> = db.last_builds().await?.into_iter().collect();
    let mut reports: HashMap<String, Vec<(i64, String, Option<String>)>> = HashMap::new();
    for (host, generation, phase, message) in db.newest_report_phases().await? {
        reports.entry(host).or_default().push((generation, phase, message));
    }
    let now = now();
    for h in &mut hosts {
        h.last_build = last_builds.remove(&h.name);
        let seen = seen(reports.get(&h.name).map_or(&[], Vec::as_slice));
        let newest = h.latest.as_ref().map(|g| g.number);
        let (seen_at, paused) = (h.status.last_seen, h.status.paused_at.is_some());
        let pushed = config.repositories.iter().any(|r| r.name == h.repository && r.push.contains_key(&h.name));
        h.delivery = pushed.then(|| "push".to_owned());
        let state = status::host_state(newest, &seen, seen_at, paused, h.held_by, now, offline_after_secs);
        h.state = Some(match state {
            HostState::Generation(Outcome::Waiting) => outside_window(config, h).unwrap_or(state),
            state => state,
        });
    }
    Ok(hosts)
}

/// `OutsideWindow` when `h`'s activation window is closed now.
fn outside_window(config: &Config, h: &HostRow) -> Option<HostState> {
    let r = config.repositories.iter().find(|r| r.name == h.repository)?;
    let windows = r.windows.of_host(&h.name, &r.tags, h.tags.clone())?;
    (!windows.open(jiff::Timestamp::now())).then(|| HostState::OutsideWindow { windows: windows.text.clone() })
}

/// A host's generations, newest first, each with its outcome and the host's own profile
/// generation it became; `None` when there is no such host.
pub async fn history(db: &Db, name: &str) -> Result<Option<Vec<GenerationRow>>, DbError> {
    if !db.host_exists(name).await? {
        return Ok(None);
    }
    let mut generations = db.generations(name).await?;
    let reports = db.report_phases(name).await?;
    let seen = seen(&reports);
    let newest = generations.first().map_or(0, |g| g.number);
    let profiles: HashMap<i64, i64> = db.profile_generations(name).await?.into_iter().collect();
    for g in &mut generations {
        g.outcome = Some(status::outcome(g.number, newest, &seen));
        g.profile_generation = profiles.get(&g.number).copied();
    }
    Ok(Some(generations))
}

/// Reports as the status rule reads them (phases it does not know are left out).
fn seen(reports: &[(i64, String, Option<String>)]) -> Vec<status::Seen<'_>> {
    reports
        .iter()
        .filter_map(|(generation, phase, message)| {
            Some(status::Seen { generation: *generation, phase: Phase::parse(phase)?, message: message.as_deref() })
        })
        .collect()
}
