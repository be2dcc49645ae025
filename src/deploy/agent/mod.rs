//! The host agent (`berth agent`): pulls its host's signed manifests from the server (a long
//! poll, no inbound connection), realises each new generation from the cache, activates it in
//! two phases, checks it, and confirms it or rolls back on its own. `docs/agent.md` is the
//! operator's view.
//!
//! - `config`: flags over a TOML file, validated into [`AgentOptions`];
//! - `plan` (PURE): the steps of each activation mode, the way back, the check verdicts;
//! - `window` (PURE): the reboot window and the retry backoff;
//! - `state`: the durable record, with the `pending` deploy written before anything changes;
//! - `client`: the server API; `report`: phases, the outbox, log tails;
//! - `enroll`: `berth agent enroll`, the one-time code traded for the host's token;
//! - `health`: the checks; `apply`: one deploy; `recover`: rollback and a deploy left
//!   pending by a dead agent; `reboot`: rebooting in the window.
//!
//! The processes themselves (nix-store, nix-env, switch-to-configuration, systemctl) run in
//! [`crate::nix::system`].

mod apply;
mod client;
pub mod config;
pub mod enroll;
mod health;
mod plan;
mod reboot;
mod recover;
mod report;
pub mod state;
#[cfg(test)]
mod tests;
mod window;

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use client::ClientError;
pub use config::{Activation, AgentCli, AgentOptions, HealthOptions, RawAgentConfig, RebootPolicy};
pub use window::RebootWindow;

use crate::deploy::keyset::{Applied, SignedAnnouncement, TrustSet};
use crate::deploy::manifest::{Manifest, ManifestError, SignedManifest};
use crate::nix::system::SystemRoot;
use client::{Polled, Server};
use report::{Outbox, Phase, Report};
use state::{Ending, Settled, State};

/// How long the server may hold a manifest request.
const POLL_HOLD: Duration = Duration::from_secs(30);
/// The least time between two polls that found nothing.
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// With `--once`: how many times the server is tried before giving up.
const ONCE_TRIES: u32 = 3;

/// How a run of the agent ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by the shutdown token.
    Stopped,
    /// (`--once`) Nothing new to apply.
    Idle,
    /// (`--once`) The last deploy was confirmed.
    Confirmed {
        /// Its generation.
        generation: u64,
    },
    /// (`--once`) The last deploy failed and the previous generation is back.
    RolledBack {
        /// Its generation.
        generation: u64,
        /// Why.
        reason: String,
    },
    /// (`--once`) The last deploy failed, with no way back or before it started.
    Failed {
        /// Its generation.
        generation: u64,
        /// Why.
        reason: String,
    },
    /// (`--once`) A deploy could not go on now (not realised yet) and will be tried again.
    Retrying {
        /// Why.
        reason: String,
    },
    /// (`--once`) A new generation waits for an activation window.
    Outside {
        /// Its generation.
        generation: u64,
    },
    /// (`--once`) The server offered a manifest the agent refuses.
    Refused {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// Whether `berth agent` should exit 0.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Stopped | Self::Idle | Self::Confirmed { .. } | Self::Outside { .. })
    }
}

/// One line for the operator, as `berth agent --once` prints a failure.
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stopped => f.write_str("stopped"),
            Self::Idle => f.write_str("nothing new to apply"),
            Self::Confirmed { generation } => write!(f, "generation {generation} confirmed"),
            Self::RolledBack { generation, reason } => {
                write!(f, "generation {generation} failed and was rolled back: {}", one_line(reason))
            }
            Self::Failed { generation, reason } => write!(f, "generation {generation} failed: {}", one_line(reason)),
            Self::Retrying { reason } => write!(f, "will retry: {}", one_line(reason)),
            Self::Outside { generation } => write!(f, "generation {generation} waits for an activation window"),
            Self::Refused { reason } => write!(f, "refused the server's manifest: {}", one_line(reason)),
        }
    }
}

/// The first line of `text` (reasons may carry a log tail).
fn one_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default().trim_end()
}

