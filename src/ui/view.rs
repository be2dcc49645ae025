//! PURE: what each page shows, made from the rows the library returns. No I/O; the
//! templates only print these fields (escaped).

use serde::Serialize;

use crate::{
    cmd::{hosts::last_build, timestamp},
    db::{BuildRow, GenerationRow, HostRow, ReportRow},
    deploy::status::{HostState, Outcome},
};

/// How a state reads at a glance (a CSS class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tone {
    /// Done and well.
    Ok,
    /// Under way, or held.
    Busy,
    /// Failed, rolled back, gone.
    Bad,
    /// Nothing to say yet.
    Idle,
}

/// The tone of a generation's outcome.
pub fn outcome_tone(outcome: &Outcome) -> Tone {
    match outcome {
        Outcome::Confirmed => Tone::Ok,
        Outcome::RolledBack { .. } | Outcome::Failed { .. } => Tone::Bad,
        Outcome::InProgress { .. } | Outcome::Waiting => Tone::Busy,
        Outcome::Superseded | Outcome::NeverReached => Tone::Idle,
    }
}

/// The tone of a host's state.
pub fn host_tone(state: &HostState) -> Tone {
    match state {
        HostState::Generation(outcome) => outcome_tone(outcome),
        HostState::Offline => Tone::Bad,
        HostState::Paused | HostState::Held { .. } | HostState::OutsideWindow { .. } => Tone::Busy,
        HostState::NeverSeen => Tone::Idle,
    }
}

/// The tone of a build state (`build::model::BuildState`'s spelling).
pub fn build_tone(state: &str) -> Tone {
    match state {
        "succeeded" => Tone::Ok,
        "failed" => Tone::Bad,
        "queued" | "running" => Tone::Busy,
        _ => Tone::Idle,
    }
}

/// One host on the fleet page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostLine {
    /// Host name.
    pub name: String,
    /// The generation it should run (the newest).
    pub desired: Option<i64>,
    /// The generation it runs (last confirmed).
    pub current: Option<i64>,
    /// The newest generation's system.
    pub store_path: Option<String>,
    /// Its state's one word.
    pub state: &'static str,
    /// How that reads.
    pub tone: Tone,
    /// Why it failed or rolled back.
    pub reason: Option<String>,
    /// When its agent last asked or reported.
    pub last_seen: Option<String>,
    /// Not seen for too long.
    pub offline: bool,
    /// Held by `berth hosts pause`.
    pub paused: bool,
    /// The newest generation's commit, short.
    pub commit: Option<String>,
    /// Who signed it.
    pub signer: Option<String>,
    /// The host's newest build and its verdict (`#12 deployed 5`).
    pub last_build: Option<String>,
    /// That build's id.
    pub last_build_id: Option<i64>,
}

/// The fleet page's line for a host as `deploy::fleet::hosts` fills it.
pub fn host_line(h: &HostRow) -> HostLine {
    let state = h.state.clone().unwrap_or(HostState::NeverSeen);
    let reason = match &state {
        HostState::Generation(outcome) => outcome.reason().map(str::to_owned),
        HostState::Held { rollout } => Some(format!("waits for its wave of rollout {rollout}")),
        HostState::OutsideWindow { windows } => {
            Some(format!("waits for its activation window ({})", windows.join(", ")))
        }
        _ => None,
    };
    HostLine {
        name: h.name.clone(),
        desired: h.latest.as_ref().map(|g| g.number),
        current: h.status.active_generation,
        store_path: h.latest.as_ref().map(|g| g.store_path.clone()),
        state: state.label(),
        tone: host_tone(&state),
        reason,
        last_seen: h.status.last_seen.map(timestamp),
        offline: state == HostState::Offline,
        paused: h.status.paused_at.is_some(),
        commit: h.latest.as_ref().map(|g| short(&g.commit_sha)),
        signer: h.latest.as_ref().and_then(|g| g.signer.clone()),
        last_build: h.last_build.as_ref().map(last_build),
        last_build_id: h.last_build.as_ref().map(|b| b.id),
    }
}

/// One report in a generation's activation log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    /// When it arrived.
    pub at: String,
    /// Its phase.
    pub phase: String,
    /// Its one-line message.
    pub message: Option<String>,
    /// How long the phase took (`1.5 s`).
    pub took: Option<String>,
    /// What the commands printed, last lines.
    pub tail: Option<String>,
}

