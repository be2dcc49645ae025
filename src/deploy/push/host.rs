//! The host's side of push mode: what `berth push-gate` (the push key's forced command) and
//! `berth push-settle` (the deadline watcher, the timer's pass and the boot-time settle) do.
//!
//! The host keeps two files in its state directory: `pending.json`, the trial under way
//! ([`Pending`]: the system under test, the one to go back to, the deadline), written before
//! the activation; and `last.json`, how the last trial ended. Every read-decide-write holds
//! an exclusive lock on `lock`, so a confirmation and the deadline watcher never both act on
//! one trial: whichever takes the lock first settles it, and the other sees it settled.

use std::{
    fs::File,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::gate::{self, GateError, Verb};
use super::timeline::{self, Pending, Settle, When};
use crate::deploy::agent::state::replace_file;
use crate::nix::{
    system::{SwitchAction, SystemRoot},
    NixError,
};

/// Where the host keeps its push state by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/berth-push";
/// The record of the trial under way.
const PENDING: &str = "pending.json";
/// How the last trial ended.
const LAST: &str = "last.json";
/// Refused commands, one line each (the file is moved to `refused.log.old` past 1 MiB).
const REFUSED: &str = "refused.log";
const REFUSED_MAX: u64 = 1 << 20;

/// Where the host's system and push state are.
#[derive(Debug, Clone)]
pub struct GateOptions {
    /// A Nix store URI or chroot directory (`None`: the system store).
    pub store: Option<String>,
    /// The system profile (logical path).
    pub profile: PathBuf,
    /// `pending.json`, `last.json`, `lock`, `refused.log`.
    pub state_dir: PathBuf,
    /// How long one `switch-to-configuration` may take.
    pub activation_timeout: Duration,
    /// Run the store daemon with the client untrusted (Nix 2.15 and later; see
    /// `SystemRoot::exec_daemon`).
    pub untrusted_daemon: bool,
}

impl GateOptions {
    fn system(&self) -> SystemRoot {
        SystemRoot::new(self.store.as_deref())
    }

    /// The flags that give another `berth push-settle` these same options.
    pub fn flags(&self) -> Vec<String> {
        let mut flags = vec!["--profile".to_owned(), self.profile.display().to_string()];
        flags.extend(["--state-dir".to_owned(), self.state_dir.display().to_string()]);
        if let Some(store) = &self.store {
            flags.extend(["--store".to_owned(), store.clone()]);
        }
        flags
    }
}

/// How a trial ended, kept in `last.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Last {
    /// The system of the trial.
    pub system: String,
    /// What became of it.
    pub outcome: LastOutcome,
    /// Why, when it did not succeed.
    pub reason: Option<String>,
    /// Unix seconds.
    pub at: u64,
}

/// What became of a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LastOutcome {
    /// Confirmed: the system runs; `boot` may make it the default.
    Confirmed,
    /// Made the boot default after its confirmation.
    Booted,
    /// The previous system runs again.
    RolledBack,
}

/// What `berth-push status` prints.
#[derive(Debug, Serialize)]
pub struct Status {
    /// `/run/current-system`.
    pub current: Option<String>,
    /// `/run/booted-system`.
    pub booted: Option<String>,
    /// The system profile's target.
    pub profile: Option<String>,
    /// The trial under way.
    pub pending: Option<Pending>,
    /// How the last one ended.
    pub last: Option<Last>,
}

