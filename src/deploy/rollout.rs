//! PURE: staged rollouts. A repository's rollout policy puts the hosts of a deploy-branch
//! build into ordered waves ([`assign`]); [`decide`] says, from the current wave's hosts and
//! their outcomes, what happens next: wait, start the soak, release the next wave, complete,
//! or halt on the first host that rolled back or failed. The driver (`deploy::rollouts`)
//! reads the database, calls [`decide`] and applies its decision.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::status::Outcome;

/// Which hosts a `hosts = [...]` wave names: `tag:NAME` or a host name pattern (`*` matches
/// any run of characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every host with this tag.
    Tag(String),
    /// Host names matching this pattern.
    Pattern(String),
}

impl Selector {
    /// `tag:NAME` or a pattern.
    pub fn parse(text: &str) -> Selector {
        match text.strip_prefix("tag:") {
            Some(tag) => Selector::Tag(tag.to_owned()),
            None => Selector::Pattern(text.to_owned()),
        }
    }

    /// Whether `host` (with `tags`, by host) is selected.
    pub fn matches(&self, host: &str, tags: &BTreeMap<String, Vec<String>>) -> bool {
        match self {
            Selector::Tag(tag) => tags.get(host).is_some_and(|t| t.contains(tag)),
            Selector::Pattern(pattern) => glob(pattern.as_bytes(), host.as_bytes()),
        }
    }
}

/// The tags `tag:NAME` selects by: each host's `[repositories.hosts.<name>] tags` and the
/// tags it was enrolled with (`berth hosts add --tags`), together, each once.
pub fn all_tags(
    configured: &BTreeMap<String, Vec<String>>,
    enrolled: impl IntoIterator<Item = (String, Vec<String>)>,
) -> BTreeMap<String, Vec<String>> {
    let mut tags = configured.clone();
    for (host, more) in enrolled {
        let list = tags.entry(host).or_default();
        for tag in more {
            if !list.contains(&tag) {
                list.push(tag);
            }
        }
    }
    tags
}

/// [`all_tags`] of one host: a map with its entry alone (what a selector needs to match it).
pub fn tags_of(
    configured: &BTreeMap<String, Vec<String>>,
    host: &str,
    enrolled: Vec<String>,
) -> BTreeMap<String, Vec<String>> {
    let own: BTreeMap<String, Vec<String>> =
        configured.get(host).map(|t| (host.to_owned(), t.clone())).into_iter().collect();
    all_tags(&own, [(host.to_owned(), enrolled)])
}

/// `*` matches any run of bytes; everything else itself.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| glob(rest, &name[skip..])),
        Some((c, rest)) => name.split_first().is_some_and(|(n, tail)| n == c && glob(rest, tail)),
    }
}

/// One wave of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaveSpec {
    /// The hosts these selectors name (not taken by an earlier wave).
    Hosts(Vec<Selector>),
    /// This percentage (1–100, rounded up, at least one host) of the rollout's hosts, from
    /// those not taken yet, by name.
    Percent(u8),
    /// Every host not taken yet.
    Rest,
}

/// What an offline host does to its wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Offline {
    /// It counts as done: the wave goes on without it (it gets the generation when released).
    Skip,
    /// The wave waits for it.
    Block,
}

/// What a newer deploy-branch commit does to an unfinished rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Supersede {
    /// The new rollout waits until the older ones completed or were aborted.
    Queue,
    /// The older rollout stops (`superseded`; its held generations stay held); the new one
    /// starts at once.
    Replace,
}

/// A repository's rollout policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The waves, in order.
    pub waves: Vec<WaveSpec>,
    /// Seconds to wait after a wave's hosts all confirmed before the next wave.
    pub soak_secs: i64,
    /// Seconds without a poll or report after which a host counts as offline.
    pub offline_after_secs: i64,
    /// What an offline host does to its wave.
    pub offline: Offline,
    /// What a newer commit does.
    pub supersede: Supersede,
}

