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
    model::{BuildState, HostState},
    policy, publish,
    trust::CommitTrust,
};
use crate::{
    app::AppState,
    config::Repository,
    db::{now, BuildHostRow, BuildRow, NewGeneration},
    nix,
};

/// A build is tried at most this many times when workers keep dying under it.
const MAX_ATTEMPTS: i64 = 3;

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
        tracing::info!(branch = %build.branch, attempt = build.attempts, "build started");
        let logs = self.state.config.data_dir.join("logs");
        let log = match BuildLog::open(&logs, id).await {
            Ok(log) => log,
            Err(e) => return self.finish(id, BuildState::Failed, &format!("cannot write the build log: {e}")).await,
        };
        let cancel = self.state.builds.start(id);
        let heartbeat = self.heartbeat(id, cancel.clone());
        recorded(self.state.db.clear_build_hosts(id).await, "clearing the hosts of an earlier attempt");
        recorded(self.state.db.clear_build_commits(id).await, "clearing the commits an earlier attempt checked");
        let outcome = tokio::select! {
            outcome = self.execute(&build, &log) => outcome,
            _ = cancel.cancelled() => Err("cancelled".to_owned()),
            _ = shutdown.cancelled() => Err("the server stopped during the build; it will run again".to_owned()),
        };
        heartbeat.abort();
        self.state.builds.end(id);
        let (state, reason) = match outcome {
            Ok(summary) => (BuildState::Succeeded, summary),
            Err(reason) => (BuildState::Failed, reason),
        };
        log.line(format!("build {id} {state}: {reason}"));
        if let Err(e) = log.finish(&self.state.store, id).await {
            tracing::error!(error = %e, "storing the build log");
        }
        if shutdown.is_cancelled() && !cancel.is_cancelled() {
            // Leave it `running`: the next start requeues it (recover_builds).
            return;
        }
        self.finish(id, state, &reason).await;
    }

    async fn finish(&self, id: i64, state: BuildState, reason: &str) {
        tracing::info!(%state, reason, "build ended");
        if let Err(e) = self.state.db.finish_build(id, state.as_str(), Some(reason)).await {
            tracing::error!(error = %e, "recording the end of build {id}");
        }
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
    async fn execute(&self, build: &BuildRow, log: &BuildLog) -> Result<String, String> {
        let config = &self.state.config;
        let repo = config
            .repository(&build.repository)
            .ok_or_else(|| format!("repository {:?} is no longer configured", build.repository))?;
        let mirror = config.data_dir.join("repos").join(format!("{}.git", repo.name));
        log.line(format!("fetching {} at {}", repo.url, build.commit_sha));
        let trust = {
            let _mirror = self.state.builds.lock_mirror(&repo.name).await;
            nix::git::fetch(&mirror, &repo.url, &build.commit_sha)
                .await
                .map_err(|e| format!("fetching the commit: {e}"))?;
            self.check_commit(build, repo, &mirror, log).await?
        };
        let flake = nix::flake::flake_ref(&mirror, &build.commit_sha);
        let hosts: Vec<String> = if build.hosts.is_empty() {
            nix::flake::list_hosts(&flake, self.state.config.builder.store.as_deref())
                .await
                .map_err(|e| format!("listing nixosConfigurations: {e}"))?
        } else {
            build.hosts.split_whitespace().map(str::to_owned).collect()
        };
        if hosts.is_empty() {
            return Err("the flake defines no nixosConfigurations".into());
        }
        log.line(format!("building {} host(s): {}", hosts.len(), hosts.join(" ")));
        let built = self.build_hosts(build, &flake, &hosts, log).await;
        let failed: Vec<&str> = built.iter().filter(|(_, r)| r.is_err()).map(|(h, _)| h.as_str()).collect();
        if !failed.is_empty() {
            return Err(format!("{} of {} hosts failed: {}", failed.len(), hosts.len(), failed.join(", ")));
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
    ) -> Result<CommitTrust, String> {
        let signature = nix::git::verify_commit(mirror, &build.commit_sha, &history::policy(repo))
            .await
            .map_err(|e| format!("checking the signature: {e}"))?;
        let trust = history::trust_of(signature);
        log.line(format!("commit signature: {trust}"));
        self.state
            .db
            .set_build_signature(build.id, &trust.to_string())
            .await
            .map_err(|e| format!("recording the signature: {e}"))?;
        Ok(trust)
    }

    async fn build_hosts(
        &self,
        build: &BuildRow,
        flake: &str,
        hosts: &[String],
        log: &BuildLog,
    ) -> Vec<(String, Result<String, String>)> {
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

    async fn build_host(&self, build: &BuildRow, flake: &str, host: &str, log: &BuildLog) -> Result<String, String> {
        let mut row = BuildHostRow {
            host: host.to_owned(),
            state: HostState::Building.as_str().into(),
            store_path: None,
            error: None,
            generation: None,
            started_at: Some(now()),
            finished_at: None,
        };
        recorded(self.state.db.set_build_host(build.id, &row).await, "recording a host's state");
        let result = self.build_and_publish(build, flake, host, log, &mut row).await;
        row.finished_at = Some(now());
        match &result {
            Ok(_) => row.state = HostState::Succeeded.as_str().into(),
            Err(e) => {
                row.state = HostState::Failed.as_str().into();
                row.error = Some(e.clone());
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
    ) -> Result<String, String> {
        let config = &self.state.config;
        let out_link = gc_root(&config.data_dir, host, build.id);
        if let Some(dir) = out_link.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let (lines, evaluated) = timed(log.sender(format!("[{host}] ")));
        let store = config.builder.store.as_deref();
        let started = Instant::now();
        let built = nix::flake::build_toplevel(flake, host, store, &out_link, config.builder.timeout, lines).await;
        let took = started.elapsed();
        // The sender went with the build: the forwarder has seen every line once it ends.
        let evaluation = evaluated.await.ok().flatten().map_or(took, |at| at.duration_since(started));
        let path = built.map_err(|e| format!("{e} (after {:.1} s)", took.as_secs_f64()))?;
        self.state.metrics.host_evaluation.observe(evaluation);
        self.state.metrics.host_build.observe(took);
        let seconds = |d: std::time::Duration| format!("{:.1} s", d.as_secs_f64());
        log.line(format!("[{host}] evaluated in {}, built in {} in all", seconds(evaluation), seconds(took)));
        log.line(format!("[{host}] built {path}; publishing its closure"));
        row.state = HostState::Publishing.as_str().into();
        row.store_path = Some(path.clone());
        recorded(self.state.db.set_build_host(build.id, row).await, "recording a host's state");
        let counts = publish::closure(&self.state, &path).await.map_err(|e| e.to_string())?;
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
    ) -> Result<String, String> {
        let db = &self.state.db;
        let targets = policy::targets(&repo.deploy_branch, &repo.test_branch_prefix, &build.branch);
        let mut current = HashMap::new();
        for (host, _) in built {
            if let Some(g) = db.latest_generation(host).await.map_err(|e| e.to_string())? {
                current.insert(host.clone(), g.store_path);
            }
        }
        let new = policy::new_generations(&targets, built, &current);
        if new.is_empty() {
            let why = if targets == policy::Targets::None {
                format!("branch {} deploys nothing", build.branch)
            } else {
                "no host's system changed".to_owned()
            };
            return Ok(format!("built {} host(s); {why}", built.len()));
        }
        let fast_forward = self.fast_forward(build, repo, mirror).await?;
        let check = history::Check { state: &self.state, build, repo, mirror, log };
        if let Err(refusal) = check.gate(&targets, trust, fast_forward).await.map_err(|e| e.to_string())? {
            log.line(format!("not deploying: {refusal}"));
            return Ok(format!("built {} host(s); {refusal}; it was built but not deployed", built.len()));
        }
        let mut made = Vec::new();
        for (host, path) in &new {
            let g = NewGeneration {
                host,
                repository: &repo.name,
                store_path: path,
                commit_sha: &build.commit_sha,
                branch: &build.branch,
                build_id: Some(build.id),
                signer: trust.signer(),
            };
            let number = crate::deploy::watch::add_generation(&self.state, &g).await.map_err(|e| e.to_string())?;
            db.set_build_host_generation(build.id, host, number).await.map_err(|e| e.to_string())?;
            log.line(format!("[{host}] generation {number}: {path}"));
            made.push(format!("{host}#{number}"));
        }
        Ok(format!("built {} host(s); new generations: {}", built.len(), made.join(", ")))
    }

    /// `Some(false)` when the deploy branch was rewound and the repository refuses that.
    async fn fast_forward(
        &self,
        build: &BuildRow,
        repo: &Repository,
        mirror: &std::path::Path,
    ) -> Result<Option<bool>, String> {
        if !repo.require_fast_forward || build.branch != repo.deploy_branch {
            return Ok(None);
        }
        let Some(last) =
            self.state.db.last_deployed_commit(&repo.name, &repo.deploy_branch).await.map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        nix::git::is_ancestor(mirror, &last, &build.commit_sha)
            .await
            .map(Some)
            .map_err(|e| format!("checking ancestry: {e}"))
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
