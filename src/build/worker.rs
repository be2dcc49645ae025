//! Build workers: claim the oldest queued build, run it, record the result. One build is
//! fetched, gated, built host by host (`parallel_hosts` at once), published and turned into
//! generations; a heartbeat proves the worker alive, so a crashed worker's build is settled
//! (run again or failed) instead of staying `running` forever.

use std::{collections::HashMap, path::PathBuf, time::Instant};

use futures::StreamExt;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    capacity, history,
    log::BuildLog,
    model::{BuildState, HostState, Verdict},
    policy, publish,
    trust::CommitTrust,
};
use crate::{
    app::AppState,
    config::Repository,
    db::{now, BuildHostRow, BuildRow, DbError, NewGeneration},
    events::Event,
    metrics::BuildOutcome,
    nix::{self, NixError},
};

/// A build is tried at most this many times when workers keep dying under it.
const MAX_ATTEMPTS: i64 = 3;

/// Why a build failed: its `reason`, as recorded and shown.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The repository left the configuration while the build waited.
    #[error("repository {0:?} is no longer configured")]
    RepositoryGone(String),
    /// git could not fetch the commit.
    #[error("fetching the commit: {0}")]
    Fetch(#[source] NixError),
    /// git could not check the commit's signature.
    #[error("checking the signature: {0}")]
    Signature(#[source] NixError),
    /// git could not say whether the commit descends from the last deployed one.
    #[error("checking ancestry: {0}")]
    Ancestry(#[source] NixError),
    /// Nix could not list the flake's hosts.
    #[error("listing nixosConfigurations: {0}")]
    ListHosts(#[source] NixError),
    /// The flake has no host to build.
    #[error("the flake defines no nixosConfigurations")]
    NoHosts,
    /// Some hosts did not build or publish (each host's error is on its row).
    #[error("{} of {total} hosts failed: {}", failed.len(), failed.join(", "))]
    HostsFailed {
        /// The hosts that failed, in build order.
        failed: Vec<String>,
        /// Hosts in the build.
        total: usize,
    },
    /// The signed-history check could not run.
    #[error(transparent)]
    History(#[from] history::CheckError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A user cancelled it.
    #[error("cancelled")]
    Cancelled,
    /// This process stopped under it (it is run again at the next start).
    #[error("the server stopped during the build; it will run again")]
    Stopped,
}

/// Why one host of a build failed: its row's `error`.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The GC-root directory could not be made.
    #[error("creating {}: {source}", dir.display())]
    GcRootDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `nix build` failed (evaluation or build; with the log tail), after `seconds`.
    #[error("{source} (after {seconds:.1} s)")]
    Nix {
        /// What Nix said.
        source: NixError,
        /// How long it ran.
        seconds: f64,
    },
    /// The closure could not be published.
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
}

/// Runs `concurrent_builds` workers until `shutdown` fires.
pub fn spawn(state: AppState, shutdown: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let workers = state.config.builder.concurrent_builds;
    (0..workers)
        .map(|n| {
            let worker = Worker { id: format!("{}-{}-{n}", hostname(), std::process::id()), state: state.clone() };
            let shutdown = shutdown.clone();
            tokio::spawn(async move { worker.run(shutdown).await })
        })
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "berth".into())
}

struct Worker {
    id: String,
    state: AppState,
}

impl Worker {
    async fn run(&self, shutdown: CancellationToken) {
        let stale = self.state.config.builder.stale_after;
        loop {
            let cutoff = now() - stale.as_secs() as i64;
            if let Err(e) = self.state.db.recover_builds(cutoff, MAX_ATTEMPTS).await {
                tracing::error!(error = %e, "recovering interrupted builds");
            }
            loop {
                match self.state.db.claim_build(&self.id).await {
                    Ok(Some(build)) => self.run_build(build, &shutdown).await,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "claiming a build");
                        break;
                    }
                }
                if shutdown.is_cancelled() {
                    return;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.state.builds.woken() => {},
                _ = tokio::time::sleep(stale / 2) => {},
            }
        }
    }

    async fn run_build(&self, build: BuildRow, shutdown: &CancellationToken) {
        let span =
            tracing::info_span!("build", id = build.id, repository = %build.repository, commit = %build.commit_sha);
        self.run_build_in_span(build, shutdown).instrument(span).await
    }

    async fn run_build_in_span(&self, build: BuildRow, shutdown: &CancellationToken) {
        let id = build.id;
        let started = std::time::Instant::now();
        tracing::info!(branch = %build.branch, attempt = build.attempts, "build started");
        self.state.events.publish(Event::BuildStarted { build: (&build).into() });
        let logs = self.state.config.data_dir.join("logs");
        let log = match BuildLog::open(&logs, id).await {
            Ok(log) => log,
            Err(e) => {
                self.state.metrics.builds.of(BuildOutcome::Failed).observe(started.elapsed());
                return self.finish(&build, BuildState::Failed, &format!("cannot write the build log: {e}")).await;
            }
        };
        let cancel = self.state.builds.start(id);
        let heartbeat = self.heartbeat(id, cancel.clone());
        recorded(self.state.db.clear_build_hosts(id).await, "clearing the hosts of an earlier attempt");
        recorded(self.state.db.clear_build_commits(id).await, "clearing the commits an earlier attempt checked");
        let outcome = tokio::select! {
            outcome = self.execute(&build, &log) => outcome,
            _ = cancel.cancelled() => Err(BuildError::Cancelled),
            _ = shutdown.cancelled() => Err(BuildError::Stopped),
        };
        heartbeat.abort();
        self.state.builds.end(id);
        let (state, reason) = match outcome {
            Ok(summary) => (BuildState::Succeeded, summary),
            Err(error) => (BuildState::Failed, error.to_string()),
        };
        log.line(format!("build {id} {state}: {reason}"));
        if let Err(e) = log.finish(&self.state.store, id).await {
            tracing::error!(error = %e, "storing the build log");
        }
        if shutdown.is_cancelled() && !cancel.is_cancelled() {
            // Leave it `running`: the next start requeues it (recover_builds).
            return;
        }
        let outcome = match state {
            _ if cancel.is_cancelled() => BuildOutcome::Cancelled,
            BuildState::Succeeded => BuildOutcome::Succeeded,
            _ => BuildOutcome::Failed,
        };
        self.state.metrics.builds.of(outcome).observe(started.elapsed());
        self.finish(&build, state, &reason).await;
    }

    async fn finish(&self, build: &BuildRow, state: BuildState, reason: &str) {
        tracing::info!(%state, reason, "build ended");
        if let Err(e) = self.state.db.finish_build(build.id, state.as_str(), Some(reason)).await {
            tracing::error!(error = %e, "recording the end of build {}", build.id);
        }
        self.state.events.publish(Event::of_build_end(build, state == BuildState::Succeeded, reason));
    }

    /// Beats every third of the stale period; cancels when the build is no longer ours.
    fn heartbeat(&self, id: i64, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let (db, worker, every) = (self.state.db.clone(), self.id.clone(), self.state.config.builder.stale_after / 3);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Ok(false) = db.heartbeat_build(id, &worker).await {
                    cancel.cancel();
                    return;
                }
            }
        })
    }

    /// Runs one build to its end; `Ok` carries the summary, `Err` the reason it failed.
    async fn execute(&self, build: &BuildRow, log: &BuildLog) -> Result<String, BuildError> {
        let config = &self.state.config;
        let repo =
            config.repository(&build.repository).ok_or_else(|| BuildError::RepositoryGone(build.repository.clone()))?;
        let mirror = config.data_dir.join("repos").join(format!("{}.git", repo.name));
        log.line(format!("fetching {} at {}", repo.url, build.commit_sha));
        let trust = {
            let _mirror = self.state.builds.lock_mirror(&repo.name).await;
            nix::git::fetch(&mirror, &repo.url, &build.commit_sha).await.map_err(BuildError::Fetch)?;
            self.check_commit(build, repo, &mirror, log).await?
        };
        let flake = nix::flake::flake_ref(&mirror, &build.commit_sha);
        let hosts: Vec<String> = if build.hosts.is_empty() {
            nix::flake::list_hosts(&flake, self.state.config.builder.store.as_deref())
                .await
                .map_err(BuildError::ListHosts)?
        } else {
            build.hosts.split_whitespace().map(str::to_owned).collect()
        };
        if hosts.is_empty() {
            return Err(BuildError::NoHosts);
        }
        log.line(format!("building {} host(s): {}", hosts.len(), hosts.join(" ")));
        let built = self.build_hosts(build, &flake, &hosts, log).await;
        let failed: Vec<String> = built.iter().filter(|(_, r)| r.is_err()).map(|(h, _)| h.clone()).collect();
        if !failed.is_empty() {
            for (host, _) in built.iter().filter(|(_, r)| r.is_ok()) {
                self.record_verdict(build.id, host, Verdict::HeldBack).await;
            }
            return Err(BuildError::HostsFailed { failed, total: hosts.len() });
        }
        let built: Vec<(String, String)> = built.into_iter().map(|(h, r)| (h, r.expect("checked"))).collect();
        self.deploy(build, repo, &mirror, &trust, &built, log).await
    }

    /// The commit's own signature, recorded on the build (CI learns it whatever the branch;
    /// the history under it is checked when the build would deploy).
    async fn check_commit(
        &self,
        build: &BuildRow,
        repo: &Repository,
        mirror: &std::path::Path,
        log: &BuildLog,
    ) -> Result<CommitTrust, BuildError> {
        let signature = nix::git::verify_commit(mirror, &build.commit_sha, &history::policy(repo))
            .await
            .map_err(BuildError::Signature)?;
        let trust = history::trust_of(signature);
        log.line(format!("commit signature: {trust}"));
        self.state.db.set_build_signature(build.id, &trust.to_string()).await?;
        Ok(trust)
    }

    async fn build_hosts(
        &self,
        build: &BuildRow,
        flake: &str,
        hosts: &[String],
        log: &BuildLog,
    ) -> Vec<(String, Result<String, HostError>)> {
        let parallel = self.state.config.builder.parallel_hosts;
        futures::stream::iter(hosts.iter().cloned())
            .map(|host| async move {
                let result = self.build_host(build, flake, &host, log).await;
                (host, result)
            })
            .buffered(parallel)
            .collect()
            .await
    }

    async fn build_host(&self, build: &BuildRow, flake: &str, host: &str, log: &BuildLog) -> Result<String, HostError> {
        let mut row = BuildHostRow {
            host: host.to_owned(),
            state: HostState::Building.as_str().into(),
            store_path: None,
            error: None,
            generation: None,
            started_at: Some(now()),
            finished_at: None,
            verdict: None,
        };
        recorded(self.state.db.set_build_host(build.id, &row).await, "recording a host's state");
        let result = self.build_and_publish(build, flake, host, log, &mut row).await;
        row.finished_at = Some(now());
        match &result {
            Ok(_) => row.state = HostState::Succeeded.as_str().into(),
            Err(e) => {
                row.state = HostState::Failed.as_str().into();
                row.error = Some(e.to_string());
                row.verdict = Some(Verdict::Failed.as_str().into());
                log.line(format!("[{host}] failed: {e}"));
            }
        }
        recorded(self.state.db.set_build_host(build.id, &row).await, "recording a host's state");
        result
    }

    async fn build_and_publish(
        &self,
        build: &BuildRow,
        flake: &str,
        host: &str,
        log: &BuildLog,
        row: &mut BuildHostRow,
    ) -> Result<String, HostError> {
        let config = &self.state.config;
        let out_link = gc_root(&config.data_dir, host, build.id);
        if let Some(dir) = out_link.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| HostError::GcRootDir { dir: dir.to_owned(), source })?;
        }
        let (lines, evaluated) = timed(log.sender(format!("[{host}] ")));
        let store = config.builder.store.as_deref();
        let started = Instant::now();
        let built = nix::flake::build_toplevel(flake, host, store, &out_link, config.builder.timeout, lines).await;
        let took = started.elapsed();
        // The sender went with the build: the forwarder has seen every line once it ends.
        let evaluation = evaluated.await.ok().flatten().map_or(took, |at| at.duration_since(started));
        let path = built.map_err(|source| HostError::Nix { source, seconds: took.as_secs_f64() })?;
        self.state.metrics.host_evaluation.observe(evaluation);
        self.state.metrics.host_build.observe(took);
        let seconds = |d: std::time::Duration| format!("{:.1} s", d.as_secs_f64());
        log.line(format!("[{host}] evaluated in {}, built in {} in all", seconds(evaluation), seconds(took)));
        log.line(format!("[{host}] built {path}; publishing its closure"));
        row.state = HostState::Publishing.as_str().into();
        row.store_path = Some(path.clone());
        recorded(self.state.db.set_build_host(build.id, row).await, "recording a host's state");
        let counts = publish::closure(&self.state, &path).await?;
        log.line(format!("[{host}] published: {} new path(s), {} already in the cache", counts.new, counts.present));
        Ok(path)
    }

    /// Creates the generations the branch policy and the gate allow.
    async fn deploy(
        &self,
        build: &BuildRow,
        repo: &Repository,
        mirror: &std::path::Path,
        trust: &CommitTrust,
        built: &[(String, String)],
        log: &BuildLog,
    ) -> Result<String, BuildError> {
        let db = &self.state.db;
        let targets = policy::targets(&repo.deploy_branch, &repo.test_branch_prefix, &build.branch);
        // What each host is compared with: generations an aborted or replaced rollout holds
        // (or that this build's rollout is about to replace) never reach their host, so a
        // system equal to one of them is still new.
        let replaces = repo.rollout.as_ref().is_some_and(|p| p.supersede == crate::deploy::rollout::Supersede::Replace)
            && build.branch == repo.deploy_branch;
        let mut current = HashMap::new();
        for (host, _) in built {
            if let Some(path) = db.comparable_store_path(host, replaces).await? {
                current.insert(host.clone(), path);
            }
        }
        let new = policy::new_generations(&targets, built, &current);
        if new.is_empty() {
            self.record_verdicts(build.id, &policy::verdicts(&targets, built, &current, None)).await;
            let why = if targets == policy::Targets::None {
                format!("branch {} deploys nothing", build.branch)
            } else {
                "no host's system changed".to_owned()
            };
            return Ok(format!("built {} host(s); {why}", built.len()));
        }
        let fast_forward = self.fast_forward(build, repo, mirror).await?;
        let check = history::Check { state: &self.state, build, repo, mirror, log };
        let refusal = check.gate(&targets, trust, fast_forward).await?.err();
        let verdicts = policy::verdicts(&targets, built, &current, refusal.as_ref());
        self.record_verdicts(build.id, &verdicts).await;
        if let Some(refusal) = refusal {
            log.line(format!("not deploying: {refusal}"));
            return Ok(format!("built {} host(s); {refusal}; it was built but not deployed", built.len()));
        }
        let hosts: Vec<String> = new.iter().map(|(host, _)| host.to_string()).collect();
        let rollout =
            crate::deploy::rollouts::start(&self.state, repo, &build.branch, &build.commit_sha, build.id, &hosts)
                .await?;
        if let Some(r) = &rollout {
            log.line(format!("rollout {}: generations are held until their wave is released", r.id));
        }
        let mut made = Vec::new();
        for (host, path) in &new {
            // The diff stored with the generation, against what the host runs now.
            let base = self.running_system(host).await;
            let diff = match crate::deploy::closures::between(db, base.as_ref().map(|(_, p)| p.as_str()), path).await {
                Ok(diff) => Some(diff),
                Err(e) => {
                    tracing::warn!(error = %e, host, "computing the closure diff");
                    None
                }
            };
            let json = diff.as_ref().map(serde_json::to_string).transpose().unwrap_or_else(|e| {
                tracing::warn!(error = %e, host, "serializing the closure diff");
                None
            });
            let g = NewGeneration {
                host,
                repository: &repo.name,
                store_path: path,
                commit_sha: &build.commit_sha,
                branch: &build.branch,
                build_id: Some(build.id),
                signer: trust.signer(),
                rollout_id: rollout.as_ref().map(|r| r.id),
                held: rollout.is_some(),
                diff_from: base.as_ref().map(|(n, _)| *n),
                diff: json.as_deref(),
            };
            let number = crate::deploy::watch::add_generation(&self.state, &g).await?;
            db.set_build_host_generation(build.id, host, number).await?;
            log.line(format!("[{host}] generation {number}: {path}"));
            if let Some(diff) = &diff {
                let against = base.as_ref().map_or_else(|| "nothing".to_owned(), |(n, _)| n.to_string());
                log.line(format!("[{host}] closure: {diff} (from generation {against}, stored)"));
            }
            made.push(format!("{host}#{number}"));
        }
        if let Some(r) = &rollout {
            crate::deploy::rollouts::ready(&self.state, r.id).await?;
        }
        Ok(format!("built {} host(s); new generations: {}", built.len(), made.join(", ")))
    }

    /// What a new generation's diff is taken against: the generation `host` last confirmed
    /// running and its system, or, when it has confirmed none, its newest generation (none
    /// for a first one: the diff is from nothing). A failed lookup is logged and counts as
    /// none.
    async fn running_system(&self, host: &str) -> Option<(i64, String)> {
        let db = &self.state.db;
        let lookup = async {
            let row = match db.host_status(host).await?.active_generation {
                Some(active) => db.generation(host, active).await?,
                None => db.latest_generation(host).await?,
            };
            Ok::<_, DbError>(row.map(|g| (g.number, g.store_path)))
        };
        lookup.await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, host, "reading what the host runs");
            None
        })
    }

    /// Records each host's verdict but `deployed`, which comes with its generation.
    async fn record_verdicts(&self, id: i64, verdicts: &[(String, Verdict)]) {
        for (host, verdict) in verdicts.iter().filter(|(_, v)| *v != Verdict::Deployed) {
            self.record_verdict(id, host, *verdict).await;
        }
    }

    async fn record_verdict(&self, id: i64, host: &str, verdict: Verdict) {
        let result = self.state.db.set_build_host_verdict(id, host, verdict.as_str()).await;
        recorded(result, "recording what a build decided for a host");
    }

    /// `Some(false)` when the deploy branch was rewound and the repository refuses that.
    async fn fast_forward(
        &self,
        build: &BuildRow,
        repo: &Repository,
        mirror: &std::path::Path,
    ) -> Result<Option<bool>, BuildError> {
        if !repo.require_fast_forward || build.branch != repo.deploy_branch {
            return Ok(None);
        }
        let Some(last) = self.state.db.last_deployed_commit(&repo.name, &repo.deploy_branch).await? else {
            return Ok(None);
        };
        nix::git::is_ancestor(mirror, &last, &build.commit_sha).await.map(Some).map_err(BuildError::Ancestry)
    }
}

/// A sender of Nix's stderr lines to `log`, and the forwarder that ends (once every sender
/// is gone) with when the first line showing the evaluation over went by
/// (`capacity::evaluation_ended`).
fn timed(log: UnboundedSender<String>) -> (UnboundedSender<String>, tokio::task::JoinHandle<Option<Instant>>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let forwarder = tokio::spawn(async move {
        let mut ended = None;
        while let Some(line) = rx.recv().await {
            if ended.is_none() && capacity::evaluation_ended(&line) {
                ended = Some(Instant::now());
            }
            // The log's writer is gone only when the build is over: the timing still counts.
            let _ = log.send(line);
        }
        ended
    });
    (tx, forwarder)
}

/// Logs a failed write of a build's progress: the build goes on (its end is recorded by
/// `finish`), and what the status lacks is in the log.
fn recorded(result: Result<(), crate::db::DbError>, what: &str) {
    if let Err(e) = result {
        tracing::error!(error = %e, "{what}");
    }
}

/// The GC root that keeps a host's build output alive on the build host until retention
/// releases it.
pub fn gc_root(data_dir: &std::path::Path, host: &str, build: i64) -> PathBuf {
    data_dir.join("gcroots").join(host).join(format!("build-{build}"))
}
