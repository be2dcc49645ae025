//! The way back: rolling a failed deploy back to the previous generation, and settling a
//! deploy that a dead agent left pending (retry once, then roll back), without an operator.

use std::time::Instant;

use tracing::{error, warn};

use super::apply::{now, with_tail, Progress};
use super::plan::{self, NoPrevious, Resume};
use super::report::{LogTail, Phase, Report};
use super::state::{Ending, Pending, Settled};
use super::Agent;

impl Agent {
    /// Returns the host to what ran and booted before, after `why`; records the generation as settled
    /// (so it is not tried again; a newer one will be) and reports it.
    pub(super) async fn roll_back(
        &mut self,
        pending: &Pending,
        why: String,
        mut tail: LogTail,
        started: Instant,
    ) -> Settled {
        let generation = pending.generation;
        warn!(generation, "deploy failed, rolling back: {why}");
        let profile_now = match self.system.profile_target(&self.opts.profile) {
            Ok(target) => target,
            Err(e) => {
                // Unreadable: assume it moved, so that the rollback sets it again.
                warn!("cannot read the profile {}: {e}", self.opts.profile.display());
                Some(String::new())
            }
        };
        let (previous, running) = (pending.previous.as_deref(), pending.running.as_deref());
        let steps = plan::rollback(pending.activation, previous, running, profile_now.as_deref());
        let (ending, reason) = match steps {
            Err(NoPrevious) => (Ending::Failed, format!("{why}; there is no previous generation to return to")),
            Ok(steps) => match self.run_steps(&steps, &mut tail).await {
                Ok(()) => (Ending::RolledBack, why),
                Err(e) => (Ending::Failed, format!("{why}; rolling back failed too: {e}")),
            },
        };
        if ending == Ending::Failed {
            error!(generation, "{reason}");
        }
        let settled = Settled {
            generation,
            store_path: pending.store_path.clone(),
            ending,
            reason: Some(reason.clone()),
            at: now(),
        };
        self.state.settle(settled.clone());
        self.save_or_warn("a rollback");
        let phase = if ending == Ending::RolledBack { Phase::RolledBack } else { Phase::Failed };
        let mut report = with_tail(Report::new(generation, phase, &reason, Some(started)), &tail);
        report.active_generation =
            if ending == Ending::RolledBack { self.state.active_generation_of(running.or(previous)) } else { None };
        self.report(report).await;
        settled
    }

    /// Settles the `pending` record left by an agent that stopped mid-deploy. The profile still
    /// points at the previous generation unless the commit steps had begun, which the rollback
    /// steps take into account.
    pub(super) async fn resume(&mut self) -> Progress {
        let Some(mut pending) = self.state.pending.clone() else {
            return Progress::Retry("nothing pending".into());
        };
        let started = Instant::now();
        let generation = pending.generation;
        if plan::resume(pending.attempts) == Resume::RollBack {
            let why = format!("the agent stopped {} times while deploying generation {generation}", pending.attempts);
            return Progress::Settled(self.roll_back(&pending, why, LogTail::default(), started).await);
        }
        pending.attempts += 1;
        self.state.pending = Some(pending.clone());
        if let Err(e) = self.save() {
            // Without a durable count, a deploy that kills the agent could be retried forever.
            self.state.pending.as_mut().expect("just set").attempts -= 1;
            return Progress::Retry(format!("cannot record the retry of generation {generation}: {e}"));
        }
        warn!(generation, attempt = pending.attempts, "the agent stopped mid-deploy; trying it again");
        let mut tail = LogTail::default();
        if let Err(why) = self.realise(&pending.store_path, &mut tail).await {
            return Progress::Settled(self.roll_back(&pending, why.to_string(), tail, started).await);
        }
        Progress::Settled(self.activate(pending, tail, started).await)
    }
}
