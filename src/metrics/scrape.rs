//! Figures read at scrape time rather than counted: the build queue and one gauge set per
//! host, from the same [`HostRow`]s the host list shows (`deploy::fleet::hosts`).

use super::family::{header, sample, Kind};
use crate::db::HostRow;

/// One per-host gauge's value for a host at a time, if it has one.
type HostGauge = fn(&HostRow, i64) -> Option<i64>;

/// What `/metrics` reads from the index for one scrape.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Builds waiting for a worker.
    pub queued: u64,
    /// Builds a worker is on.
    pub running: u64,
    /// Every host, as `deploy::fleet::hosts` returns them (states filled in).
    pub hosts: Vec<HostRow>,
    /// The time the hosts were read at (Unix seconds).
    pub now: i64,
}

impl Scrape {
    /// The exposition text of these figures.
    pub fn render(&self, out: &mut String) {
        let name = "berth_builds";
        header(out, name, "builds waiting for a worker (queued) or being built (running)", Kind::Gauge);
        sample(out, name, &[("state", "queued")], self.queued);
        sample(out, name, &[("state", "running")], self.running);
        self.render_hosts(out);
    }

    fn render_hosts(&self, out: &mut String) {
        let gauges: [(&str, &str, HostGauge); 3] = [
            ("berth_host_current_generation", "the generation the host last confirmed", |h, _| {
                h.status.active_generation
            }),
            ("berth_host_desired_generation", "the host's newest generation", |h, _| {
                h.latest.as_ref().map(|g| g.number)
            }),
            ("berth_host_last_seen_seconds", "seconds since the host's agent last polled or reported", |h, now| {
                h.status.last_seen.map(|seen| (now - seen).max(0))
            }),
        ];
        for (name, help, value) in gauges {
            header(out, name, help, Kind::Gauge);
            for h in &self.hosts {
                if let Some(v) = value(h, self.now) {
                    sample(out, name, &[("host", &h.name)], v);
                }
            }
        }
        let name = "berth_host_state";
        header(out, name, "1 for each host's state (offline, paused, confirmed, rolled_back, …)", Kind::Gauge);
        for h in &self.hosts {
            if let Some(state) = &h.state {
                sample(out, name, &[("host", &h.name), ("state", state.label())], 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        db::{GenerationRow, HostStatus},
        deploy::status::{HostState, Outcome},
    };

    fn host(name: &str, active: Option<i64>, latest: Option<i64>, seen: Option<i64>, state: HostState) -> HostRow {
        HostRow {
            name: name.into(),
            repository: "fleet".into(),
            latest: latest.map(|number| GenerationRow {
                host: name.into(),
                number,
                store_path: "/nix/store/x".into(),
                commit_sha: "c".into(),
                branch: "main".into(),
                build_id: None,
                created_at: 0,
                signer: None,
                outcome: None,
                profile_generation: None,
            }),
            status: HostStatus { active_generation: active, last_seen: seen, ..HostStatus::default() },
            state: Some(state),
            held_by: None,
            tags: vec![],
            delivery: None,
            last_build: None,
        }
    }

    #[test]
    fn hosts_and_the_queue_render_as_gauges() {
        let scrape = Scrape {
            queued: 2,
            running: 1,
            hosts: vec![
                host("web", Some(3), Some(4), Some(990), HostState::Generation(Outcome::RolledBack { reason: None })),
                host("new", None, Some(1), None, HostState::NeverSeen),
                host("q\"x", Some(1), Some(1), Some(400), HostState::Offline),
            ],
            now: 1000,
        };
        let mut out = String::new();
        scrape.render(&mut out);
        insta::assert_snapshot!(out, @r###"
        # HELP berth_builds builds waiting for a worker (queued) or being built (running)
        # TYPE berth_builds gauge
        berth_builds{state="queued"} 2
        berth_builds{state="running"} 1
        # HELP berth_host_current_generation the generation the host last confirmed
        # TYPE berth_host_current_generation gauge
        berth_host_current_generation{host="web"} 3
        berth_host_current_generation{host="q\"x"} 1
        # HELP berth_host_desired_generation the host's newest generation
        # TYPE berth_host_desired_generation gauge
        berth_host_desired_generation{host="web"} 4
        berth_host_desired_generation{host="new"} 1
        berth_host_desired_generation{host="q\"x"} 1
        # HELP berth_host_last_seen_seconds seconds since the host's agent last polled or reported
        # TYPE berth_host_last_seen_seconds gauge
        berth_host_last_seen_seconds{host="web"} 10
        berth_host_last_seen_seconds{host="q\"x"} 600
        # HELP berth_host_state 1 for each host's state (offline, paused, confirmed, rolled_back, …)
        # TYPE berth_host_state gauge
        berth_host_state{host="web",state="rolled_back"} 1
        berth_host_state{host="new",state="never_seen"} 1
        berth_host_state{host="q\"x",state="offline"} 1
        "###);
    }
}
