//! The health checks after `switch-to-configuration test`: the system's own state, the
//! configured commands (each with its own retries, interval and per-attempt timeout), and
//! the berth server reachable again. All of them must pass within the health timeout; the
//! first check that fails for good is the reason the deploy is rolled back.
//!
//! The server check is deploy-rs's "magic rollback" owned by the host: a switch that breaks
//! the network (a firewall rule, a wrong address) cannot confirm itself.

use std::time::{Duration, Instant};

use tokio::sync::mpsc::unbounded_channel;

use super::client::{ClientError, Server};
use super::config::{HealthCheck, HealthOptions};
use super::plan::{self, Verdict};
use super::report::LogTail;
use crate::nix::{system::SystemRoot, NixError};

/// Why the health checks failed: the reason the deploy is rolled back.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// A configured command failed for good.
    #[error("health check {argv:?} failed{}: {source}", attempts_note(*.attempts))]
    Command {
        /// The command.
        argv: Vec<String>,
        /// How many times it was tried.
        attempts: u32,
        /// The last failure.
        source: NixError,
    },
    /// systemd could not be asked.
    #[error("cannot ask systemd for the system state: {0}")]
    SystemState(NixError),
    /// systemd says the system failed (or degraded since the switch).
    #[error("{0}")]
    SystemFailed(String),
    /// The system was still starting at the deadline.
    #[error("the system was still {state} after {secs}s")]
    StillStarting {
        /// The last state systemd gave.
        state: String,
        /// The health timeout.
        secs: u64,
    },
    /// The berth server did not answer after the switch.
    #[error("the server is unreachable after the switch: {0}")]
    ServerUnreachable(ClientError),
}

fn attempts_note(attempts: u32) -> String {
    if attempts <= 1 {
        String::new()
    } else {
        format!(" ({attempts} attempts)")
    }
}

/// How often a condition that is not met yet is asked again.
const POLL: Duration = Duration::from_secs(1);

/// Runs every check; `Err` says which failed and why.
pub async fn check(
    system: &SystemRoot,
    server: &Server,
    health: &HealthOptions,
    state_before: Option<&str>,
    tail: &mut LogTail,
) -> Result<(), HealthError> {
    let deadline = Instant::now() + health.timeout;
    if health.check_system_running {
        system_running(system, state_before, deadline, health.timeout).await?;
    }
    for check in &health.commands {
        command(system, check, deadline, tail).await?;
    }
    server_reachable(server, deadline).await
}

/// One command, tried up to `retries + 1` times `interval` apart; each attempt is killed at
/// its own `timeout` or the overall deadline, whichever comes first. The last failure is
/// the reason; one that leaves no time for another attempt ends the retries.
async fn command(
    system: &SystemRoot,
    check: &HealthCheck,
    deadline: Instant,
    tail: &mut LogTail,
) -> Result<(), HealthError> {
    let argv = &check.command;
    let mut attempt = 0;
    loop {
        let limit = check.timeout.map_or(left(deadline), |t| t.min(left(deadline))).max(POLL);
        let (tx, mut rx) = unbounded_channel();
        let result = system.run_check(argv, limit, &tx).await;
        drop(tx);
        while let Ok(line) = rx.try_recv() {
            tail.push(&line);
        }
        let Err(e) = result else { return Ok(()) };
        attempt += 1;
        if attempt > check.retries || Instant::now() + check.interval >= deadline {
            return Err(HealthError::Command { argv: argv.clone(), attempts: attempt, source: e });
        }
        tracing::warn!(check = ?argv, attempt, "health check failed, trying again: {e}");
        tokio::time::sleep(check.interval).await;
    }
}

/// `systemctl is-system-running`, asked again while the system is still starting.
async fn system_running(
    system: &SystemRoot,
    before: Option<&str>,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), HealthError> {
    loop {
        let state = system.system_state().await.map_err(HealthError::SystemState)?;
        match plan::system_state(before, &state) {
            Verdict::Pass => return Ok(()),
            Verdict::Fail(why) => return Err(HealthError::SystemFailed(why)),
            Verdict::Wait if Instant::now() >= deadline => {
                return Err(HealthError::StillStarting { state, secs: timeout.as_secs() });
            }
            Verdict::Wait => tokio::time::sleep(POLL).await,
        }
    }
}

/// `GET /healthz` until it answers, or the deadline passes (at least one attempt).
async fn server_reachable(server: &Server, deadline: Instant) -> Result<(), HealthError> {
    loop {
        let error = match server.healthz(left(deadline).max(POLL)).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() + POLL >= deadline {
            return Err(HealthError::ServerUnreachable(error));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}