/// One generation on a host's page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenerationLine {
    /// Its number.
    pub number: i64,
    /// When it was made.
    pub created: String,
    /// The branch that made it (`rollback-to-2`, `redeploy-3` for an admin's).
    pub branch: String,
    /// Its commit, short.
    pub commit: String,
    /// Who signed it.
    pub signer: Option<String>,
    /// The build that made it.
    pub build_id: Option<i64>,
    /// What became of it.
    pub outcome: &'static str,
    /// How that reads.
    pub tone: Tone,
    /// Why it failed or was rolled back.
    pub reason: Option<String>,
    /// The host's own profile generation it became.
    pub profile: Option<i64>,
    /// Its system.
    pub store_path: String,
    /// What the host reported about it, oldest first.
    pub log: Vec<LogEntry>,
    /// Its closure diff, stored when it was made (none for one made before diffs were
    /// stored, or by a rollback or redeploy).
    pub diff: Option<super::diffs::DiffLine>,
}

/// A generation's stored diff: its number, the generation it was taken against, the diff.
pub type Stored = (i64, Option<i64>, crate::deploy::diff::ClosureDiff);

/// The history page's generations, newest first, each with its reports (`reports` newest
/// first, as `Db::reports` gives them) and its stored diff.
pub fn history(generations: &[GenerationRow], reports: &[ReportRow], diffs: &[Stored]) -> Vec<GenerationLine> {
    generations
        .iter()
        .map(|g| {
            let outcome = g.outcome.clone().unwrap_or(Outcome::Waiting);
            GenerationLine {
                number: g.number,
                created: timestamp(g.created_at),
                branch: g.branch.clone(),
                commit: short(&g.commit_sha),
                signer: g.signer.clone(),
                build_id: g.build_id,
                outcome: outcome.label(),
                tone: outcome_tone(&outcome),
                reason: outcome.reason().map(str::to_owned),
                profile: g.profile_generation,
                store_path: g.store_path.clone(),
                log: reports.iter().rev().filter(|r| r.generation == g.number).map(log_entry).collect(),
                diff: diffs
                    .iter()
                    .find(|d| d.0 == g.number)
                    .map(|(_, from, diff)| super::diffs::diff_line(*from, diff)),
            }
        })
        .collect()
}

fn log_entry(r: &ReportRow) -> LogEntry {
    LogEntry {
        at: timestamp(r.created_at),
        phase: r.phase.clone(),
        message: r.message.clone().filter(|m| !m.is_empty()),
        took: r.duration_ms.map(|ms| format!("{:.1} s", ms as f64 / 1000.0)),
        tail: r.log_tail.clone().filter(|t| !t.is_empty()),
    }
}

/// One build in the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildLine {
    /// Its id.
    pub id: i64,
    /// Repository.
    pub repository: String,
    /// Branch.
    pub branch: String,
    /// Commit, short.
    pub commit: String,
    /// Full commit.
    pub commit_full: String,
    /// State.
    pub state: String,
    /// How that reads.
    pub tone: Tone,
    /// Why it failed, or what it decided.
    pub reason: Option<String>,
    /// When it was asked for.
    pub created: String,
    /// How long it ran (`42 s`), once started.
    pub took: Option<String>,
}

/// A build row as a line of the list (and the head of its page); `now` for one still running.
pub fn build_line(b: &BuildRow, now: i64) -> BuildLine {
    let took = b.started_at.map(|start| format!("{} s", b.finished_at.unwrap_or(now).saturating_sub(start).max(0)));
    BuildLine {
        id: b.id,
        repository: b.repository.clone(),
        branch: b.branch.clone(),
        commit: short(&b.commit_sha),
        commit_full: b.commit_sha.clone(),
        state: b.state.clone(),
        tone: build_tone(&b.state),
        reason: b.reason.clone(),
        created: timestamp(b.created_at),
        took,
    }
}

/// One staged rollout on the rollouts page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutLine {
    /// Its id.
    pub id: i64,
    /// Repository, branch and short commit.
    pub repository: String,
    /// The deploy branch.
    pub branch: String,
    /// The commit's first 12 characters.
    pub commit: String,
    /// The build that made its generations.
    pub build_id: Option<i64>,
    /// `queued`, `running`, `halted`, `completed`, `aborted` or `superseded`.
    pub state: &'static str,
    /// Its colour.
    pub tone: Tone,
    /// "wave 2/3".
    pub wave: String,
    /// "halted by alpha: rolled back: …", or why it was aborted or superseded.
    pub reason: Option<String>,
    /// When it was made.
    pub created: String,
    /// Whether an admin may resume it (halted) or abort it (open).
    pub may_resume: bool,
    /// See `may_resume`.
    pub may_abort: bool,
    /// Each wave's hosts: `alpha (released)`, `beta (held)`.
    pub waves: Vec<Vec<String>>,
}

