//! PURE: what a host's reports mean. The outcome of each generation comes from that
//! generation's own reports alone (an error never outlives the generation it was about),
//! and a host that has not asked for its manifest for a while is `offline`, whatever its
//! last report said.

use serde::{Deserialize, Serialize};

/// A phase an agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Realising the system from the cache.
    Downloading,
    /// Running `switch-to-configuration`.
    Activating,
    /// The health checks passed.
    Healthy,
    /// The generation is applied (the boot default, except in `test` mode).
    Confirmed,
    /// It failed and the previous generation is back.
    RolledBack,
    /// It failed (not realised, or no way back).
    Failed,
    /// It is confirmed but runs fully only after a reboot.
    NeedsReboot,
}

impl Phase {
    /// Every phase, in the order a deploy reaches them.
    pub const ALL: [Phase; 7] = [
        Phase::Downloading,
        Phase::Activating,
        Phase::Healthy,
        Phase::Confirmed,
        Phase::RolledBack,
        Phase::Failed,
        Phase::NeedsReboot,
    ];

    /// The name reports and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Downloading => "downloading",
            Phase::Activating => "activating",
            Phase::Healthy => "healthy",
            Phase::Confirmed => "confirmed",
            Phase::RolledBack => "rolled_back",
            Phase::Failed => "failed",
            Phase::NeedsReboot => "needs_reboot",
        }
    }

    /// The phase named `name`, if it is one.
    pub fn parse(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// What became of one generation on its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// The host confirmed it.
    Confirmed,
    /// It failed and the host went back to what ran before.
    RolledBack {
        /// The host's one-line reason.
        reason: Option<String>,
    },
    /// It failed with nothing to go back to, or could not be realised.
    Failed {
        /// The host's one-line reason.
        reason: Option<String>,
    },
    /// The host is applying it (its last report for it is this phase).
    InProgress {
        /// The last phase reported.
        phase: Phase,
    },
    /// The newest generation, which the host has not started yet.
    Waiting,
    /// The host started it, but a newer generation replaced it before it settled.
    Superseded,
    /// A newer generation was made before the host reached this one: it never tried it.
    NeverReached,
}

impl Outcome {
    /// One word for tables.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Confirmed => "confirmed",
            Outcome::RolledBack { .. } => "rolled_back",
            Outcome::Failed { .. } => "failed",
            Outcome::InProgress { phase } => phase.as_str(),
            Outcome::Waiting => "waiting",
            Outcome::Superseded => "superseded",
            Outcome::NeverReached => "never_reached",
        }
    }

    /// The reason of a failure.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::RolledBack { reason } | Outcome::Failed { reason } => reason.as_deref(),
            _ => None,
        }
    }
}

/// One report as the rule sees it, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen<'a> {
    /// The generation it is about.
    pub generation: i64,
    /// Its phase.
    pub phase: Phase,
    /// Its message.
    pub message: Option<&'a str>,
}

/// The outcome of generation `number` (`newest` is the host's newest generation) from the
/// host's reports, oldest first: the last settling report about it (confirmed, rolled back,
/// failed) decides; without one, it is in progress, waiting, superseded or never reached.
pub fn outcome(number: i64, newest: i64, reports: &[Seen<'_>]) -> Outcome {
    let own = || reports.iter().filter(|r| r.generation == number);
    let settled = own().rev().find_map(|r| match r.phase {
        Phase::Confirmed => Some(Outcome::Confirmed),
        Phase::RolledBack => Some(Outcome::RolledBack { reason: r.message.map(str::to_owned) }),
        Phase::Failed => Some(Outcome::Failed { reason: r.message.map(str::to_owned) }),
        _ => None,
    });
    if let Some(settled) = settled {
        return settled;
    }
    match (own().next_back(), number < newest) {
        (Some(_), true) => Outcome::Superseded,
        (Some(r), false) => Outcome::InProgress { phase: r.phase },
        (None, true) => Outcome::NeverReached,
        (None, false) => Outcome::Waiting,
    }
}

/// What `berth hosts` says of a host: its newest generation's outcome, or `Offline` when it
/// has not been seen for `offline_after` seconds (or `NeverSeen`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum HostState {
    /// No agent ever asked for this host's manifest.
    NeverSeen,
    /// Its agent has not asked for its manifest (nor reported) for too long.
    Offline,
    /// Held on its current generation by `berth hosts pause` (newer ones wait for resume).
    Paused,
    /// Its newest generation waits for its rollout wave to be released.
    Held {
        /// The rollout that holds it.
        rollout: i64,
    },
    /// Its newest generation, not yet handed to it, waits for its activation window.
    OutsideWindow {
        /// The windows, as configured.
        windows: Vec<String>,
    },
    /// The outcome of its newest generation, so far.
    Generation(Outcome),
}

