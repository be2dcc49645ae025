//! One deploy, forward: realise the system, record it as pending, run the trial steps, check,
//! run the commit steps, confirm. Any failure after the pending record is written goes to
//! `recover.rs`, which returns the host to the previous generation.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::unbounded_channel;
use tracing::{info, warn};

use super::plan::{self, Step};
use super::report::{LogTail, Phase, Report};
use super::state::{Ending, Pending, Settled, GC_ROOT};
use super::{health, Agent};
use crate::deploy::manifest::Manifest;
use crate::nix::NixError;

/// How long realising a system from the cache may take.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where a deploy got to.
pub(super) enum Progress {
    /// It ended (confirmed, rolled back or failed) and is recorded.
    Settled(Settled),
    /// It could not go on now; nothing was touched; the same manifest is tried again later.
    Retry(String),
}

/// A system that could not be realised from the substituters.
#[derive(Debug, thiserror::Error)]
#[error("cannot realise {path} from the substituters: {source}")]
pub(super) struct RealiseError {
    path: String,
    source: NixError,
}

/// Seconds since the Unix epoch.
pub(super) fn now() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_secs().try_into().unwrap_or(i64::MAX))
}

impl Agent {
    /// Applies a verified manifest.
    pub(super) async fn deploy(&mut self, manifest: &Manifest) -> Progress {
        let started = Instant::now();
        let (generation, path) = (manifest.generation, manifest.store_path.as_str());
        // Who authorised what this host is about to run (none: the server did not say, or
        // its repository requires no signature).
        let signer = manifest.signer.as_deref().unwrap_or("none");
        info!(generation, path, commit = manifest.commit, branch = manifest.branch, signer, "new generation");
        // What the switch changes, before it happens (a server without diffs: said, not fatal).
        match self.server.diff(generation).await {
            Ok(view) => info!(generation, "closure: {}", view.diff),
            Err(e) => warn!(generation, "no closure diff from the server: {e}"),
        }
        self.report(Report::new(generation, Phase::Downloading, &format!("realising {path}"), Some(started))).await;
        let mut tail = LogTail::default();
        if let Err(why) = self.realise(path, &mut tail).await {
            return self.download_failed(generation, path, why.to_string(), tail, started).await;
        }
        let previous = match self.system.profile_target(&self.opts.profile) {
            Ok(previous) => previous,
            Err(e) => return Progress::Retry(format!("cannot read the profile {}: {e}", self.opts.profile.display())),
        };
        let pending = Pending {
            generation,
            store_path: path.into(),
            previous,
            running: self.system.current_system(),
            activation: self.opts.activation,
            attempts: 1,
            started_at: now(),
        };
        self.state.pending = Some(pending.clone());
        self.state.download_failures = None;
        if let Err(e) = self.save() {
            self.state.pending = None;
            return Progress::Retry(format!("cannot record the deploy before starting it: {e}"));
        }
        Progress::Settled(self.activate(pending, tail, started).await)
    }

    /// From the pending record on: trial, checks, commit, confirm (or roll back).
    pub(super) async fn activate(&mut self, pending: Pending, mut tail: LogTail, started: Instant) -> Settled {
        let (generation, path, mode) = (pending.generation, pending.store_path.as_str(), pending.activation);
        let mut message = format!("activating {path} ({} mode, attempt {})", mode.as_str(), pending.attempts);
        if let Some(would) = self.dry_activation(path, mode).await {
            info!(generation, "dry-activate: would {would}");
            message += &format!("; would {would}");
        }
        self.report(Report::new(generation, Phase::Activating, &message, Some(started))).await;
        let before = match self.opts.health.check_system_running {
            true => self.system.system_state().await.ok(),
            false => None,
        };
        let trial = plan::trial(mode, path);
        if let Err(why) = self.run_steps(&trial, &mut tail).await {
            return self.roll_back(&pending, why.to_string(), tail, started).await;
        }
        if !trial.is_empty() {
            let checked =
                health::check(&self.system, &self.server, &self.opts.health, before.as_deref(), &mut tail).await;
            if let Err(why) = checked {
                return self.roll_back(&pending, why.to_string(), tail, started).await;
            }
            self.report(with_tail(
                Report::new(generation, Phase::Healthy, "health checks passed", Some(started)),
                &tail,
            ))
            .await;
        }
        if let Err(why) = self.run_steps(&plan::commit(mode, path), &mut tail).await {
            return self.roll_back(&pending, why.to_string(), tail, started).await;
        }
        self.confirm(&pending, &tail, started).await
    }

    /// With `dry_activate`, what `switch-to-configuration dry-activate` says the switch would
    /// do to units (`boot` mode switches nothing now: not asked). A failure is logged, and the
    /// switch itself decides.
    async fn dry_activation(&self, path: &str, mode: super::Activation) -> Option<String> {
        if !self.opts.dry_activate || mode == super::Activation::Boot {
            return None;
        }
        let (tx, mut rx) = unbounded_channel();
        let action = crate::nix::system::SwitchAction::DryActivate;
        let result = self.system.switch_to_configuration(path, action, self.opts.activation_timeout, &tx).await;
        drop(tx);
        let mut lines = Vec::new();
        while let Ok(line) = rx.try_recv() {
            lines.push(line);
        }
        match result {
            Ok(()) => plan::dry_activation_summary(&lines),
            Err(e) => {
                warn!("switch-to-configuration dry-activate failed: {e}");
                None
            }
        }
    }