/// Why a push command did not do what it was asked. Each is one line on stderr and a
/// non-zero exit; berth reads the line as the reason.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The gate refused the command: nothing ran.
    #[error("refused: {0}")]
    Refused(#[from] GateError),
    /// The store path is not a system on this host.
    #[error("{0} is not a system in this host's store (no bin/switch-to-configuration)")]
    NotASystem(String),
    /// Another trial is under way.
    #[error("a trial of {0} is pending until its deadline; confirm it or wait")]
    Busy(String),
    /// A confirmation with nothing (or something else) under test.
    #[error("no trial of {system} is pending{last}")]
    NotPending {
        /// The system named.
        system: String,
        /// How the last trial ended, as `; last: …`.
        last: String,
    },
    /// The trial of this system already ended rolled back (its activation failed, or its
    /// deadline passed).
    #[error("the trial of {system} already rolled back: {reason}")]
    RolledBack {
        /// The system.
        system: String,
        /// Why.
        reason: String,
    },
    /// The confirmation came after the deadline; the host rolled back.
    #[error("the confirmation of {0} came after its deadline: rolled back")]
    Late(String),
    /// `boot` of a system that is not the confirmed one.
    #[error("{0} is not the confirmed system: confirm it first")]
    NotConfirmed(String),
    /// The activation failed; the previous system was activated again.
    #[error("activation of {system} failed, rolled back: {source}")]
    Activation {
        /// The system.
        system: String,
        /// What failed.
        source: NixError,
    },
    /// A Nix or activation command failed.
    #[error(transparent)]
    Nix(#[from] NixError),
    /// The state directory could not be read or written.
    #[error("{}: {source}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// The exit status `berth push-gate` ends with when no trial of the system named is
/// pending (berth tells "never started" from "refused"); every other failure exits 1.
pub const EXIT_NOT_PENDING: i32 = 3;

impl HostError {
    /// The exit status of a push command that failed this way.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotPending { .. } => EXIT_NOT_PENDING,
            _ => 1,
        }
    }
}

/// Seconds since the Unix epoch.
fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The push state, locked for one read-decide-write.
struct Locked<'a> {
    opts: &'a GateOptions,
    system: SystemRoot,
    _lock: File,
}

impl<'a> Locked<'a> {
    fn take(opts: &'a GateOptions) -> Result<Self, HostError> {
        let dir = &opts.state_dir;
        let state = |source| HostError::State { path: dir.clone(), source };
        std::fs::create_dir_all(dir).map_err(state)?;
        let path = dir.join("lock");
        let lock = File::options().create(true).truncate(false).write(true).open(&path);
        let lock = lock.map_err(|source| HostError::State { path: path.clone(), source })?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| HostError::State { path, source: e.into() })?;
        Ok(Self { opts, system: opts.system(), _lock: lock })
    }

    fn read<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, HostError> {
        let path = self.opts.state_dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| HostError::State {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(HostError::State { path, source }),
        }
    }

    fn write(&self, name: &str, value: &impl Serialize) -> Result<(), HostError> {
        let json = serde_json::to_vec_pretty(value).expect("push state always serialises");
        replace_file(&self.opts.state_dir, name, &json)
            .map_err(|source| HostError::State { path: self.opts.state_dir.join(name), source })
    }

    fn pending(&self) -> Result<Option<Pending>, HostError> {
        self.read(PENDING)
    }

    fn last(&self) -> Result<Option<Last>, HostError> {
        self.read(LAST)
    }

    /// Drops the pending record, recording how the trial ended.
    fn end(&self, system: &str, outcome: LastOutcome, reason: Option<String>) -> Result<(), HostError> {
        self.write(LAST, &Last { system: system.to_owned(), outcome, reason, at: now() })?;
        let path = self.opts.state_dir.join(PENDING);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(HostError::State { path, source }),
        }
        std::fs::File::open(&self.opts.state_dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| HostError::State { path: self.opts.state_dir.clone(), source })
    }

    async fn activate(&self, system: &str, action: SwitchAction) -> Result<(), NixError> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let result = self.system.switch_to_configuration(system, action, self.opts.activation_timeout, &tx).await;
        drop(tx);
        while let Ok(line) = rx.try_recv() {
            say(format_args!("{line}"));
        }
        result
    }

    /// Ends an unconfirmed trial: the previous system activated again (when there is one).
    async fn roll_back(&self, pending: &Pending, reason: &str) -> Result<(), HostError> {
        if let Some(previous) = &pending.previous {
            say(format_args!("rolling back to {previous}: {reason}"));
            if let Err(e) = self.activate(previous, SwitchAction::Test).await {
                // Recorded as rolled back all the same: the trial is over either way, and
                // the boot entry (never touched) still holds the previous system.
                say(format_args!("re-activating {previous} failed: {e}"));
            }
        }
        self.end(&pending.system, LastOutcome::RolledBack, Some(reason.to_owned()))
    }

    /// Settles the trial under way as `when` decides; returns what was done.
    async fn settle(&self, when: When) -> Result<Option<Settle>, HostError> {
        let Some(pending) = self.pending()? else { return Ok(None) };
        let decision = timeline::settle(&pending, when);
        match decision {
            Settle::Wait => {}
            Settle::RollBack => self.roll_back(&pending, "no confirmation before the deadline").await?,
            Settle::Discard => self.end(
                &pending.system,
                LastOutcome::RolledBack,
                Some("the host rebooted before the confirmation".into()),
            )?,
        }
        Ok(Some(decision))
    }
}

