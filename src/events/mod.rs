//! The fleet's events — a build ended, a host confirmed or gave up a generation, a host went
//! offline or came back, a collection finished — as one typed [`Event`], published on one
//! in-process [`Bus`] that the event stream (`GET /api/v1/events`), the forge statuses
//! (`forge/`) and the notifications (`notify/`) each subscribe to. Publishing never waits:
//! the bus holds the last [`CAPACITY`] events, and a subscriber that falls further behind
//! loses the oldest (it is told how many) instead of slowing the build or the report.

pub mod offline;

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::{
    db::{BuildRow, GenerationRow},
    deploy::status::Phase,
};

/// Events kept for subscribers that have not read them yet.
pub const CAPACITY: usize = 1024;

/// The build an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildRef {
    /// Build id.
    pub id: i64,
    /// Repository name.
    pub repository: String,
    /// Full commit hash.
    pub commit: String,
    /// Branch.
    pub branch: String,
}

impl From<&BuildRow> for BuildRef {
    fn from(b: &BuildRow) -> Self {
        Self { id: b.id, repository: b.repository.clone(), commit: b.commit_sha.clone(), branch: b.branch.clone() }
    }
}

/// The generation an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenerationRef {
    /// Host name.
    pub host: String,
    /// Its number on that host.
    pub number: i64,
    /// The commit it was built from.
    pub commit: String,
    /// The branch that deployed it (`rollback-to-N` and `redeploy-N` for an admin's).
    pub branch: String,
    /// The build that made it (none for a rollback or redeploy).
    pub build_id: Option<i64>,
}

impl From<&GenerationRow> for GenerationRef {
    fn from(g: &GenerationRow) -> Self {
        Self {
            host: g.host.clone(),
            number: g.number,
            commit: g.commit_sha.clone(),
            branch: g.branch.clone(),
            build_id: g.build_id,
        }
    }
}

impl GenerationRef {
    /// The generation `number` just made from `g`.
    pub fn of_new(g: &crate::db::NewGeneration<'_>, number: i64) -> Self {
        Self {
            host: g.host.to_owned(),
            number,
            commit: g.commit_sha.to_owned(),
            branch: g.branch.to_owned(),
            build_id: g.build_id,
        }
    }
}

/// The staged rollout an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutRef {
    /// Rollout id.
    pub id: i64,
    /// Repository name.
    pub repository: String,
    /// The deploy branch.
    pub branch: String,
    /// The commit it rolls out.
    pub commit: String,
    /// The build that made its generations.
    pub build_id: Option<i64>,
}

impl From<&crate::db::RolloutRow> for RolloutRef {
    fn from(r: &crate::db::RolloutRow) -> Self {
        Self {
            id: r.id,
            repository: r.repository.clone(),
            branch: r.branch.clone(),
            commit: r.commit_sha.clone(),
            build_id: r.build_id,
        }
    }
}

/// Something that happened in the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A worker started a build.
    BuildStarted {
        /// The build.
        build: BuildRef,
    },
    /// A build ended well.
    BuildSucceeded {
        /// The build.
        build: BuildRef,
        /// What it built and deployed.
        summary: String,
    },
    /// A build failed (or was cancelled).
    BuildFailed {
        /// The build.
        build: BuildRef,
        /// Why.
        reason: String,
    },
    /// A build made a new generation for a host.
    GenerationCreated {
        /// The generation.
        generation: GenerationRef,
    },
    /// The host is downloading or activating the generation.
    GenerationActivating {
        /// The generation.
        generation: GenerationRef,
        /// `downloading` or `activating`.
        phase: Phase,
        /// The host's one-line message.
        message: Option<String>,
    },
    /// The host confirmed the generation.
    GenerationConfirmed {
        /// The generation.
        generation: GenerationRef,
    },
    /// The generation failed on the host, which went back to what it ran before.
    GenerationRolledBack {
        /// The generation.
        generation: GenerationRef,
        /// The host's reason.
        reason: Option<String>,
    },
    /// The generation failed with no way back (or could not be realised).
    GenerationFailed {
        /// The generation.
        generation: GenerationRef,
        /// The host's reason.
        reason: Option<String>,
    },
    /// A host stopped asking for its manifest (`[deploy] offline_after_secs`).
    HostOffline {
        /// Host name.
        host: String,
        /// When it was last seen (Unix seconds).
        last_seen: i64,
    },
    /// An offline host asked again.
    HostBack {
        /// Host name.
        host: String,
    },
    /// A host of a rollout's wave rolled back or failed: the rollout stopped, the hosts of
    /// later waves keep their generation (`berth rollout resume|abort`).
    RolloutHalted {
        /// The rollout.
        rollout: RolloutRef,
        /// The wave it stopped in, from 1.
        wave: i64,
        /// The host that halted it.
        host: String,
        /// Why.
        reason: String,
    },
    /// Every wave of a rollout was released and settled.
    RolloutCompleted {
        /// The rollout.
        rollout: RolloutRef,
    },
    /// A deploy key in service expires within `[keys] warn_days` (or has expired).
    KeyExpiring {
        /// The key (public half, Nix format).
        key: String,
        /// `current` or `next`.
        state: String,
        /// When it expires (Unix seconds).
        expires_at: i64,
    },
    /// A garbage collection finished (not a dry run).
    CollectionFinished {
        /// Generations dropped.
        generations_dropped: usize,
        /// Store paths deleted.
        paths_deleted: usize,
        /// Bytes of NAR files freed.
        bytes_freed: u64,
    },
}