impl HostState {
    /// One word for tables.
    pub fn label(&self) -> &'static str {
        match self {
            HostState::NeverSeen => "never_seen",
            HostState::Offline => "offline",
            HostState::Paused => "paused",
            HostState::Held { .. } => "held",
            HostState::OutsideWindow { .. } => "outside_window",
            HostState::Generation(o) => o.label(),
        }
    }
}

/// The state of a host whose newest generation is `newest` (none yet: `None`), last seen at
/// `last_seen`, paused or not, its newest generation held by rollout `held` or not, at `now`.
/// Offline comes before paused: a paused host that stopped asking is gone, not merely held;
/// paused before held: resuming the host would not hand it the held generation.
pub fn host_state(
    newest: Option<i64>,
    reports: &[Seen<'_>],
    last_seen: Option<i64>,
    paused: bool,
    held: Option<i64>,
    now: i64,
    offline_after: i64,
) -> HostState {
    match (last_seen, newest, held) {
        (None, ..) if paused => HostState::Paused,
        (None, ..) => HostState::NeverSeen,
        (Some(seen), ..) if now - seen > offline_after => HostState::Offline,
        _ if paused => HostState::Paused,
        (_, _, Some(rollout)) => HostState::Held { rollout },
        (Some(_), Some(newest), None) => HostState::Generation(outcome(newest, newest, reports)),
        (Some(_), None, None) => HostState::Generation(Outcome::Waiting),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(list: &[(i64, Phase, Option<&'static str>)]) -> Vec<Seen<'static>> {
        list.iter().map(|&(generation, phase, message)| Seen { generation, phase, message }).collect()
    }

    #[track_caller]
    fn check(number: i64, newest: i64, reports: &[(i64, Phase, Option<&'static str>)], expected: Outcome) {
        assert_eq!(outcome(number, newest, &seen(reports)), expected, "generation {number} of {newest}: {reports:?}");
    }

    use Phase::*;

    #[test]
    fn outcomes() {
        let bad = Some("health check failed");
        check(1, 1, &[(1, Downloading, None), (1, Confirmed, None), (1, NeedsReboot, None)], Outcome::Confirmed);
        check(
            2,
            2,
            &[(2, Activating, None), (2, RolledBack, bad)],
            Outcome::RolledBack { reason: bad.map(Into::into) },
        );
        check(2, 2, &[(2, Failed, bad)], Outcome::Failed { reason: bad.map(Into::into) });
        // An error of an older generation says nothing about this one.
        check(
            3,
            3,
            &[(2, RolledBack, bad), (3, Downloading, None), (3, Activating, None)],
            Outcome::InProgress { phase: Activating },
        );
        check(3, 3, &[(2, RolledBack, bad)], Outcome::Waiting);
        check(2, 3, &[(2, Activating, None), (3, Confirmed, None)], Outcome::Superseded);
        check(2, 3, &[(1, Confirmed, None), (3, Confirmed, None)], Outcome::NeverReached);
        // Settled is settled, whatever came later.
        check(2, 3, &[(2, Confirmed, None), (3, Confirmed, None)], Outcome::Confirmed);
        // A deploy retried after a crash: the last settling report decides.
        check(2, 2, &[(2, RolledBack, bad), (2, Confirmed, None)], Outcome::Confirmed);
    }

    #[test]
    fn host_states() {
        let reports = seen(&[(1, Confirmed, None), (2, RolledBack, Some("boom")), (3, Activating, None)]);
        let state = |newest, seen, now| host_state(newest, &reports, seen, false, None, now, 120);
        assert_eq!(state(Some(3), Some(100), 150), HostState::Generation(Outcome::InProgress { phase: Activating }));
        assert_eq!(state(Some(3), Some(100), 221), HostState::Offline);
        assert_eq!(state(Some(3), Some(100), 220), HostState::Generation(Outcome::InProgress { phase: Activating }));
        assert_eq!(state(Some(3), None, 150), HostState::NeverSeen);
        assert_eq!(state(Some(4), Some(100), 150), HostState::Generation(Outcome::Waiting));
        assert_eq!(state(None, Some(100), 150), HostState::Generation(Outcome::Waiting));
        assert_eq!(HostState::Offline.label(), "offline");
        let paused = |newest, seen, now| host_state(newest, &reports, seen, true, None, now, 120);
        assert_eq!(paused(Some(4), Some(100), 150), HostState::Paused);
        assert_eq!(paused(Some(4), Some(100), 221), HostState::Offline, "gone, not merely held");
        assert_eq!(paused(Some(4), None, 150), HostState::Paused);
        let held = |held| host_state(Some(4), &reports, Some(100), false, held, 150, 120);
        assert_eq!(held(Some(7)), HostState::Held { rollout: 7 });
        assert_eq!(held(None), HostState::Generation(Outcome::Waiting));
        assert_eq!(host_state(Some(4), &reports, Some(100), false, Some(7), 221, 120), HostState::Offline);
        assert_eq!(Phase::ALL.map(|p| Phase::parse(p.as_str())), Phase::ALL.map(Some));
    }
}