/// The hosts of a rollout in waves: `hosts` (each once) spread over `waves` in order, empty
/// waves left out; hosts no wave takes form a last wave of their own.
pub fn assign(waves: &[WaveSpec], hosts: &[String], tags: &BTreeMap<String, Vec<String>>) -> Vec<Vec<String>> {
    let mut left: Vec<String> = hosts.to_vec();
    left.sort();
    left.dedup();
    let total = left.len();
    let mut out = Vec::new();
    for spec in waves {
        let taken: Vec<String> = match spec {
            WaveSpec::Hosts(selectors) => {
                left.iter().filter(|h| selectors.iter().any(|s| s.matches(h, tags))).cloned().collect()
            }
            WaveSpec::Percent(p) => {
                let n = (total * usize::from(*p)).div_ceil(100).max(1);
                left.iter().take(n).cloned().collect()
            }
            WaveSpec::Rest => left.clone(),
        };
        left.retain(|h| !taken.contains(h));
        if !taken.is_empty() {
            out.push(taken);
        }
    }
    if !left.is_empty() {
        out.push(left);
    }
    out
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Waiting for an older rollout of its branch to end (`supersede = "queue"`).
    Queued,
    /// Its current wave is released.
    Running,
    /// A host of its current wave rolled back or failed; the admin resumes or aborts.
    Halted,
    /// Every wave is released and settled.
    Completed,
    /// The admin stopped it: hosts not reached keep their generation.
    Aborted,
    /// A newer commit replaced it (`supersede = "replace"`).
    Superseded,
}

impl RolloutState {
    /// Every state.
    pub const ALL: [RolloutState; 6] = [
        RolloutState::Queued,
        RolloutState::Running,
        RolloutState::Halted,
        RolloutState::Completed,
        RolloutState::Aborted,
        RolloutState::Superseded,
    ];

    /// The name the database and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Queued => "queued",
            RolloutState::Running => "running",
            RolloutState::Halted => "halted",
            RolloutState::Completed => "completed",
            RolloutState::Aborted => "aborted",
            RolloutState::Superseded => "superseded",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<RolloutState> {
        RolloutState::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether it may still release a wave (a newer commit supersedes or queues behind it).
    pub fn is_open(self) -> bool {
        matches!(self, RolloutState::Queued | RolloutState::Running | RolloutState::Halted)
    }
}

/// A stored state name that is none of [`RolloutState::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown rollout state {0:?}")]
pub struct UnknownState(pub String);

impl TryFrom<String> for RolloutState {
    type Error = UnknownState;

    fn try_from(name: String) -> Result<Self, UnknownState> {
        RolloutState::parse(&name).ok_or(UnknownState(name))
    }
}

/// One host of the current wave as [`decide`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    /// Its name.
    pub host: String,
    /// What became of the rollout's generation on it so far.
    pub outcome: Outcome,
    /// When it last polled or reported.
    pub last_seen: Option<i64>,
    /// Its failure was accepted by a resume.
    pub waived: bool,
}

/// A running rollout's current wave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress<'a> {
    /// The current (released) wave, from 0.
    pub wave: usize,
    /// How many waves there are.
    pub waves: usize,
    /// When the current wave was released.
    pub released_at: i64,
    /// When its hosts were all found settled (the soak's start), if they were.
    pub settled_at: Option<i64>,
    /// Its hosts.
    pub hosts: &'a [HostView],
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing yet.
    Wait,
    /// Every host settled: record `now` as the soak's start.
    Settled,
    /// Release this wave.
    Release(usize),
    /// The last wave is done.
    Complete,
    /// Stop: `host` rolled back or failed.
    Halt {
        /// The host.
        host: String,
        /// Its reason.
        reason: String,
    },
}

