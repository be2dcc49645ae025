//! PURE: which commit status an event means. `berth/build` follows a build (pending when a
//! worker starts it, then success or failure); `berth/deploy/<host>` follows each host's
//! generation (pending while it waits and activates, success when confirmed, failure when
//! rolled back or failed, with the host's reason); or, aggregated, one `berth/deploy` for
//! all the build's hosts ("7/8 hosts confirmed, beta rolled back: …").

use serde::Serialize;

use crate::{
    auth::valid_host_name,
    deploy::{
        diff::ClosureDiff,
        status::{Outcome, Phase},
    },
    events::{Event, GenerationRef},
};

/// The longest description forges keep, in characters (GitHub's limit; Forgejo and Gitea
/// keep more, but the same text everywhere is simpler to read).
pub const MAX_DESCRIPTION_CHARS: usize = 140;

/// A status's state, as every supported forge spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not settled yet.
    Pending,
    /// It worked.
    Success,
    /// It did not.
    Failure,
}

impl State {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Success => "success",
            State::Failure => "failure",
        }
    }
}

/// One commit status to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatus {
    /// `berth/build`, `berth/deploy/<host>` or `berth/deploy`.
    pub context: String,
    /// Its state.
    pub state: State,
    /// One line, at most [`MAX_DESCRIPTION_CHARS`] characters.
    pub description: String,
}

/// The context of the build's status.
pub const BUILD_CONTEXT: &str = "berth/build";
/// The context of the aggregated deploy status.
pub const DEPLOY_CONTEXT: &str = "berth/deploy";
/// The context of a staged rollout's status.
pub const ROLLOUT_CONTEXT: &str = "berth/rollout";

/// `berth/deploy/<host>`, for a valid host name only (it becomes part of a label forges
/// show and search).
pub fn deploy_context(host: &str) -> Option<String> {
    valid_host_name(host).then(|| format!("{DEPLOY_CONTEXT}/{host}"))
}

/// `text` on one line, at most [`MAX_DESCRIPTION_CHARS`] characters (cut at a character,
/// never inside one, with `…` when cut).
pub fn description(text: &str) -> String {
    let line: String = text
        .split(['\n', '\r'])
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if line.chars().count() <= MAX_DESCRIPTION_CHARS {
        return line;
    }
    let mut cut: String = line.chars().take(MAX_DESCRIPTION_CHARS - 1).collect();
    cut.push('…');
    cut
}

fn status(context: String, state: State, text: &str) -> CommitStatus {
    CommitStatus { context, state, description: description(text) }
}

/// The `berth/build` status a build event means.
pub fn of_build(event: &Event) -> Option<CommitStatus> {
    let (state, text) = match event {
        Event::BuildStarted { build } => (State::Pending, format!("building {}", build.branch)),
        Event::BuildSucceeded { summary, .. } => (State::Success, summary.clone()),
        Event::BuildFailed { reason, .. } => (State::Failure, reason.clone()),
        _ => return None,
    };
    Some(status(BUILD_CONTEXT.into(), state, &text))
}

/// The `berth/deploy/<host>` status a generation event means, with the generation's stored
/// closure diff in short when it has one (`generation 2 confirmed (+1 -0 ~2 packages, 3.1 MiB
/// to download)`; before the reason of a failure, which the length limit may clip).
pub fn of_generation(event: &Event, diff: Option<&ClosureDiff>) -> Option<CommitStatus> {
    let changes = diff.map_or_else(String::new, |d| format!(" ({})", d.short()));
    let (g, state, text): (&GenerationRef, _, String) = match event {
        Event::GenerationCreated { generation: g } => {
            (g, State::Pending, format!("generation {} waiting for {}{changes}", g.number, g.host))
        }
        Event::GenerationActivating { generation: g, phase, message } => {
            let doing = if *phase == Phase::Downloading { "downloading" } else { "activating" };
            (g, State::Pending, with_reason(&format!("{doing} generation {}{changes}", g.number), message.as_deref()))
        }
        Event::GenerationConfirmed { generation: g } => {
            (g, State::Success, format!("generation {} confirmed{changes}", g.number))
        }
        Event::GenerationRolledBack { generation: g, reason } => (
            g,
            State::Failure,
            with_reason(&format!("generation {} rolled back{changes}", g.number), reason.as_deref()),
        ),
        Event::GenerationFailed { generation: g, reason } => {
            (g, State::Failure, with_reason(&format!("generation {} failed{changes}", g.number), reason.as_deref()))
        }
        _ => return None,
    };
    Some(status(deploy_context(&g.host)?, state, &text))
}