impl From<&Settled> for Outcome {
    fn from(settled: &Settled) -> Self {
        let (generation, reason) = (settled.generation, settled.reason.clone().unwrap_or_default());
        match settled.ending {
            Ending::Confirmed => Self::Confirmed { generation },
            Ending::RolledBack => Self::RolledBack { generation, reason },
            Ending::Failed => Self::Failed { generation, reason },
        }
    }
}

/// Why the agent stopped without an [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state directory cannot be used (at start-up, or with `--once`).
    #[error("state directory {path}: {source}")]
    State {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// (`--once`) The server could not be asked.
    #[error("{0}")]
    Server(#[from] ClientError),
}

/// The agent at work: its options, its view of the system and the server, and its state.
struct Agent {
    opts: AgentOptions,
    system: SystemRoot,
    server: Server,
    state: State,
    /// The state changed but could not be saved yet.
    dirty: bool,
    outbox: Outbox,
    /// The signature of the last manifest refused (reported once).
    refused: Option<String>,
    /// The generation last found outside the activation windows (logged once).
    held: Option<u64>,
    /// The deploy keys trusted: the configured one, plus announced ones, less retired ones.
    trust: TrustSet,
}

/// What one turn of the loop did.
enum Turn {
    /// Settled a deploy left pending; the poll is still to come.
    Resumed(Outcome),
    /// Asked the server: nothing new.
    Idle,
    /// Applied a new manifest.
    Deployed(Outcome),
    /// A new generation waits for an activation window.
    Outside(u64),
}

/// How often a generation that waits for an activation window looks at the clock again.
const WINDOW_CHECK: Duration = Duration::from_secs(30);

/// Why a turn could not complete.
enum Hitch {
    State(std::io::Error),
    Server(ClientError),
    Retry(String),
    Refused(String),
}

/// Runs the agent until `shutdown` (or, with `--once`, until the pending and the newest
/// manifest are applied). A deploy in progress is finished before a shutdown is honoured; a
/// kill in the middle leaves a `pending` record that the next start settles.
pub async fn run(opts: AgentOptions, shutdown: CancellationToken) -> Result<Outcome, AgentError> {
    let once = opts.once;
    let mut agent = Agent::open(opts)?;
    let (mut outcome, mut failures) = (Outcome::Idle, 0u32);
    loop {
        if shutdown.is_cancelled() {
            outcome = Outcome::Stopped;
            break;
        }
        agent.flush().await;
        let hold = if once { Duration::ZERO } else { POLL_HOLD };
        let began = std::time::Instant::now();
        let hitch = match agent.turn(hold, &shutdown).await {
            Ok(Turn::Resumed(settled)) => {
                (failures, outcome) = (0, settled);
                continue;
            }
            Ok(Turn::Idle) if once => break,
            Ok(Turn::Deployed(settled)) if once => {
                outcome = settled;
                break;
            }
            Ok(Turn::Idle) => {
                // A server (or proxy) that answers at once instead of holding the request
                // must not turn the long poll into a busy loop.
                failures = 0;
                pause(&shutdown, MIN_POLL_INTERVAL.saturating_sub(began.elapsed())).await;
                continue;
            }
            Ok(Turn::Deployed(_)) => {
                failures = 0;
                continue;
            }
            Ok(Turn::Outside(generation)) if once => {
                outcome = Outcome::Outside { generation };
                break;
            }
            Ok(Turn::Outside(_)) => {
                failures = 0;
                pause(&shutdown, WINDOW_CHECK).await;
                continue;
            }
            Err(hitch) => hitch,
        };
        failures += 1;
        // A deploy that could not start (the cache lacks the path, the disk is full) is given
        // time to heal before it counts another failed attempt.
        let least = if matches!(hitch, Hitch::Retry(_)) { window::RETRY_WAIT } else { Duration::ZERO };
        match (once, hitch) {
            (true, Hitch::State(source)) => return Err(AgentError::State { path: agent.opts.state_dir, source }),
            (true, Hitch::Server(e)) if failures >= ONCE_TRIES => return Err(e.into()),
            (true, Hitch::Retry(reason)) => return Ok(agent.finish(Outcome::Retrying { reason }).await),
            (true, Hitch::Refused(reason)) => return Ok(agent.finish(Outcome::Refused { reason }).await),
            (_, Hitch::State(e)) => error!("cannot save the agent state: {e}"),
            (_, Hitch::Server(e)) => warn!("{e}"),
            (_, Hitch::Retry(reason)) => warn!("will retry: {reason}"),
            (_, Hitch::Refused(reason)) => error!("refused the server's manifest: {reason}"),
        }
        pause(&shutdown, window::backoff(failures, window::jitter()).max(least)).await;
    }
    Ok(agent.finish(outcome).await)
}

/// Sleeps for `wait`, or until the shutdown.
async fn pause(shutdown: &CancellationToken, wait: Duration) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = shutdown.cancelled() => {}
    }
}

