//! The rollout driver: reads each driven rollout from the database, asks the pure
//! [`rollout::decide`] what comes next, and applies it with one conditional write (so two
//! replicas never both apply a step). It runs on every report (a poke) and once a second
//! (soaks, offline hosts), only when some repository has a rollout policy. All state is in
//! the database: a restarted server goes on where the last one stopped.

use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    rollout::{self, Decision, HostView, Policy, Progress, RolloutState},
    status::{self, Outcome, Phase},
};
use crate::{
    app::AppState,
    config::Repository,
    db::{DbError, NewRollout, RolloutHostRow, RolloutRow},
};

/// How often the driver looks without being poked.
pub const TICK: Duration = Duration::from_secs(1);

/// Why a rollout command was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// No rollout has this id.
    #[error("no rollout {0}")]
    NotFound(i64),
    /// It is not in a state the command applies to.
    #[error("rollout {id} is {state}: {what}")]
    WrongState {
        /// The rollout.
        id: i64,
        /// Its state.
        state: &'static str,
        /// What the command needs.
        what: &'static str,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Wakes the driver (a report arrived, a rollout was made, resumed or aborted).
#[derive(Debug, Default)]
pub struct Poke(Notify);

impl Poke {
    /// Makes the driver look now.
    pub fn poke(&self) {
        self.0.notify_one();
    }
}

/// A rollout the worker is making generations for: which hosts they go to held.
#[derive(Debug)]
pub struct Started {
    /// Its id.
    pub id: i64,
}

/// Makes the rollout of a deploy-branch build of `repo` over `hosts` (those getting a new
/// generation), when the repository has a rollout policy; its generations are all made held,
/// and [`ready`] hands it to the driver once they exist.
pub async fn start(
    state: &AppState,
    repo: &Repository,
    branch: &str,
    commit: &str,
    build_id: i64,
    hosts: &[String],
) -> Result<Option<Started>, DbError> {
    let Some(policy) = repo.rollout.as_ref().filter(|_| branch == repo.deploy_branch) else { return Ok(None) };
    let tags = rollout::all_tags(&repo.tags, state.db.enrolled_tags().await?);
    let waves = rollout::assign(&policy.waves, hosts, &tags);
    let new =
        NewRollout { repository: &repo.name, branch, commit_sha: commit, build_id: Some(build_id), waves: &waves };
    let id = state.db.create_rollout(&new, policy.supersede).await?;
    tracing::info!(rollout = id, waves = waves.len(), "rollout made");
    Ok(Some(Started { id }))
}

/// Every generation of rollout `id` exists: the driver may start it.
pub async fn ready(state: &AppState, id: i64) -> Result<(), DbError> {
    state.db.set_rollout_ready(id).await?;
    state.rollouts.poke();
    Ok(())
}

/// Drives every queued and running rollout until `stop`.
pub async fn run(state: AppState, stop: CancellationToken) {
    loop {
        if let Err(e) = step_all(&state).await {
            tracing::warn!(error = %e, "driving rollouts");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = state.rollouts.0.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// One look at every driven rollout.
pub async fn step_all(state: &AppState) -> Result<(), DbError> {
    for r in state.db.driven_rollouts().await? {
        step(state, &r).await?;
    }
    Ok(())
}

async fn step(state: &AppState, r: &RolloutRow) -> Result<(), DbError> {
    let policy = state.config.repository(&r.repository).and_then(|repo| repo.rollout.as_ref());
    match r.state {
        RolloutState::Queued if r.wave >= 0 && !state.db.rollout_ahead(r).await? => {
            release(state, r, RolloutState::Queued, 0).await
        }
        RolloutState::Running => {
            let hosts = state.db.rollout_hosts(r.id, Some(r.wave)).await?;
            let reports = state.db.rollout_reports(r.id, r.wave).await?;
            let views = views(&hosts, &reports);
            let decision = match policy {
                Some(policy) => rollout::decide(policy, &progress(r, &views), crate::db::now()),
                // The policy was removed from the configuration: the rest goes at once.
                None => rollout::decide(&released_at_once(), &progress(r, &views), crate::db::now()),
            };
            apply(state, r, decision).await
        }
        _ => Ok(()),
    }
}

fn progress<'a>(r: &RolloutRow, hosts: &'a [HostView]) -> Progress<'a> {
    Progress {
        wave: r.wave.max(0) as usize,
        waves: r.waves.max(0) as usize,
        released_at: r.released_at.unwrap_or(r.created_at),
        settled_at: r.settled_at,
        hosts,
    }
}

fn released_at_once() -> Policy {
    Policy {
        waves: vec![],
        soak_secs: 0,
        offline_after_secs: 1,
        offline: rollout::Offline::Skip,
        supersede: rollout::Supersede::Replace,
    }
}

/// The current wave's hosts as the rule sees them.
fn views(hosts: &[RolloutHostRow], reports: &[(String, i64, String, Option<String>)]) -> Vec<HostView> {
    hosts
        .iter()
        .map(|h| {
            let outcome = match h.generation {
                None => Outcome::Waiting,
                Some(number) => {
                    let seen: Vec<status::Seen<'_>> = reports
                        .iter()
                        .filter(|(host, ..)| *host == h.host)
                        .filter_map(|(_, generation, phase, message)| {
                            Some(status::Seen {
                                generation: *generation,
                                phase: Phase::parse(phase)?,
                                message: message.as_deref(),
                            })
                        })
                        .collect();
                    status::outcome(number, h.newest_released.unwrap_or(number).max(number), &seen)
                }
            };
            HostView { host: h.host.clone(), outcome, last_seen: h.last_seen, waived: h.waived }
        })
        .collect()
}

async fn apply(state: &AppState, r: &RolloutRow, decision: Decision) -> Result<(), DbError> {
    match decision {
        Decision::Wait => Ok(()),
        Decision::Settled => state.db.set_rollout_settled(r.id, r.wave, crate::db::now()).await,
        Decision::Release(wave) => release(state, r, RolloutState::Running, wave as i64).await,
        Decision::Complete => {
            if state.db.set_rollout_state(r.id, &[RolloutState::Running], RolloutState::Completed, None, None).await? {
                tracing::info!(rollout = r.id, "rollout completed");
                state.events.publish(crate::events::Event::RolloutCompleted { rollout: r.into() });
                // A rollout queued behind it may start.
                state.rollouts.poke();
            }
            Ok(())
        }
        Decision::Halt { host, reason } => {
            let halted = RolloutState::Halted;
            if state.db.set_rollout_state(r.id, &[RolloutState::Running], halted, Some(&host), Some(&reason)).await? {
                tracing::warn!(rollout = r.id, wave = r.wave + 1, %host, %reason, "rollout halted");
                let wave = r.wave + 1;
                state.events.publish(crate::events::Event::RolloutHalted { rollout: r.into(), wave, host, reason });
            }
            Ok(())
        }
    }
}

/// Releases wave `to` (from `from` on the current wave) and wakes its hosts' long-polls.
async fn release(state: &AppState, r: &RolloutRow, from: RolloutState, to: i64) -> Result<(), DbError> {
    let Some(hosts) = state.db.release_wave(r.id, from, r.wave, to).await? else { return Ok(()) };
    tracing::info!(rollout = r.id, wave = to + 1, hosts = hosts.len(), "rollout wave released");
    for host in &hosts {
        state.deploys.wake(host);
    }
    // With PostgreSQL, other replicas' long-polls hear of it (`Notice::Released`).
    Ok(())
}

/// `berth rollout resume`: a halted rollout goes on, the failure that halted it accepted.
pub async fn resume(state: &AppState, id: i64) -> Result<RolloutRow, RolloutError> {
    let r = state.db.rollout(id).await?.ok_or(RolloutError::NotFound(id))?;
    if r.state != RolloutState::Halted {
        return Err(RolloutError::WrongState { id, state: r.state.as_str(), what: "only a halted rollout resumes" });
    }
    if let Some(host) = &r.halted_host {
        state.db.waive_rollout_host(id, host).await?;
    }
    if !state.db.set_rollout_state(id, &[RolloutState::Halted], RolloutState::Running, None, None).await? {
        return Err(RolloutError::WrongState { id, state: "changing", what: "try again" });
    }
    tracing::info!(rollout = id, "rollout resumed");
    state.rollouts.poke();
    state.db.rollout(id).await?.ok_or(RolloutError::NotFound(id))
}

/// `berth rollout abort`: an open rollout stops; hosts not reached keep their generation.
pub async fn abort(state: &AppState, id: i64) -> Result<RolloutRow, RolloutError> {
    let r = state.db.rollout(id).await?.ok_or(RolloutError::NotFound(id))?;
    let open = [RolloutState::Queued, RolloutState::Running, RolloutState::Halted];
    if !state.db.set_rollout_state(id, &open, RolloutState::Aborted, r.halted_host.as_deref(), Some("aborted")).await? {
        return Err(RolloutError::WrongState { id, state: r.state.as_str(), what: "only an open rollout aborts" });
    }
    tracing::info!(rollout = id, "rollout aborted");
    state.rollouts.poke();
    state.db.rollout(id).await?.ok_or(RolloutError::NotFound(id))
}

/// A rollout with its hosts, as the API and `berth rollout status` show it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RolloutView {
    /// The rollout.
    #[serde(flatten)]
    pub rollout: RolloutRow,
    /// Its hosts, by wave and name.
    pub hosts: Vec<RolloutHostRow>,
}

/// The newest `limit` rollouts with their hosts.
pub async fn list(state: &AppState, limit: i64) -> Result<Vec<RolloutView>, DbError> {
    let rows = state.db.rollouts_with_hosts(limit).await?;
    Ok(rows.into_iter().map(|(rollout, hosts)| RolloutView { rollout, hosts }).collect())
}

/// One rollout with its hosts.
pub async fn view(state: &AppState, id: i64) -> Result<RolloutView, RolloutError> {
    let rollout = state.db.rollout(id).await?.ok_or(RolloutError::NotFound(id))?;
    Ok(RolloutView { hosts: state.db.rollout_hosts(id, None).await?, rollout })
}