/// The kinds of [`Event`], as `[[notify]] events` and the stream name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// [`Event::BuildStarted`].
    BuildStarted,
    /// [`Event::BuildSucceeded`].
    BuildSucceeded,
    /// [`Event::BuildFailed`].
    BuildFailed,
    /// [`Event::GenerationCreated`].
    GenerationCreated,
    /// [`Event::GenerationActivating`].
    GenerationActivating,
    /// [`Event::GenerationConfirmed`].
    GenerationConfirmed,
    /// [`Event::GenerationRolledBack`].
    GenerationRolledBack,
    /// [`Event::GenerationFailed`].
    GenerationFailed,
    /// [`Event::HostOffline`].
    HostOffline,
    /// [`Event::HostBack`].
    HostBack,
    /// [`Event::CollectionFinished`].
    CollectionFinished,
    /// [`Event::KeyExpiring`].
    KeyExpiring,
    /// [`Event::RolloutHalted`].
    RolloutHalted,
    /// [`Event::RolloutCompleted`].
    RolloutCompleted,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 14] = [
        Kind::BuildStarted,
        Kind::BuildSucceeded,
        Kind::BuildFailed,
        Kind::GenerationCreated,
        Kind::GenerationActivating,
        Kind::GenerationConfirmed,
        Kind::GenerationRolledBack,
        Kind::GenerationFailed,
        Kind::HostOffline,
        Kind::HostBack,
        Kind::CollectionFinished,
        Kind::KeyExpiring,
        Kind::RolloutHalted,
        Kind::RolloutCompleted,
    ];

    /// The name in configuration, payloads and the stream.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::BuildStarted => "build_started",
            Kind::BuildSucceeded => "build_succeeded",
            Kind::BuildFailed => "build_failed",
            Kind::GenerationCreated => "generation_created",
            Kind::GenerationActivating => "generation_activating",
            Kind::GenerationConfirmed => "generation_confirmed",
            Kind::GenerationRolledBack => "generation_rolled_back",
            Kind::GenerationFailed => "generation_failed",
            Kind::HostOffline => "host_offline",
            Kind::HostBack => "host_back",
            Kind::CollectionFinished => "collection_finished",
            Kind::KeyExpiring => "key_expiring",
            Kind::RolloutHalted => "rollout_halted",
            Kind::RolloutCompleted => "rollout_completed",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl Event {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Event::BuildStarted { .. } => Kind::BuildStarted,
            Event::BuildSucceeded { .. } => Kind::BuildSucceeded,
            Event::BuildFailed { .. } => Kind::BuildFailed,
            Event::GenerationCreated { .. } => Kind::GenerationCreated,
            Event::GenerationActivating { .. } => Kind::GenerationActivating,
            Event::GenerationConfirmed { .. } => Kind::GenerationConfirmed,
            Event::GenerationRolledBack { .. } => Kind::GenerationRolledBack,
            Event::GenerationFailed { .. } => Kind::GenerationFailed,
            Event::HostOffline { .. } => Kind::HostOffline,
            Event::HostBack { .. } => Kind::HostBack,
            Event::CollectionFinished { .. } => Kind::CollectionFinished,
            Event::KeyExpiring { .. } => Kind::KeyExpiring,
            Event::RolloutHalted { .. } => Kind::RolloutHalted,
            Event::RolloutCompleted { .. } => Kind::RolloutCompleted,
        }
    }

    /// The event a host's report of `phase` for `generation` is, if any (`healthy` and
    /// `needs_reboot` are steps within a deploy, not news).
    pub fn of_report(generation: &GenerationRow, phase: Phase, message: Option<&str>) -> Option<Event> {
        let generation = GenerationRef::from(generation);
        let message = message.map(str::to_owned);
        Some(match phase {
            Phase::Downloading | Phase::Activating => Event::GenerationActivating { generation, phase, message },
            Phase::Confirmed => Event::GenerationConfirmed { generation },
            Phase::RolledBack => Event::GenerationRolledBack { generation, reason: message },
            Phase::Failed => Event::GenerationFailed { generation, reason: message },
            Phase::Healthy | Phase::NeedsReboot => return None,
        })
    }

    /// The event a collection is (none for a dry run: nothing happened).
    pub fn of_collection(report: &crate::gc::GcReport) -> Option<Event> {
        (!report.dry_run).then_some(Event::CollectionFinished {
            generations_dropped: report.dropped_generations.len(),
            paths_deleted: report.paths_deleted,
            bytes_freed: report.bytes_freed,
        })
    }

    /// The event a build's end is.
    pub fn of_build_end(build: &BuildRow, succeeded: bool, reason: &str) -> Event {
        let build = BuildRef::from(build);
        match succeeded {
            true => Event::BuildSucceeded { build, summary: reason.to_owned() },
            false => Event::BuildFailed { build, reason: reason.to_owned() },
        }
    }
}