/// A rollout as a line of the rollouts page.
pub fn rollout_line(v: &crate::deploy::rollouts::RolloutView) -> RolloutLine {
    use crate::deploy::rollout::RolloutState;
    let r = &v.rollout;
    let tone = match r.state {
        RolloutState::Completed => Tone::Ok,
        RolloutState::Halted => Tone::Bad,
        RolloutState::Queued | RolloutState::Running => Tone::Busy,
        _ => Tone::Idle,
    };
    let reason = match (&r.halted_host, &r.reason) {
        (Some(host), Some(reason)) if r.state == RolloutState::Halted => Some(format!("halted by {host}: {reason}")),
        (_, reason) => reason.clone(),
    };
    let mut waves: Vec<Vec<String>> = vec![Vec::new(); r.waves.max(0) as usize];
    for h in &v.hosts {
        let what = if h.waived {
            "failure accepted"
        } else if h.held {
            "held"
        } else if h.generation.is_some() {
            "released"
        } else {
            "waiting for its build"
        };
        if let Some(wave) = waves.get_mut(h.wave.max(0) as usize) {
            wave.push(format!("{} ({what})", h.host));
        }
    }
    RolloutLine {
        id: r.id,
        repository: r.repository.clone(),
        branch: r.branch.clone(),
        commit: short(&r.commit_sha),
        build_id: r.build_id,
        state: r.state.as_str(),
        tone,
        wave: format!("wave {}/{}", (r.wave + 1).min(r.waves.max(1)), r.waves.max(1)),
        reason,
        created: timestamp(r.created_at),
        may_resume: r.state == RolloutState::Halted,
        may_abort: r.state.is_open(),
        waves,
    }
}

/// A commit hash's first 12 characters.
pub fn short(commit: &str) -> String {
    commit.chars().take(12).collect()
}