    /// Records and reports a deploy that succeeded, and whether it needs a reboot.
    async fn confirm(&mut self, pending: &Pending, tail: &LogTail, started: Instant) -> Settled {
        let (generation, path) = (pending.generation, pending.store_path.clone());
        let settled =
            Settled { generation, store_path: path.clone(), ending: Ending::Confirmed, reason: None, at: now() };
        self.state.settle(settled.clone());
        let needs_reboot = self.needs_reboot(pending.activation, &path);
        self.state.needs_reboot = needs_reboot.then(|| path.clone());
        // A failed save leaves `pending` on disk: a restart re-applies this same generation,
        // which is harmless; the next turn saves again first.
        self.save_or_warn("a confirmed generation");
        let mut report =
            with_tail(Report::new(generation, Phase::Confirmed, &format!("{path} confirmed"), Some(started)), tail);
        report.active_generation = Some(generation);
        report.profile_generation = self.profile_generation(pending.activation);
        self.report(report).await;
        if needs_reboot {
            let message = "the boot files changed: the generation runs fully after a reboot";
            let mut report = Report::new(generation, Phase::NeedsReboot, message, Some(started));
            report.active_generation = Some(generation);
            self.report(report).await;
        }
        settled
    }

    /// The profile generation the deploy just made, when its mode sets the profile.
    fn profile_generation(&self, mode: super::Activation) -> Option<u64> {
        if !plan::sets_profile(mode) {
            return None;
        }
        match self.system.profile_generation(&self.opts.profile) {
            Ok(number) => number,
            Err(e) => {
                warn!(profile = %self.opts.profile.display(), "cannot read the profile's generation: {e}");
                None
            }
        }
    }

    /// Realises `path` from the substituters, held by the agent's GC root.
    pub(super) async fn realise(&self, path: &str, tail: &mut LogTail) -> Result<(), RealiseError> {
        let (tx, mut rx) = unbounded_channel();
        let gc_root = self.opts.state_dir.join(GC_ROOT);
        let result = self.system.realise(path, &gc_root, DOWNLOAD_TIMEOUT, &tx).await;
        drop(tx);
        while let Ok(line) = rx.try_recv() {
            tail.push(&line);
        }
        result.map_err(|source| RealiseError { path: path.to_owned(), source })
    }

    /// Counts a failed realise; gives the generation up after [`plan::MAX_DOWNLOADS`].
    async fn download_failed(
        &mut self,
        generation: u64,
        path: &str,
        why: String,
        tail: LogTail,
        started: Instant,
    ) -> Progress {
        let count = self.state.download_failed(generation);
        self.save_or_warn("a failed download");
        let give_up = count >= plan::MAX_DOWNLOADS;
        let message = match give_up {
            true => format!("{why} (attempt {count} of {}, giving up)", plan::MAX_DOWNLOADS),
            false => format!("{why} (attempt {count} of {}, will retry)", plan::MAX_DOWNLOADS),
        };
        let mut report = with_tail(Report::new(generation, Phase::Failed, &message, Some(started)), &tail);
        report.active_generation = self.state.active.as_ref().map(|a| a.generation);
        self.report(report).await;
        if !give_up {
            return Progress::Retry(why);
        }
        let settled =
            Settled { generation, store_path: path.into(), ending: Ending::Failed, reason: Some(why), at: now() };
        self.state.settle(settled.clone());
        self.save_or_warn("a generation given up");
        Progress::Settled(settled)
    }

    /// Runs `steps` in order, their output into `tail`; stops at the first failure.
    pub(super) async fn run_steps(&self, steps: &[Step], tail: &mut LogTail) -> Result<(), NixError> {
        for step in steps {
            let (tx, mut rx) = unbounded_channel();
            let result = match step {
                Step::Activate(system, action) => {
                    info!(system, action = action.as_str(), "switch-to-configuration");
                    self.system.switch_to_configuration(system, *action, self.opts.activation_timeout, &tx).await
                }
                Step::SetProfile(system) => {
                    info!(system, profile = %self.opts.profile.display(), "setting the profile");
                    self.system.set_profile(&self.opts.profile, system).await
                }
            };
            drop(tx);
            while let Ok(line) = rx.try_recv() {
                info!(target: "berth::agent::activation", "{line}");
                tail.push(&line);
            }
            result?;
        }
        Ok(())
    }

    /// Whether `path`, just confirmed, needs a reboot to run fully.
    pub(super) fn needs_reboot(&self, mode: super::Activation, path: &str) -> bool {
        let new = self.system.boot_files(Path::new(path));
        let booted = self.system.booted_system();
        let booted_files = booted.as_deref().map(|b| self.system.boot_files(b));
        let booted = booted.as_deref().and_then(Path::to_str).zip(booted_files.as_ref());
        plan::needs_reboot(mode, (path, &new), booted)
    }
}

/// `report` with the log tail attached.
pub(super) fn with_tail(mut report: Report, tail: &LogTail) -> Report {
    report.log_tail = tail.text();
    report
}