/// An event as subscribers receive it: numbered in this process, with its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Envelope {
    /// Increasing within one run of the server.
    pub id: u64,
    /// When it happened (Unix seconds).
    pub at: i64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// Where events are published; every subscriber sees each one (or learns it missed some).
pub struct Bus {
    sender: broadcast::Sender<std::sync::Arc<Envelope>>,
    next: AtomicU64,
    /// Cancelled when the server stops: streams end, so connections can close.
    closing: tokio_util::sync::CancellationToken,
}

impl Default for Bus {
    fn default() -> Self {
        Self { sender: broadcast::channel(CAPACITY).0, next: AtomicU64::new(1), closing: Default::default() }
    }
}

impl Bus {
    /// Publishes `event` now; never waits.
    pub fn publish(&self, event: Event) {
        let envelope = Envelope { id: self.next.fetch_add(1, Ordering::Relaxed), at: crate::db::now(), event };
        tracing::debug!(kind = envelope.event.kind().as_str(), id = envelope.id, "event");
        if self.sender.send(std::sync::Arc::new(envelope)).is_err() {
            // Nobody subscribes (no stream client, no forge, no notification): nothing to do.
            tracing::trace!("event with no subscriber");
        }
    }

    /// Publishes the event `event` is, if it is one.
    pub fn publish_some(&self, event: Option<Event>) {
        if let Some(event) = event {
            self.publish(event);
        }
    }

    /// Ends every stream (the server is stopping).
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Cancelled once [`Bus::close`] was called.
    pub fn closing(&self) -> tokio_util::sync::CancellationToken {
        self.closing.clone()
    }

    /// A new subscription, starting with the next event.
    pub fn subscribe(&self) -> broadcast::Receiver<std::sync::Arc<Envelope>> {
        self.sender.subscribe()
    }
}

