//! Hosts going offline and coming back: a periodic look at every host's `last_seen`
//! (`[deploy] offline_after_secs`, the same rule `berth hosts` shows), compared with the
//! previous look. The first look after start-up is the baseline: a host already offline
//! then is not news (it was offline before this server ran). With several replicas, one
//! looks (a leader lock), so each change is announced once.

use std::{collections::BTreeMap, time::Duration};

use tokio_util::sync::CancellationToken;

use super::Event;
use crate::{
    app::AppState,
    db::{Leadership, OFFLINE_WATCH_KEY},
};

/// PURE: the events between two looks. `before` and `now` map each host to whether it is
/// offline, with its last-seen time; hosts new in `now` are compared with "online".
pub fn changes(before: &BTreeMap<String, bool>, now: &BTreeMap<String, (bool, i64)>) -> Vec<Event> {
    now.iter()
        .filter_map(|(host, &(offline, last_seen))| match (before.get(host).copied().unwrap_or(false), offline) {
            (false, true) => Some(Event::HostOffline { host: host.clone(), last_seen }),
            (true, false) => Some(Event::HostBack { host: host.clone() }),
            _ => None,
        })
        .collect()
}

/// How often to look: a quarter of the offline threshold, between 1 and 30 seconds.
pub fn interval(offline_after_secs: i64) -> Duration {
    Duration::from_secs((offline_after_secs / 4).clamp(1, 30) as u64)
}

/// Looks every [`interval`] until `stop`, publishing what changed. Among replicas sharing a
/// PostgreSQL database only the one holding the watch's leader lock looks, so a host going
/// offline is announced once; a replica that takes the lead over (the leader stopped or lost
/// its connection) starts from a new baseline.
pub async fn watch(state: AppState, stop: CancellationToken) {
    let threshold = state.config.offline_after_secs;
    let mut before: Option<BTreeMap<String, bool>> = None;
    let mut lead: Option<Leadership> = None;
    loop {
        let still = match &mut lead {
            Some(held) => held.holds().await,
            None => false,
        };
        lead = match lead.take() {
            Some(held) if still => Some(held),
            _ => {
                before = None;
                state.db.try_lead(OFFLINE_WATCH_KEY).await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "asking whether this replica watches for offline hosts");
                    None
                })
            }
        };
        if lead.is_none() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval(threshold)) => continue,
            }
        }
        match state.db.hosts().await {
            Ok(hosts) => {
                let t = crate::db::now();
                let now: BTreeMap<String, (bool, i64)> = hosts
                    .into_iter()
                    .filter_map(|h| h.status.last_seen.map(|seen| (h.name, (t - seen > threshold, seen))))
                    .collect();
                if let Some(before) = &before {
                    changes(before, &now).into_iter().for_each(|e| state.events.publish(e));
                }
                before = Some(now.into_iter().map(|(h, (offline, _))| (h, offline)).collect());
            }
            Err(e) => tracing::warn!(error = %e, "reading hosts to see which are offline"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval(threshold)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(before: &[(&str, bool)], now: &[(&str, bool)], expected: &[&str]) {
        let before = before.iter().map(|&(h, o)| (h.to_owned(), o)).collect();
        let now = now.iter().map(|&(h, o)| (h.to_owned(), (o, 10))).collect();
        let got: Vec<String> = changes(&before, &now)
            .iter()
            .map(|e| match e {
                Event::HostOffline { host, .. } => format!("{host} offline"),
                Event::HostBack { host } => format!("{host} back"),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn only_changes_are_news() {
        check(&[], &[], &[]);
        check(&[("a", false)], &[("a", true)], &["a offline"]);
        check(&[("a", true)], &[("a", true)], &[]);
        check(&[("a", true), ("b", false)], &[("a", false), ("b", false)], &["a back"]);
        // A host first seen offline (enrolled, then silent) went offline; first seen online is no news.
        check(&[], &[("a", true), ("b", false)], &["a offline"]);
        assert_eq!(interval(120), Duration::from_secs(30));
        assert_eq!(interval(2), Duration::from_secs(1));
        assert_eq!(interval(1000), Duration::from_secs(30));
    }
}