/// The next step of a running rollout at `now`. A failure halts at once, whatever the other
/// hosts are doing; otherwise the wave waits for every host to settle (confirmed, or replaced
/// by a newer generation, or offline too long under [`Offline::Skip`]), then soaks, then the
/// next wave is released.
pub fn decide(policy: &Policy, progress: &Progress<'_>, now: i64) -> Decision {
    let mut pending = false;
    for h in progress.hosts.iter().filter(|h| !h.waived) {
        match &h.outcome {
            Outcome::RolledBack { reason } | Outcome::Failed { reason } => {
                let what = h.outcome.label().replace('_', " ");
                let reason = reason.as_deref().map_or(what.clone(), |r| format!("{what}: {r}"));
                return Decision::Halt { host: h.host.clone(), reason };
            }
            Outcome::Confirmed | Outcome::Superseded | Outcome::NeverReached => {}
            Outcome::InProgress { .. } | Outcome::Waiting => {
                let seen = h.last_seen.unwrap_or(progress.released_at);
                let offline = now - seen > policy.offline_after_secs;
                pending |= !(offline && policy.offline == Offline::Skip);
            }
        }
    }
    if pending {
        return Decision::Wait;
    }
    match progress.settled_at {
        None if policy.soak_secs > 0 => Decision::Settled,
        Some(at) if now < at + policy.soak_secs => Decision::Wait,
        _ if progress.wave + 1 < progress.waves => Decision::Release(progress.wave + 1),
        _ => Decision::Complete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::status::Phase;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[track_caller]
    fn check_assign(waves: &[WaveSpec], hosts: &[&str], expected: &[&[&str]]) {
        let tags = BTreeMap::from([("alpha".to_owned(), names(&["canary"])), ("db1".to_owned(), names(&["db"]))]);
        let got = assign(waves, &names(hosts), &tags);
        let expected: Vec<Vec<String>> = expected.iter().map(|w| names(w)).collect();
        assert_eq!(got, expected, "{waves:?} over {hosts:?}");
    }

    #[test]
    fn enrolled_tags_join_the_configured_ones() {
        let configured: BTreeMap<String, Vec<String>> =
            [("a".into(), vec!["canary".into()]), ("b".into(), vec!["web".into()])].into();
        let enrolled = vec![
            ("b".to_owned(), vec!["web".to_owned(), "eu".to_owned()]),
            ("c".to_owned(), vec!["canary".to_owned()]),
        ];
        let all = all_tags(&configured, enrolled);
        assert_eq!(all["a"], ["canary"]);
        assert_eq!(all["b"], ["web", "eu"], "each tag once");
        assert_eq!(all["c"], ["canary"], "a host only enrolled with tags");
        let canary = Selector::parse("tag:canary");
        assert!(canary.matches("c", &all) && !canary.matches("b", &all));
        let one = tags_of(&configured, "b", vec!["eu".into()]);
        assert_eq!(one.len(), 1);
        assert_eq!(one["b"], ["web", "eu"]);
        assert!(tags_of(&configured, "z", vec![]).get("z").is_some_and(Vec::is_empty));
    }

    #[test]
    fn waves_take_hosts_in_order() {
        use WaveSpec::*;
        let canary = Hosts(vec![Selector::parse("tag:canary")]);
        let all = ["alpha", "beta", "db1", "gamma", "web1"];
        check_assign(&[canary.clone(), Percent(25), Rest], &all, &[&["alpha"], &["beta", "db1"], &["gamma", "web1"]]);
        // Leftovers form a last wave; a wave that takes nobody is left out.
        check_assign(std::slice::from_ref(&canary), &["beta", "gamma"], &[&["beta", "gamma"]]);
        check_assign(
            &[Hosts(vec![Selector::parse("web*"), Selector::parse("tag:db")]), Rest],
            &all,
            &[&["db1", "web1"], &["alpha", "beta", "gamma"]],
        );
        check_assign(&[Percent(1), Percent(100)], &all, &[&["alpha"], &["beta", "db1", "gamma", "web1"]]);
        check_assign(&[canary, Rest], &[], &[]);
        assert!(glob(b"a*c*", b"abcde") && glob(b"*", b"") && !glob(b"a*c", b"abd") && glob(b"beta", b"beta"));
    }

    fn policy(soak: i64, offline: Offline) -> Policy {
        Policy { waves: vec![], soak_secs: soak, offline_after_secs: 60, offline, supersede: Supersede::Replace }
    }

    fn host(name: &str, outcome: Outcome, last_seen: Option<i64>) -> HostView {
        HostView { host: name.into(), outcome, last_seen, waived: false }
    }

    #[track_caller]
    fn check(policy: &Policy, wave: usize, settled_at: Option<i64>, hosts: &[HostView], now: i64, expected: Decision) {
        let progress = Progress { wave, waves: 3, released_at: 1000, settled_at, hosts };
        assert_eq!(decide(policy, &progress, now), expected, "{hosts:?} at {now}");
    }

    #[test]
    fn decisions() {
        use Decision::*;
        let (p, soak) = (policy(0, Offline::Block), policy(30, Offline::Skip));
        let ok = host("a", Outcome::Confirmed, Some(1000));
        let busy = host("b", Outcome::InProgress { phase: Phase::Activating }, Some(1010));
        let bad = host("c", Outcome::RolledBack { reason: Some("health check failed".into()) }, Some(1010));
        check(&p, 0, None, std::slice::from_ref(&ok), 1001, Release(1));
        check(&p, 2, None, std::slice::from_ref(&ok), 1001, Complete);
        check(&p, 0, None, &[ok.clone(), busy.clone()], 1001, Wait);
        let halt = Halt { host: "c".into(), reason: "rolled back: health check failed".into() };
        check(&p, 0, None, &[ok.clone(), busy.clone(), bad.clone()], 1001, halt);
        let failed = host("d", Outcome::Failed { reason: None }, None);
        check(&p, 1, None, &[failed], 1001, Halt { host: "d".into(), reason: "failed".into() });
        // A resume waived the failure.
        check(&p, 0, None, &[ok.clone(), HostView { waived: true, ..bad }], 1001, Release(1));
        // Replaced by a newer generation: not this rollout's to wait for.
        check(
            &p,
            0,
            None,
            &[host("e", Outcome::Superseded, None), host("f", Outcome::NeverReached, None)],
            1,
            Release(1),
        );
        // Soak: recorded, waited out, then the next wave.
        check(&soak, 0, None, std::slice::from_ref(&ok), 1001, Settled);
        check(&soak, 0, Some(1001), std::slice::from_ref(&ok), 1030, Wait);
        check(&soak, 0, Some(1001), std::slice::from_ref(&ok), 1031, Release(1));
        // Offline: a host unseen for over 60 s blocks, or is skipped.
        let gone = host("g", Outcome::Waiting, Some(900));
        check(&p, 0, None, &[ok.clone(), gone.clone()], 961, Wait);
        check(&policy(0, Offline::Skip), 0, None, &[ok.clone(), gone.clone()], 961, Release(1));
        check(&policy(0, Offline::Skip), 0, None, &[ok.clone(), gone], 960, Wait);
        // Never seen: counted from the wave's release.
        let never = host("h", Outcome::Waiting, None);
        check(&policy(0, Offline::Skip), 0, None, std::slice::from_ref(&never), 1060, Wait);
        check(&policy(0, Offline::Skip), 0, None, &[never], 1061, Release(1));
        check(&p, 0, None, &[busy], 5000, Wait);
    }

    #[test]
    fn states_round_trip() {
        assert_eq!(RolloutState::ALL.map(|s| RolloutState::parse(s.as_str())), RolloutState::ALL.map(Some));
        assert!(RolloutState::Halted.is_open() && !RolloutState::Aborted.is_open());
        assert!(RolloutState::try_from("paused".to_owned()).is_err());
    }
}