/// The next event for a background subscriber (`who`: forge statuses, notifications), or
/// `None` once `stop` fires or the bus is gone. Falling behind is logged with how many events
/// `who` missed, and the subscriber goes on with the next one.
pub async fn next(
    events: &mut broadcast::Receiver<std::sync::Arc<Envelope>>,
    stop: &tokio_util::sync::CancellationToken,
    who: &str,
) -> Option<std::sync::Arc<Envelope>> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            next = events.recv() => match next {
                Ok(envelope) => return Some(envelope),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::error!(missed, "{who} fell behind the events; some were not sent");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation() -> GenerationRow {
        GenerationRow {
            host: "beta".into(),
            number: 3,
            store_path: "/nix/store/x".into(),
            commit_sha: "c".repeat(40),
            branch: "main".into(),
            build_id: Some(7),
            created_at: 0,
            signer: None,
            outcome: None,
            profile_generation: None,
        }
    }

    #[track_caller]
    fn check(phase: Phase, message: Option<&str>, expected: Option<Kind>) {
        assert_eq!(Event::of_report(&generation(), phase, message).map(|e| e.kind()), expected, "{phase:?}");
    }

    #[test]
    fn reports_become_events() {
        check(Phase::Downloading, None, Some(Kind::GenerationActivating));
        check(Phase::Activating, Some("switching"), Some(Kind::GenerationActivating));
        check(Phase::Healthy, None, None);
        check(Phase::Confirmed, None, Some(Kind::GenerationConfirmed));
        check(Phase::RolledBack, Some("health check failed"), Some(Kind::GenerationRolledBack));
        check(Phase::Failed, None, Some(Kind::GenerationFailed));
        check(Phase::NeedsReboot, None, None);
        assert_eq!(Kind::ALL.map(|k| Kind::parse(k.as_str())), Kind::ALL.map(Some));
    }

    #[test]
    fn payloads_are_flat_and_tagged() {
        let e = Event::of_report(&generation(), Phase::RolledBack, Some("boom")).unwrap();
        let json = serde_json::to_value(Envelope { id: 5, at: 100, event: e }).unwrap();
        insta::assert_snapshot!(json.to_string(), @r#"{"at":100,"generation":{"branch":"main","build_id":7,"commit":"cccccccccccccccccccccccccccccccccccccccc","host":"beta","number":3},"id":5,"kind":"generation_rolled_back","reason":"boom"}"#);
    }

    fn rollout() -> RolloutRef {
        RolloutRef {
            id: 3,
            repository: "fleet".into(),
            branch: "main".into(),
            commit: "9f2c".repeat(10),
            build_id: Some(42),
        }
    }

    /// One example of each kind, as docs/forge.md shows them.
    fn examples() -> Vec<Event> {
        let build = BuildRef { id: 42, repository: "fleet".into(), commit: "9f2c".repeat(10), branch: "main".into() };
        let g = |host: &str| GenerationRef {
            host: host.into(),
            number: 7,
            commit: "9f2c".repeat(10),
            branch: "main".into(),
            build_id: Some(42),
        };
        vec![
            Event::BuildStarted { build: build.clone() },
            Event::BuildSucceeded {
                build: build.clone(),
                summary: "built 2 host(s); new generations: alpha#7, beta#7".into(),
            },
            Event::BuildFailed { build, reason: "1 of 2 hosts failed: beta".into() },
            Event::GenerationCreated { generation: g("alpha") },
            Event::GenerationActivating { generation: g("alpha"), phase: Phase::Activating, message: None },
            Event::GenerationConfirmed { generation: g("alpha") },
            Event::GenerationRolledBack {
                generation: g("beta"),
                reason: Some("health check curl -f localhost failed".into()),
            },
            Event::GenerationFailed { generation: g("beta"), reason: Some("realising the system: HTTP 404".into()) },
            Event::HostOffline { host: "beta".into(), last_seen: 1_764_763_200 },
            Event::HostBack { host: "beta".into() },
            Event::CollectionFinished { generations_dropped: 3, paths_deleted: 120, bytes_freed: 734_003_200 },
            Event::KeyExpiring {
                key: "berth.example.org-deploy-1:FewZ2bXNKIoLJXB/7hYyOT7hDKcTNIg393t1Z8BAF3c=".into(),
                state: "current".into(),
                expires_at: 1_765_972_800,
            },
            Event::RolloutHalted {
                rollout: rollout(),
                wave: 1,
                host: "alpha".into(),
                reason: "rolled back: health check curl -f localhost failed".into(),
            },
            Event::RolloutCompleted { rollout: rollout() },
        ]
    }

    #[test]
    fn the_documented_payloads_are_the_real_ones() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/forge.md")).unwrap();
        let examples = examples();
        assert_eq!(examples.iter().map(Event::kind).collect::<Vec<_>>(), Kind::ALL, "one example of each kind");
        let missing: Vec<String> = examples
            .into_iter()
            .enumerate()
            .map(|(n, event)| serde_json::to_string(&Envelope { id: n as u64 + 1, at: 1_764_763_395, event }).unwrap())
            .filter(|json| !doc.contains(json.as_str()))
            .collect();
        assert!(missing.is_empty(), "docs/forge.md lacks these payloads:\n{}", missing.join("\n"));
    }

    #[tokio::test]
    async fn a_slow_subscriber_learns_what_it_missed() {
        let bus = Bus::default();
        let mut slow = bus.subscribe();
        for _ in 0..CAPACITY + 3 {
            bus.publish(Event::HostBack { host: "a".into() });
        }
        assert!(matches!(slow.recv().await, Err(broadcast::error::RecvError::Lagged(3))));
        assert_eq!(slow.recv().await.unwrap().id, 4);
    }
}