/// Runs the command sshd handed the push key (`SSH_ORIGINAL_COMMAND`), returning what to
/// print. `nix-daemon --stdio` does not return: the process becomes the daemon.
pub async fn gate(opts: &GateOptions, command: Option<&str>) -> Result<String, HostError> {
    let verb = match gate::parse(command) {
        Ok(verb) => verb,
        Err(refused) => {
            log_refusal(&opts.state_dir, command.unwrap_or(""), &refused);
            return Err(refused.into());
        }
    };
    match verb {
        Verb::Daemon => Err(opts.system().exec_daemon(opts.untrusted_daemon).into()),
        Verb::Status => status(opts),
        Verb::Test { system, confirm_within } => test(opts, &system, confirm_within).await,
        Verb::Confirm(system) => confirm(opts, &system).await,
        Verb::Boot(system) => boot(opts, &system).await,
    }
}

fn status(opts: &GateOptions) -> Result<String, HostError> {
    let locked = Locked::take(opts)?;
    let system = &locked.system;
    let profile = system
        .profile_target(&opts.profile)
        .map_err(|source| HostError::State { path: opts.profile.clone(), source })?;
    let status = Status {
        current: system.current_system(),
        booted: system.booted_system().map(|p| p.display().to_string()),
        profile,
        pending: locked.pending()?,
        last: locked.last()?,
    };
    Ok(serde_json::to_string(&status).expect("status always serialises"))
}

/// `berth-push test SYSTEM SECONDS`: records the trial, then activates it; a failed
/// activation goes straight back to the previous system. A watcher process rolls the trial
/// back at its deadline unless it is confirmed first.
async fn test(opts: &GateOptions, system: &str, confirm_within: u64) -> Result<String, HostError> {
    let locked = Locked::take(opts)?;
    let script = locked.system.physical(&Path::new(system).join("bin/switch-to-configuration"));
    if !script.is_file() {
        return Err(HostError::NotASystem(system.to_owned()));
    }
    // A trial already under way: the same system again (berth lost its answer and asks
    // once more) keeps the record's previous system; another one must wait or expire.
    let previous = match locked.pending()? {
        Some(p) if p.system == system => p.previous,
        Some(p) => match timeline::settle(&p, When::Running(now())) {
            Settle::Wait => return Err(HostError::Busy(p.system)),
            _ => {
                locked.roll_back(&p, "no confirmation before the deadline").await?;
                p.previous
            }
        },
        None => match locked.system.current_system() {
            Some(current) => Some(current),
            None => locked
                .system
                .profile_target(&opts.profile)
                .map_err(|source| HostError::State { path: opts.profile.clone(), source })?,
        },
    };
    let previous = previous.filter(|p| p != system);
    let pending = Pending { system: system.to_owned(), previous, deadline: now() + confirm_within };
    locked.write(PENDING, &pending)?;
    if let Err(source) = locked.activate(system, SwitchAction::Test).await {
        locked.roll_back(&pending, &format!("activation failed: {source}")).await?;
        return Err(HostError::Activation { system: system.to_owned(), source });
    }
    let mut argv = vec!["push-settle".to_owned(), "--wait".to_owned()];
    argv.extend(opts.flags());
    if let Err(e) = crate::nix::system::spawn_self_detached(&argv) {
        // The timer's pass (NixOS module) and the boot-time settle still end the trial.
        say(format_args!("cannot start the deadline watcher: {e}"));
    }
    Ok(format!("testing {system}; confirm within {confirm_within}s"))
}

