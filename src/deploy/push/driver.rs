//! berth's side of push mode: one task per pushed host (`delivery = "push"`) that waits for
//! the host's newest released generation, as a pulled host's long-poll does (a rollout's
//! hold and `berth hosts pause` apply alike), and deploys it along [`timeline`]: copy over
//! `ssh-ng://`, `berth-push test`, a confirmation over a fresh connection, `berth-push boot`.
//! Each phase is reported as an agent reports it (`deploy::reporting`), so status, events,
//! forge statuses, rollouts and retention see a pushed host like any other.
//!
//! With PostgreSQL replicas one replica drives every pushed host (a leader lock, as the
//! offline watch has), so no host is pushed to twice at once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::timeline::{self, Outcome, Phase as Step};
use crate::{
    app::AppState,
    config::PushTarget,
    db::{GenerationRow, ReportRow, PUSH_KEY},
    deploy::{reporting, status::Phase},
    nix::ssh::{self, Answer, SshTarget},
};

/// How long copying a closure may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long one `berth-push` command may take (an activation included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(900);
/// How often an idle host is looked at (`berth-push status`: it is seen, or it is not).
const IDLE: Duration = Duration::from_secs(60);
/// Between attempts to confirm, while the host cannot be reached.
const CONFIRM_RETRY: Duration = Duration::from_secs(2);
/// Between attempts to lead, while another replica drives the pushed hosts.
const LEAD_RETRY: Duration = Duration::from_secs(15);
/// Copies of one generation tried (a minute apart, [`IDLE`]) before it is given up, as an
/// agent gives up a download.
const MAX_COPIES: u32 = 3;

/// Where one deploy got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deployed {
    /// It ended, reported confirmed, rolled back or failed.
    Settled,
    /// The copy failed and is tried again later; nothing changed on the host.
    Retry,
}

/// Drives every pushed host of the configuration until `stop`.
pub async fn run(state: AppState, stop: CancellationToken) {
    let targets: Vec<(String, PushTarget)> = state.config.repositories.iter().flat_map(|r| r.push.clone()).collect();
    if targets.is_empty() {
        return;
    }
    loop {
        let lead = match state.db.try_lead(PUSH_KEY).await {
            Ok(lead) => lead,
            Err(e) => {
                tracing::warn!(error = %e, "asking whether this replica drives the pushed hosts");
                None
            }
        };
        let Some(mut lead) = lead else {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(LEAD_RETRY) => continue,
            }
        };
        let led = stop.child_token();
        let tasks: Vec<_> = targets
            .iter()
            .map(|(host, target)| tokio::spawn(drive(state.clone(), host.clone(), target.clone(), led.clone())))
            .collect();
        while lead.holds().await {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(LEAD_RETRY) => {}
            }
        }
        led.cancel();
        for task in tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "a push driver task ended abnormally");
            }
        }
        if stop.is_cancelled() {
            return;
        }
    }
}

