//! PURE: the timeline of a push deploy, as berth drives it and as the host settles it.
//!
//! berth's side ([`next`]): copy the closure, activate `test`, confirm over a fresh
//! connection within the deadline, then `boot`. Any failure before the confirmation leaves
//! the host to roll back by itself.
//!
//! The host's side ([`settle`]): `berth-push test` writes a pending record (the system
//! under test, the previous system, the deadline) before it activates. When the deadline
//! passes without a `confirm` — berth lost, the network cut by the new system, a reboot in
//! between — the host re-activates the previous system. The record survives a reboot; a
//! oneshot unit settles it at boot, where an unconfirmed trial is over: the boot entry never
//! pointed at it, so the host already runs what it booted, and the record is dropped.

/// Where a push deploy stands, as berth sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `nix copy --to ssh-ng://…` running.
    Copying,
    /// `berth-push test` running on the host.
    Testing,
    /// The system is under test; berth opens a fresh connection to confirm.
    Confirming,
    /// `berth-push boot` running.
    Booting,
    /// Done: the host runs and boots the new system.
    Confirmed,
    /// The activation or the confirmation failed; the host went back to the previous system.
    RolledBack,
    /// The closure never reached the host; nothing changed there.
    Failed,
}

/// What the last step of a phase came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The step succeeded.
    Ok,
    /// The step failed (non-zero exit, refused, connection lost or timed out).
    Failed,
}

impl Phase {
    /// Whether the deploy is over.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Confirmed | Self::RolledBack | Self::Failed)
    }
}

/// The phase after `phase` ended with `outcome`. A failure while testing or confirming
/// is a rollback (the host re-activates the previous system, by itself if berth cannot
/// reach it); a failure of `boot` after the confirmation keeps the confirmed system running
/// and is reported as failed, the boot entry unchanged. Final phases stay.
pub fn next(phase: Phase, outcome: Outcome) -> Phase {
    use Outcome::{Failed as F, Ok as O};
    match (phase, outcome) {
        (Phase::Copying, O) => Phase::Testing,
        (Phase::Copying, F) => Phase::Failed,
        (Phase::Testing, O) => Phase::Confirming,
        (Phase::Testing, F) => Phase::RolledBack,
        (Phase::Confirming, O) => Phase::Booting,
        (Phase::Confirming, F) => Phase::RolledBack,
        (Phase::Booting, O) => Phase::Confirmed,
        (Phase::Booting, F) => Phase::Failed,
        (done, _) => done,
    }
}

/// The host's record of a system under test (kept in a file on the host).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    /// The system activated with `test`.
    pub system: String,
    /// The system to go back to (`None`: the host ran no system berth could name).
    pub previous: Option<String>,
    /// Unix seconds after which an unconfirmed trial is rolled back.
    pub deadline: u64,
}

/// When the host looks at its pending record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// A timer or a command while the system runs, at this unix time.
    Running(u64),
    /// The boot-time settle.
    Boot,
}

/// What the host does with a pending record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Keep waiting for the confirmation.
    Wait,
    /// Re-activate the previous system and drop the record.
    RollBack,
    /// Drop the record without activating anything: the host rebooted into its boot entry,
    /// which the trial never touched.
    Discard,
}

/// Decides an unconfirmed trial: rolled back once its deadline passed; over at boot.
pub fn settle(pending: &Pending, when: When) -> Settle {
    match when {
        When::Running(now) if now < pending.deadline => Settle::Wait,
        When::Running(_) => Settle::RollBack,
        When::Boot => Settle::Discard,
    }
}

/// Whether a `confirm` of `system` settles the record: only the system under test, and only
/// before the deadline (a late confirm finds the host already rolled back).
pub fn confirms(pending: &Pending, system: &str, now: u64) -> bool {
    pending.system == system && now < pending.deadline
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases() {
        use Outcome::{Failed as F, Ok as O};
        let table = [
            (Phase::Copying, O, Phase::Testing),
            (Phase::Copying, F, Phase::Failed),
            (Phase::Testing, O, Phase::Confirming),
            (Phase::Testing, F, Phase::RolledBack),
            (Phase::Confirming, O, Phase::Booting),
            (Phase::Confirming, F, Phase::RolledBack),
            (Phase::Booting, O, Phase::Confirmed),
            (Phase::Booting, F, Phase::Failed),
            (Phase::Confirmed, F, Phase::Confirmed),
            (Phase::RolledBack, O, Phase::RolledBack),
            (Phase::Failed, O, Phase::Failed),
        ];
        for (phase, outcome, want) in table {
            assert_eq!(next(phase, outcome), want, "{phase:?} {outcome:?}");
        }
        let mut p = Phase::Copying;
        for _ in 0..4 {
            assert!(!p.is_final());
            p = next(p, Outcome::Ok);
        }
        assert_eq!(p, Phase::Confirmed);
        assert!(p.is_final());
    }

    #[test]
    fn settling() {
        let pending =
            Pending { system: "/nix/store/new".into(), previous: Some("/nix/store/old".into()), deadline: 100 };
        assert_eq!(settle(&pending, When::Running(0)), Settle::Wait);
        assert_eq!(settle(&pending, When::Running(99)), Settle::Wait);
        assert_eq!(settle(&pending, When::Running(100)), Settle::RollBack);
        assert_eq!(settle(&pending, When::Running(u64::MAX)), Settle::RollBack);
        assert_eq!(settle(&pending, When::Boot), Settle::Discard, "a reboot before the confirm ends the trial");
        assert!(confirms(&pending, "/nix/store/new", 99));
        assert!(!confirms(&pending, "/nix/store/new", 100), "late");
        assert!(!confirms(&pending, "/nix/store/old", 50), "another system");
    }
}