/// The share of narinfo lookups answered (`75.0 %`), or none before the first lookup.
pub fn hit_rate(hits: u64, misses: u64) -> Option<String> {
    let total = hits.checked_add(misses).filter(|t| *t > 0)?;
    Some(format!("{:.1} %", hits as f64 * 100.0 / total as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{HostStatus, LastBuild};

    #[test]
    fn hit_rates() {
        assert_eq!(hit_rate(0, 0), None);
        assert_eq!(hit_rate(3, 1).as_deref(), Some("75.0 %"));
        assert_eq!(hit_rate(0, 7).as_deref(), Some("0.0 %"));
        assert_eq!(hit_rate(u64::MAX, 1), None, "an overflow shows nothing rather than nonsense");
    }

    fn generation(number: i64, outcome: Option<Outcome>) -> GenerationRow {
        GenerationRow {
            host: "web".into(),
            number,
            store_path: format!("/nix/store/{}-nixos-system-web", "a".repeat(32)),
            commit_sha: "0123456789abcdef0123456789abcdef01234567".into(),
            branch: "main".into(),
            build_id: Some(7),
            created_at: 0,
            signer: Some("alice".into()),
            outcome,
            profile_generation: None,
        }
    }

    #[track_caller]
    fn check(state: Option<HostState>, paused_at: Option<i64>, expected: (&str, Tone, bool, bool, Option<&str>)) {
        let host = HostRow {
            name: "web".into(),
            repository: "fleet".into(),
            latest: Some(generation(3, None)),
            status: HostStatus { active_generation: Some(2), last_seen: Some(60), paused_at, ..HostStatus::default() },
            state,
            held_by: None,
            tags: vec![],
            delivery: None,
            last_build: Some(LastBuild {
                id: 12,
                commit_sha: "0123".into(),
                branch: "main".into(),
                state: "succeeded".into(),
                host_state: "succeeded".into(),
                verdict: Some("deployed".into()),
                generation: Some(3),
            }),
        };
        let line = host_line(&host);
        assert_eq!((line.state, line.tone, line.offline, line.paused, line.reason.as_deref()), expected);
        assert_eq!((line.desired, line.current, line.commit.as_deref()), (Some(3), Some(2), Some("0123456789ab")));
        assert_eq!((line.signer.as_deref(), line.last_build.as_deref()), (Some("alice"), Some("#12 deployed 3")));
        assert_eq!(line.last_seen.as_deref(), Some("1970-01-01 00:01:00"));
    }

    #[test]
    fn fleet_lines() {
        let rolled_back = Outcome::RolledBack { reason: Some("health check failed".into()) };
        check(Some(HostState::Generation(Outcome::Confirmed)), None, ("confirmed", Tone::Ok, false, false, None));
        check(
            Some(HostState::Generation(rolled_back)),
            None,
            ("rolled_back", Tone::Bad, false, false, Some("health check failed")),
        );
        check(Some(HostState::Offline), None, ("offline", Tone::Bad, true, false, None));
        check(Some(HostState::Paused), Some(5), ("paused", Tone::Busy, false, true, None));
        let held = ("held", Tone::Busy, false, false, Some("waits for its wave of rollout 4"));
        check(Some(HostState::Held { rollout: 4 }), None, held);
        check(None, None, ("never_seen", Tone::Idle, false, false, None));
    }

    #[test]
    fn history_lines_carry_their_own_reports_oldest_first() {
        let report = |generation, phase: &str, created_at| ReportRow {
            generation,
            phase: phase.into(),
            message: Some(String::new()),
            log_tail: Some(format!("{phase} output")),
            duration_ms: Some(1500),
            profile_generation: None,
            created_at,
        };
        let reports = [report(2, "confirmed", 30), report(2, "activating", 20), report(1, "confirmed", 10)];
        let diffs = [(2, Some(1), crate::deploy::diff::ClosureDiff::default())];
        let lines = history(
            &[generation(2, Some(Outcome::Confirmed)), generation(1, Some(Outcome::Superseded))],
            &reports,
            &diffs,
        );
        assert_eq!(lines[0].diff.as_ref().map(|d| d.from.as_str()), Some("generation 1"));
        assert_eq!(lines[1].diff, None, "generation 1 has no stored diff");
        assert_eq!(lines[0].log.iter().map(|e| e.phase.as_str()).collect::<Vec<_>>(), ["activating", "confirmed"]);
        assert_eq!(lines[0].log[0].took.as_deref(), Some("1.5 s"));
        assert_eq!(lines[0].log[0].message, None, "an empty message is no message");
        assert_eq!((lines[0].outcome, lines[0].tone), ("confirmed", Tone::Ok));
        assert_eq!((lines[1].outcome, lines[1].tone, lines[1].log.len()), ("superseded", Tone::Idle, 1));
    }

    #[test]
    fn rollout_lines_name_the_halt_and_each_wave() {
        use crate::db::{RolloutHostRow, RolloutRow};
        use crate::deploy::{rollout::RolloutState, rollouts::RolloutView};
        let host = |host: &str, wave: i64, generation: Option<i64>, held: bool, waived: bool| RolloutHostRow {
            host: host.into(),
            wave,
            waived,
            generation,
            held,
            last_seen: None,
            newest_released: None,
        };
        let row = |state: RolloutState| RolloutRow {
            id: 7,
            repository: "fleet".into(),
            branch: "main".into(),
            commit_sha: "3f9c".repeat(10),
            build_id: Some(4),
            state,
            wave: 0,
            waves: 2,
            released_at: None,
            settled_at: None,
            halted_host: Some("alpha".into()),
            reason: Some("rolled back: boom".into()),
            created_at: 0,
            updated_at: 0,
        };
        let hosts = vec![
            host("alpha", 0, Some(3), false, false),
            host("beta", 1, Some(3), true, false),
            host("gamma", 1, None, false, false),
            host("delta", 0, Some(3), false, true),
            host("stray", 9, Some(3), false, false),
        ];
        let line = rollout_line(&RolloutView { rollout: row(RolloutState::Halted), hosts: hosts.clone() });
        assert_eq!((line.state, line.tone, line.wave.as_str()), ("halted", Tone::Bad, "wave 1/2"));
        assert_eq!(line.reason.as_deref(), Some("halted by alpha: rolled back: boom"));
        assert_eq!(
            line.waves,
            [
                vec!["alpha (released)".to_owned(), "delta (failure accepted)".to_owned()],
                vec!["beta (held)".to_owned(), "gamma (waiting for its build)".to_owned()],
            ]
        );
        assert!(line.may_resume && line.may_abort);
        let aborted = rollout_line(&RolloutView { rollout: row(RolloutState::Aborted), hosts });
        assert_eq!(aborted.reason.as_deref(), Some("rolled back: boom"), "not a halt any longer");
        assert!(!aborted.may_resume && !aborted.may_abort);
        let mut empty = row(RolloutState::Completed);
        empty.waves = 0;
        let line = rollout_line(&RolloutView { rollout: empty, hosts: vec![] });
        assert_eq!((line.wave.as_str(), line.tone, line.waves.len()), ("wave 1/1", Tone::Ok, 0));
    }

    #[test]
    fn build_lines() {
        let row = BuildRow {
            id: 4,
            repository: "fleet".into(),
            commit_sha: "f".repeat(40),
            branch: "main".into(),
            hosts: String::new(),
            state: "running".into(),
            reason: None,
            signature: None,
            history_base: None,
            created_at: 0,
            started_at: Some(100),
            finished_at: None,
            attempts: 1,
        };
        let line = build_line(&row, 142);
        assert_eq!((line.tone, line.took.as_deref(), line.commit.len()), (Tone::Busy, Some("42 s"), 12));
        let done = build_line(&BuildRow { state: "failed".into(), finished_at: Some(110), ..row.clone() }, 142);
        assert_eq!((done.tone, done.took.as_deref()), (Tone::Bad, Some("10 s")));
        let queued = build_line(&BuildRow { state: "queued".into(), started_at: None, ..row }, 142);
        assert_eq!(queued.took, None);
    }
}