/// One pushed host: deploys each newer released generation, and looks at the host when idle.
async fn drive(state: AppState, host: String, target: PushTarget, stop: CancellationToken) {
    let known_hosts = match write_known_hosts(&state.config.data_dir, &host, &target) {
        Ok(path) => path,
        Err(e) => {
            tracing::error!(host, error = %e, "cannot write the pushed host's known_hosts file; not pushing to it");
            return;
        }
    };
    let ssh = SshTarget {
        destination: &target.destination,
        port: target.port,
        key_file: &target.key_file,
        known_hosts: &known_hosts,
    };
    let watch = state.deploys.subscribe(&host);
    // The generation whose copy failed, and how many times.
    let mut copies = (0, 0);
    loop {
        let made = watch.notified();
        tokio::pin!(made);
        made.as_mut().enable();
        match next_generation(&state, &host).await {
            Ok(Some(g)) => {
                watch.knows(g.number);
                let attempt = if copies.0 == g.number { copies.1 + 1 } else { 1 };
                let deployed = tokio::select! {
                    () = stop.cancelled() => return,
                    deployed = deploy(&state, &host, ssh, &target, &g, attempt) => deployed,
                };
                if deployed == Deployed::Settled {
                    continue;
                }
                copies = (g.number, attempt);
            }
            Ok(None) => look(&state, &host, ssh).await,
            Err(e) => tracing::warn!(host, error = %e, "push: cannot read the host's generations"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = &mut made => {}
            () = tokio::time::sleep(IDLE) => {}
        }
    }
}

/// The newest released generation not yet settled on the host (none while it is paused or
/// outside its activation window).
async fn next_generation(state: &AppState, host: &str) -> Result<Option<GenerationRow>, crate::db::DbError> {
    let Some(offered) = crate::deploy::offer::offer(state, host).await?.generation else { return Ok(None) };
    let settled = state.db.newest_settled_generation(host).await?.unwrap_or(0);
    Ok(Some(offered).filter(|g| g.number > settled))
}

/// `berth-push status`: a host that answers is seen.
async fn look(state: &AppState, host: &str, ssh: SshTarget<'_>) {
    match ssh::run(ssh, "berth-push status", COMMAND_TIMEOUT).await {
        Ok(Answer::Done(_)) => {
            if let Err(e) = state.db.touch_host(host, None).await {
                tracing::warn!(host, error = %e, "push: cannot record that the host was seen");
            }
        }
        Ok(Answer::Refused(why) | Answer::NotPending(why) | Answer::Unreachable(why)) => {
            tracing::info!(host, "push: berth-push status: {why}")
        }
        Err(e) => tracing::warn!(host, error = %e, "push: cannot run ssh"),
    }
}

/// One deploy of `g` to the host (its `attempt`th copy), every phase reported.
async fn deploy(
    state: &AppState,
    host: &str,
    ssh: SshTarget<'_>,
    target: &PushTarget,
    g: &GenerationRow,
    attempt: u32,
) -> Deployed {
    let started = Instant::now();
    let path = g.store_path.as_str();
    let active = previous_confirmed(state, host, g.number).await;
    let report = |phase: Phase, message: String, active: Option<i64>| async move {
        let row = ReportRow {
            generation: g.number,
            phase: phase.as_str().to_owned(),
            message: Some(message),
            log_tail: None,
            duration_ms: Some(started.elapsed().as_millis().try_into().unwrap_or(i64::MAX)),
            profile_generation: None,
            created_at: 0,
        };
        if let Err(e) = reporting::record(state, host, g, phase, &row, active).await {
            tracing::warn!(host, generation = g.number, error = %e, "push: cannot record a report");
        }
    };
    let mut step = Step::Copying;
    // The step that ended the deploy (a failed boot leaves the confirmed system running).
    let mut last = step;
    let mut reason = String::new();
    // Whether `berth-push test` got no answer (so the trial may not have started).
    let mut uncertain = false;
    report(Phase::Downloading, format!("copying {path} to {} over ssh-ng", target.destination), active).await;
    while !step.is_final() {
        let outcome = match step {
            Step::Copying => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let from = state.config.builder.store.as_deref().and_then(Path::to_str);
                let key = &state.config.signing_key.path;
                let copied = ssh::copy(ssh, from, key, path, COPY_TIMEOUT, &tx).await;
                drop(tx);
                while let Ok(line) = rx.try_recv() {
                    tracing::debug!(host, "nix copy: {line}");
                }
                match copied {
                    Ok(()) => {
                        if let Err(e) = state.db.touch_host(host, None).await {
                            tracing::warn!(host, error = %e, "push: cannot record that the host was seen");
                        }
                        let seconds = target.confirm_timeout.as_secs();
                        report(
                            Phase::Activating,
                            format!("activating {path} (test, confirm within {seconds}s)"),
                            active,
                        )
                        .await;
                        Outcome::Ok
                    }
                    Err(e) if attempt < MAX_COPIES => {
                        let message = format!(
                            "copy to the host failed (attempt {attempt} of {MAX_COPIES}, will retry in {}s): {e}",
                            IDLE.as_secs()
                        );
                        report(Phase::Downloading, message, active).await;
                        return Deployed::Retry;
                    }
                    Err(e) => {
                        reason = format!("copy to the host failed (attempt {attempt} of {MAX_COPIES}, giving up): {e}");
                        Outcome::Failed
                    }
                }
            }
            Step::Testing => {
                let command = format!("berth-push test {path} {}", target.confirm_timeout.as_secs());
                match ssh::run(ssh, &command, COMMAND_TIMEOUT).await {
                    // The connection broke, or never was: the trial may be under way (the new
                    // system cut the network) or never started. Confirming tells which.
                    Ok(Answer::Unreachable(why)) => {
                        reason = format!("host not reached during the activation: {why}");
                        uncertain = true;
                        Outcome::Ok
                    }
                    answer => answered(answer, "activation", &mut reason),
                }
            }
            Step::Confirming => {
                let confirmed = confirm(ssh, path, target.confirm_timeout, &mut reason).await;
                match after_confirming(confirmed, uncertain && attempt < MAX_COPIES) {
                    Some(outcome) => outcome,
                    None => {
                        let message =
                            format!("the host never started the trial ({reason}); will retry in {}s", IDLE.as_secs());
                        report(Phase::Downloading, message, active).await;
                        return Deployed::Retry;
                    }
                }
            }
            Step::Booting => {
                let command = format!("berth-push boot {path}");
                let outcome = answered(ssh::run(ssh, &command, COMMAND_TIMEOUT).await, "boot", &mut reason);
                if outcome == Outcome::Failed {
                    reason = format!("confirmed, but the boot entry was not set: {reason}");
                }
                outcome
            }
            Step::Confirmed | Step::RolledBack | Step::Failed => unreachable!("final steps end the loop"),
        };
        last = step;
        step = timeline::next(step, outcome);
    }
    match (step, last) {
        (Step::Confirmed, _) => report(Phase::Confirmed, format!("{path} confirmed"), Some(g.number)).await,
        (Step::RolledBack, _) => report(Phase::RolledBack, reason, active).await,
        (_, Step::Booting) => report(Phase::Failed, reason, Some(g.number)).await,
        _ => report(Phase::Failed, reason, active).await,
    }
    Deployed::Settled
}