/// `berth-push confirm SYSTEM`: settles the trial of exactly that system, before its deadline.
async fn confirm(opts: &GateOptions, system: &str) -> Result<String, HostError> {
    let locked = Locked::take(opts)?;
    let pending = locked.pending()?.filter(|p| p.system == system);
    let Some(pending) = pending else {
        let last = locked.last()?;
        if let Some(l) = last.as_ref().filter(|l| l.system == system && l.outcome == LastOutcome::RolledBack) {
            let reason = l.reason.clone().unwrap_or_else(|| "no reason recorded".into());
            return Err(HostError::RolledBack { system: system.to_owned(), reason });
        }
        let last = match last {
            Some(l) => format!(
                "; last: {} {:?}{}",
                l.system,
                l.outcome,
                l.reason.map(|r| format!(" ({r})")).unwrap_or_default()
            ),
            None => String::new(),
        };
        return Err(HostError::NotPending { system: system.to_owned(), last });
    };
    if !timeline::confirms(&pending, system, now()) {
        locked.roll_back(&pending, "the confirmation came after the deadline").await?;
        return Err(HostError::Late(system.to_owned()));
    }
    locked.end(system, LastOutcome::Confirmed, None)?;
    Ok(format!("confirmed {system}"))
}

/// `berth-push boot SYSTEM`: the confirmed system becomes the profile's and the boot default.
async fn boot(opts: &GateOptions, system: &str) -> Result<String, HostError> {
    let locked = Locked::take(opts)?;
    let confirmed = locked.pending()?.is_none()
        && locked.last()?.is_some_and(|l| l.system == system && l.outcome != LastOutcome::RolledBack);
    if !confirmed {
        return Err(HostError::NotConfirmed(system.to_owned()));
    }
    locked.system.set_profile(&opts.profile, system).await?;
    locked.activate(system, SwitchAction::Boot).await?;
    locked.write(LAST, &Last { system: system.to_owned(), outcome: LastOutcome::Booted, reason: None, at: now() })?;
    Ok(format!("{system} is the boot default"))
}

/// `berth push-settle`: one pass (the timer's), the boot-time settle (`boot`), or (`wait`)
/// a watcher that sleeps until the trial under way is settled one way or the other.
pub async fn settle(opts: &GateOptions, boot: bool, wait: bool) -> Result<String, HostError> {
    if boot {
        let done = Locked::take(opts)?.settle(When::Boot).await?;
        return Ok(describe(done));
    }
    loop {
        let (done, deadline) = {
            let locked = Locked::take(opts)?;
            let deadline = locked.pending()?.map(|p| p.deadline);
            (locked.settle(When::Running(now())).await?, deadline)
        };
        match (done, deadline) {
            (Some(Settle::Wait), Some(deadline)) if wait => {
                let left = deadline.saturating_sub(now()).clamp(1, 5);
                tokio::time::sleep(Duration::from_secs(left)).await;
            }
            (done, _) => return Ok(describe(done)),
        }
    }
}

fn describe(done: Option<Settle>) -> String {
    match done {
        None => "no trial pending".into(),
        Some(Settle::Wait) => "the trial under way waits for its confirmation".into(),
        Some(Settle::RollBack) => "rolled back: no confirmation before the deadline".into(),
        Some(Settle::Discard) => "the trial ended with the reboot".into(),
    }
}

/// Appends one line about a refused command (its first 200 characters, escaped).
fn log_refusal(dir: &Path, command: &str, why: &GateError) {
    use std::io::Write;
    let path = dir.join(REFUSED);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > REFUSED_MAX) {
        if let Err(e) = std::fs::rename(&path, dir.join(format!("{REFUSED}.old"))) {
            say(format_args!("cannot rotate {}: {e}", path.display()));
        }
    }
    let shown: String = command.chars().take(200).collect();
    let line = format!("{} refused {:?}: {why}\n", now(), shown);
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| File::options().create(true).append(true).open(&path))
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        say(format_args!("cannot log the refusal to {}: {e}", path.display()));
    }
}

/// One line on stderr (the SSH channel), never a panic: the connection may be gone (the
/// new system cut the network) while the trial goes on.
fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    // Nobody to tell when stderr is closed; the trial's outcome is kept in `last.json`.
    let _ = writeln!(std::io::stderr(), "{line}");
}