/// The `berth/rollout` status a rollout event means: failure when it halted (the wave, the
/// host and why), success when it completed.
pub fn of_rollout(event: &Event) -> Option<CommitStatus> {
    let (state, text) = match event {
        Event::RolloutHalted { rollout, wave, host, reason } => (
            State::Failure,
            with_reason(&format!("rollout {} halted at wave {wave} by {host}", rollout.id), Some(reason)),
        ),
        Event::RolloutCompleted { rollout } => (State::Success, format!("rollout {} completed", rollout.id)),
        _ => return None,
    };
    Some(status(ROLLOUT_CONTEXT.into(), state, &text))
}

fn with_reason(what: &str, reason: Option<&str>) -> String {
    match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(reason) => format!("{what}: {reason}"),
        None => what.to_owned(),
    }
}

/// One `berth/deploy` for the hosts of a build, each with its generation's outcome (by
/// name): failure once any host rolled back or failed, success once every host confirmed,
/// pending otherwise. The text counts the confirmed and names the failed first.
pub fn aggregate(hosts: &[(String, Outcome)]) -> CommitStatus {
    let confirmed = hosts.iter().filter(|(_, o)| *o == Outcome::Confirmed).count();
    let failed: Vec<String> = hosts
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::RolledBack { .. } | Outcome::Failed { .. }))
        .map(|(host, o)| {
            let what = if matches!(o, Outcome::RolledBack { .. }) { "rolled back" } else { "failed" };
            with_reason(&format!("{host} {what}"), o.reason())
        })
        .collect();
    let state = match (failed.is_empty(), confirmed == hosts.len()) {
        (false, _) => State::Failure,
        (true, true) => State::Success,
        (true, false) => State::Pending,
    };
    let mut text = format!("{confirmed}/{} hosts confirmed", hosts.len());
    if !failed.is_empty() {
        text = format!("{text}, {}", failed.join(", "));
    }
    status(DEPLOY_CONTEXT.into(), state, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::BuildRef;

    fn build() -> BuildRef {
        BuildRef { id: 4, repository: "fleet".into(), commit: "c".repeat(40), branch: "main".into() }
    }

    fn generation(host: &str) -> GenerationRef {
        GenerationRef { host: host.into(), number: 2, commit: "c".repeat(40), branch: "main".into(), build_id: Some(4) }
    }

    #[track_caller]
    fn check(event: Event, expected: Option<(&str, State, &str)>) {
        let got = of_build(&event).or_else(|| of_generation(&event, None)).or_else(|| of_rollout(&event));
        let got = got.as_ref().map(|s| (s.context.as_str(), s.state, s.description.as_str()));
        assert_eq!(got, expected, "{event:?}");
    }

    #[test]
    fn a_halted_rollout_fails_its_status_and_a_completed_one_passes() {
        let rollout = || crate::events::RolloutRef {
            id: 3,
            repository: "fleet".into(),
            branch: "main".into(),
            commit: "c".repeat(40),
            build_id: Some(4),
        };
        check(
            Event::RolloutHalted {
                rollout: rollout(),
                wave: 1,
                host: "alpha".into(),
                reason: "rolled back: boom".into(),
            },
            Some(("berth/rollout", State::Failure, "rollout 3 halted at wave 1 by alpha: rolled back: boom")),
        );
        let long = "ü".repeat(300);
        let halted = Event::RolloutHalted { rollout: rollout(), wave: 2, host: "beta".into(), reason: long };
        assert_eq!(of_rollout(&halted).unwrap().description.chars().count(), MAX_DESCRIPTION_CHARS);
        check(
            Event::RolloutCompleted { rollout: rollout() },
            Some(("berth/rollout", State::Success, "rollout 3 completed")),
        );
    }

    #[test]
    fn events_become_statuses() {
        check(Event::BuildStarted { build: build() }, Some(("berth/build", State::Pending, "building main")));
        let summary = "built 2 host(s); new generations: alpha#2, beta#2".to_owned();
        check(
            Event::BuildSucceeded { build: build(), summary: summary.clone() },
            Some(("berth/build", State::Success, &summary)),
        );
        check(
            Event::BuildFailed { build: build(), reason: "1 of 2 hosts failed: beta\nlog…".into() },
            Some(("berth/build", State::Failure, "1 of 2 hosts failed: beta")),
        );
        let g = generation("beta");
        check(
            Event::GenerationCreated { generation: g.clone() },
            Some(("berth/deploy/beta", State::Pending, "generation 2 waiting for beta")),
        );
        check(
            Event::GenerationActivating { generation: g.clone(), phase: Phase::Activating, message: None },
            Some(("berth/deploy/beta", State::Pending, "activating generation 2")),
        );
        check(
            Event::GenerationConfirmed { generation: g.clone() },
            Some(("berth/deploy/beta", State::Success, "generation 2 confirmed")),
        );
        check(
            Event::GenerationRolledBack { generation: g.clone(), reason: Some("health check curl failed".into()) },
            Some(("berth/deploy/beta", State::Failure, "generation 2 rolled back: health check curl failed")),
        );
        check(
            Event::GenerationFailed { generation: g, reason: None },
            Some(("berth/deploy/beta", State::Failure, "generation 2 failed")),
        );
        check(Event::HostBack { host: "beta".into() }, None);
        check(Event::GenerationConfirmed { generation: generation("no/such host") }, None);
    }

    /// A stored diff in short after the generation, before a failure's reason; a long
    /// reason is clipped at a character, the diff kept.
    #[test]
    fn generation_statuses_carry_the_diff() {
        let diff = ClosureDiff {
            added: vec!["nginx-1.24.0".into()],
            download_bytes: 3 * 1024 * 1024,
            reboot_for: vec!["linux".into()],
            ..ClosureDiff::default()
        };
        let g = generation("beta");
        let text = |event: &Event| of_generation(event, Some(&diff)).unwrap().description;
        let created = text(&Event::GenerationCreated { generation: g.clone() });
        assert_eq!(created, "generation 2 waiting for beta (+1 -0 ~0 packages, 3.0 MiB to download, reboot)");
        let confirmed = text(&Event::GenerationConfirmed { generation: g.clone() });
        assert_eq!(confirmed, "generation 2 confirmed (+1 -0 ~0 packages, 3.0 MiB to download, reboot)");
        let why = format!("unit nginx.service: {}", "é".repeat(200));
        let rolled = text(&Event::GenerationRolledBack { generation: g, reason: Some(why) });
        assert!(rolled.starts_with("generation 2 rolled back (+1 -0 ~0 packages, 3.0 MiB to download, reboot): unit"));
        assert!(rolled.ends_with("é…") && rolled.chars().count() == MAX_DESCRIPTION_CHARS, "{rolled}");
    }

    #[test]
    fn descriptions_fit_at_a_character_boundary() {
        assert_eq!(description("  two\nlines "), "two");
        assert_eq!(description("\n\nsecond"), "second");
        assert_eq!(description("tab\there\u{7}"), "tabhere");
        let long = "€".repeat(200);
        let cut = description(&long);
        assert_eq!(cut.chars().count(), MAX_DESCRIPTION_CHARS);
        assert!(cut.ends_with("€…"), "{cut}");
        let exact = "😀".repeat(MAX_DESCRIPTION_CHARS);
        assert_eq!(description(&exact), exact);
    }

    #[track_caller]
    fn check_aggregate(hosts: &[(&str, Outcome)], state: State, text: &str) {
        let hosts: Vec<(String, Outcome)> = hosts.iter().map(|(h, o)| ((*h).to_owned(), o.clone())).collect();
        let got = aggregate(&hosts);
        assert_eq!((got.context.as_str(), got.state, got.description.as_str()), ("berth/deploy", state, text));
    }

    #[test]
    fn aggregation() {
        use Outcome::*;
        let rolled = RolledBack { reason: Some("health check failed".into()) };
        check_aggregate(&[("a", Confirmed), ("b", Confirmed)], State::Success, "2/2 hosts confirmed");
        check_aggregate(&[("a", Confirmed), ("b", Waiting)], State::Pending, "1/2 hosts confirmed");
        check_aggregate(
            &[("a", Confirmed), ("beta", rolled), ("c", InProgress { phase: Phase::Activating })],
            State::Failure,
            "1/3 hosts confirmed, beta rolled back: health check failed",
        );
        check_aggregate(&[("a", Failed { reason: None })], State::Failure, "0/1 hosts confirmed, a failed");
        let many: Vec<(String, Outcome)> =
            (0..40).map(|i| (format!("host{i}"), Failed { reason: Some("x".repeat(30)) })).collect();
        assert_eq!(aggregate(&many).description.chars().count(), MAX_DESCRIPTION_CHARS);
    }
}