/// Reads a command's answer as an outcome, the reason kept for the report.
fn answered(answer: Result<Answer, crate::nix::NixError>, what: &str, reason: &mut String) -> Outcome {
    match answer {
        Ok(Answer::Done(_)) => Outcome::Ok,
        Ok(Answer::Refused(why) | Answer::NotPending(why)) => {
            *reason = format!("{what} failed on the host: {why}");
            Outcome::Failed
        }
        Ok(Answer::Unreachable(why)) => {
            *reason = format!("{what}: host not reached: {why}");
            Outcome::Failed
        }
        Err(e) => {
            *reason = format!("{what}: {e}");
            Outcome::Failed
        }
    }
}

/// What confirming came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Confirmed {
    /// The host settled the trial.
    Yes,
    /// Refused, or no answer within the window: the host rolls back (or did).
    No,
    /// The host has no trial of the system: it never started one, or already ended it.
    NeverStarted,
}

/// The step's outcome after confirming, or `None` to deploy again later: with `retry`
/// (`berth-push test` got no answer, and attempts are left), a host that never heard of the
/// trial never started it, so nothing changed there, as after a failed copy. (A trial that
/// started and rolled back is refused as such, not as unknown.)
fn after_confirming(confirmed: Confirmed, retry: bool) -> Option<Outcome> {
    match (confirmed, retry) {
        (Confirmed::Yes, _) => Some(Outcome::Ok),
        (Confirmed::NeverStarted, true) => None,
        (Confirmed::No | Confirmed::NeverStarted, _) => Some(Outcome::Failed),
    }
}

/// Confirms over fresh connections until the host answers or the window closes. The host
/// refusing (too late, another trial) is final at once; only an unreachable host is retried.
async fn confirm(ssh: SshTarget<'_>, path: &str, window: Duration, reason: &mut String) -> Confirmed {
    let deadline = Instant::now() + window;
    let command = format!("berth-push confirm {path}");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            *reason = format!(
                "no confirmation within {}s ({reason}): the host rolls back by itself at its deadline",
                window.as_secs()
            );
            return Confirmed::No;
        }
        match ssh::run(ssh, &command, left.min(COMMAND_TIMEOUT)).await {
            Ok(Answer::Done(_)) => return Confirmed::Yes,
            Ok(Answer::Refused(why)) => {
                *reason = format!("the host refused the confirmation: {why}");
                return Confirmed::No;
            }
            Ok(Answer::NotPending(why)) => {
                *reason = format!("the host refused the confirmation: {why}");
                return Confirmed::NeverStarted;
            }
            Ok(Answer::Unreachable(why)) => *reason = format!("host not reached: {why}"),
            Err(e) => *reason = e.to_string(),
        }
        tokio::time::sleep(CONFIRM_RETRY.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// The newest generation before `number` the host confirmed: what it runs after a rollback.
async fn previous_confirmed(state: &AppState, host: &str, number: i64) -> Option<i64> {
    match state.db.confirmed_generations(host).await {
        Ok(confirmed) => confirmed.into_iter().filter(|&n| n < number).max(),
        Err(e) => {
            tracing::warn!(host, error = %e, "push: cannot read the confirmed generations");
            None
        }
    }
}

/// `DATA_DIR/push/<host>.known_hosts`: the host's pinned key, the only one `ssh` accepts.
fn write_known_hosts(data_dir: &Path, host: &str, target: &PushTarget) -> std::io::Result<PathBuf> {
    let dir = data_dir.join("push");
    std::fs::create_dir_all(&dir)?;
    let name = format!("{host}.known_hosts");
    let line = ssh::known_hosts_line(&target.destination, target.port, &target.host_key);
    crate::deploy::agent::state::replace_file(&dir, &name, line.as_bytes())?;
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trial_that_never_started_is_tried_again_only_when_its_activation_got_no_answer_and_attempts_are_left() {
        let table = [
            (Confirmed::Yes, false, Some(Outcome::Ok)),
            (Confirmed::Yes, true, Some(Outcome::Ok)),
            (Confirmed::No, false, Some(Outcome::Failed)),
            (Confirmed::No, true, Some(Outcome::Failed)),
            // The host answered the activation, then had no trial: it ended it (late).
            (Confirmed::NeverStarted, false, Some(Outcome::Failed)),
            // The activation got no answer and the host has no trial: it never started.
            (Confirmed::NeverStarted, true, None),
        ];
        for (confirmed, uncertain, want) in table {
            assert_eq!(after_confirming(confirmed, uncertain), want, "{confirmed:?} retry={uncertain}");
        }
    }
}