impl Agent {
    /// Prepares the state directory (mode 0700), reads the state and proves it can be written.
    fn open(opts: AgentOptions) -> Result<Self, AgentError> {
        let dir = opts.state_dir.clone();
        let fail = |source| AgentError::State { path: dir.clone(), source };
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&dir)
            .map_err(fail)?;
        let state = state::load(&dir).map_err(fail)?;
        let configured = std::slice::from_ref(&opts.deploy_key);
        let trust = match &state.deploy_keys {
            Some(file) => TrustSet::restore(configured, file)
                .map_err(|e| fail(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("deploy keys: {e}"))))?,
            None => TrustSet::configured(configured),
        };
        state::save(&dir, &state).map_err(fail)?;
        let server = Server::new(&opts.server, &opts.host, opts.token.clone())?;
        let system = SystemRoot::new(opts.store.as_deref());
        info!(host = opts.host, server = opts.server, applied = ?state.applied, "berth agent started");
        Ok(Self {
            opts,
            system,
            server,
            state,
            dirty: false,
            outbox: Outbox::default(),
            refused: None,
            held: None,
            trust,
        })
    }

    /// One unit of work: settle a pending deploy, or poll and apply what comes.
    async fn turn(&mut self, hold: Duration, shutdown: &CancellationToken) -> Result<Turn, Hitch> {
        if self.dirty {
            self.save().map_err(Hitch::State)?;
        }
        if self.state.pending.is_some() {
            return match self.resume().await {
                apply::Progress::Settled(settled) => Ok(Turn::Resumed((&settled).into())),
                apply::Progress::Retry(why) => Err(Hitch::Retry(why)),
            };
        }
        self.maybe_reboot().await;
        let trusted = self.trust.header();
        let polled = tokio::select! {
            polled = self.server.manifest(self.state.applied, hold, &trusted) => polled,
            () = shutdown.cancelled() => return Ok(Turn::Idle),
        };
        let signed = match polled.map_err(Hitch::Server)? {
            Polled::Nothing => return Ok(Turn::Idle),
            Polled::Manifest(signed) => signed,
            Polled::Keys(announced) => return self.follow_keys(&announced),
        };
        let manifest = match signed.open_trusted(&self.trust, &self.opts.host, self.state.applied) {
            Ok(opened) => {
                if let Some(trust) = opened.trust {
                    info!(epoch = trust.epoch(), keys = trust.header(), "deploy keys announced");
                    self.state.deploy_keys = Some(trust.to_file());
                    self.trust = trust;
                    // Saved before anything is activated, so a restart keeps what was retired.
                    self.save().map_err(Hitch::State)?;
                }
                opened.manifest
            }
            Err(refused) => return Err(Hitch::Refused(self.refuse(&signed, refused).await)),
        };
        self.refused = None;
        if !self.in_activation_window() {
            if self.held != Some(manifest.generation) {
                info!(generation = manifest.generation, "waits for an activation window");
                self.held = Some(manifest.generation);
            }
            return Ok(Turn::Outside(manifest.generation));
        }
        self.held = None;
        match self.deploy(&manifest).await {
            apply::Progress::Settled(settled) => {
                // A host on a timer (`--once`) reboots in the same run.
                self.maybe_reboot().await;
                Ok(Turn::Deployed((&settled).into()))
            }
            apply::Progress::Retry(why) => Err(Hitch::Retry(why)),
        }
    }

    /// A key announcement that came alone: applied and saved when it is newer and signed by a
    /// key this agent trusts. One that changes nothing (or is refused) is retried after the
    /// usual backoff, so a server that keeps sending it is not asked again at once.
    fn follow_keys(&mut self, announced: &SignedAnnouncement) -> Result<Turn, Hitch> {
        match self.trust.apply(announced) {
            Ok(Applied::Updated(trust)) => {
                info!(epoch = trust.epoch(), keys = trust.header(), "deploy keys announced");
                self.state.deploy_keys = Some(trust.to_file());
                self.trust = trust;
                self.save().map_err(Hitch::State)?;
                Ok(Turn::Idle)
            }
            Ok(Applied::Unchanged) => {
                Err(Hitch::Retry("the server sent a key announcement that changes nothing".into()))
            }
            Err(refused) => Err(Hitch::Refused(format!("refused the key announcement: {refused}"))),
        }
    }

    /// Whether a new generation may be switched to now, in the host's time zone.
    fn in_activation_window(&self) -> bool {
        let now = jiff::Zoned::now().with_time_zone(self.opts.time_zone.clone());
        let weekday = now.weekday().to_monday_zero_offset() as usize;
        let minute = now.hour() as u16 * 60 + now.minute() as u16;
        crate::deploy::windows::activation_allowed(&self.opts.activation_windows, weekday, minute)
    }

    /// Reports a refused manifest to the server once, when it at least claims to be this
    /// host's next generation (its number is used for the report only; nothing else of an
    /// unverified manifest is trusted).
    async fn refuse(&mut self, signed: &SignedManifest, refused: ManifestError) -> String {
        let reason = refused.to_string();
        if self.refused.as_deref() == Some(signed.signature.as_str()) {
            return reason;
        }
        self.refused = Some(signed.signature.clone());
        let claimed = serde_json::from_str::<Manifest>(&signed.manifest).ok();
        let newer = |g: u64| self.state.applied.map_or(true, |a| g > a);
        if let Some(claimed) = claimed.filter(|m| m.host == self.opts.host && newer(m.generation)) {
            let message = format!("refused the manifest: {reason}");
            self.report(Report::new(claimed.generation, Phase::Failed, &message, None)).await;
        }
        reason
    }

    /// Saves the state; on failure it stays marked for the next turn.
    fn save(&mut self) -> std::io::Result<()> {
        let saved = state::save(&self.opts.state_dir, &self.state);
        self.dirty = saved.is_err();
        saved
    }

    /// [`Self::save`], where a failure can wait: it is logged, and the state stays `dirty`,
    /// so the next turn of the loop saves again before it does anything else.
    fn save_or_warn(&mut self, what: &str) {
        if let Err(e) = self.save() {
            warn!("cannot save the agent's state ({what}); saving again on the next turn: {e}");
        }
    }

    /// Queues a report and sends what waits.
    async fn report(&mut self, report: Report) {
        info!(generation = report.generation, phase = ?report.phase, "{}", report.message);
        if let Some(dropped) = self.outbox.push(report) {
            warn!(generation = dropped.generation, phase = ?dropped.phase, "the server is away: report dropped");
        }
        self.flush().await;
    }

    /// Sends waiting reports in order until one fails for a reason that may pass.
    async fn flush(&mut self) {
        while let Some(report) = self.outbox.front() {
            match self.server.report(report).await {
                Ok(()) => self.outbox.pop(),
                Err(e) if e.is_permanent() => {
                    error!(generation = report.generation, "the server refused a report: {e}");
                    self.outbox.pop();
                }
                Err(e) => {
                    warn!("reports wait: {e}");
                    return;
                }
            }
        }
    }

    /// Before exiting: a few more tries to deliver the reports.
    async fn finish(&mut self, outcome: Outcome) -> Outcome {
        for failures in 1..=ONCE_TRIES {
            self.flush().await;
            if self.outbox.is_empty() || !self.opts.once {
                break;
            }
            tokio::time::sleep(window::backoff(failures, 0.5)).await;
        }
        outcome
    }
}
