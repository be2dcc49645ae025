//! The health checks after `switch-to-configuration test`: the system's own state, the
//! configured commands, and the berth server reachable again. All of them must pass within
//! the health timeout; the first failure is the reason the deploy is rolled back.
//!
//! The server check is deploy-rs's "magic rollback" owned by the host: a switch that breaks
//! the network (a firewall rule, a wrong address) cannot confirm itself.

use std::time::{Duration, Instant};

use tokio::sync::mpsc::unbounded_channel;

use super::client::Server;
use super::config::HealthOptions;
use super::plan::{self, Verdict};
use super::report::LogTail;
use crate::nix::system::SystemRoot;

/// How often a condition that is not met yet is asked again.
const POLL: Duration = Duration::from_secs(1);

/// Runs every check; `Err` says which failed and why.
pub async fn check(
    system: &SystemRoot,
    server: &Server,
    health: &HealthOptions,
    state_before: Option<&str>,
    tail: &mut LogTail,
) -> Result<(), String> {
    let deadline = Instant::now() + health.timeout;
    if health.check_system_running {
        system_running(system, state_before, deadline, health.timeout).await?;
    }
    for command in &health.commands {
        let (tx, mut rx) = unbounded_channel();
        let result = system.run_check(command, left(deadline).max(POLL), &tx).await;
        drop(tx);
        while let Ok(line) = rx.try_recv() {
            tail.push(&line);
        }
        result.map_err(|e| format!("health check {command:?} failed: {e}"))?;
    }
    server_reachable(server, deadline).await
}

/// `systemctl is-system-running`, asked again while the system is still starting.
async fn system_running(
    system: &SystemRoot,
    before: Option<&str>,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), String> {
    loop {
        let state = system.system_state().await.map_err(|e| format!("cannot ask systemd for the system state: {e}"))?;
        match plan::system_state(before, &state) {
            Verdict::Pass => return Ok(()),
            Verdict::Fail(why) => return Err(why),
            Verdict::Wait if Instant::now() >= deadline => {
                return Err(format!("the system was still {state} after {}s", timeout.as_secs()));
            }
            Verdict::Wait => tokio::time::sleep(POLL).await,
        }
    }
}

/// `GET /healthz` until it answers, or the deadline passes (at least one attempt).
async fn server_reachable(server: &Server, deadline: Instant) -> Result<(), String> {
    loop {
        let error = match server.healthz(left(deadline).max(POLL)).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() + POLL >= deadline {
            return Err(format!("the server is unreachable after the switch: {error}"));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}
