//! The persistent build queue and per-host results. Claiming is one conditional UPDATE, so
//! two workers (or two replicas) never run the same build; with PostgreSQL the row it picks
//! is locked with `SKIP LOCKED`, so a worker that loses a race takes the next queued build
//! instead of finding none.

use super::{now, on_pool, Db, DbError};

/// One build request and where it is.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BuildRow {
    /// Build id.
    pub id: i64,
    /// Repository name (from the configuration).
    pub repository: String,
    /// Full commit hash.
    pub commit_sha: String,
    /// Branch the commit was pushed to.
    pub branch: String,
    /// Requested hosts, space-separated; empty for every host of the flake.
    pub hosts: String,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled`.
    pub state: String,
    /// Why it failed, or what it deployed.
    pub reason: Option<String>,
    /// What the signature check found on the commit itself.
    pub signature: Option<String>,
    /// Where the signed-history check started (see `build_commits`).
    pub history_base: Option<String>,
    /// Accepted at.
    pub created_at: i64,
    /// Started at.
    pub started_at: Option<i64>,
    /// Ended at.
    pub finished_at: Option<i64>,
    /// Times a worker started it.
    pub attempts: i64,
}

/// Which builds `find_builds` lists (`None`: any).
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildFilter<'a> {
    /// Repository name.
    pub repository: Option<&'a str>,
    /// Branch.
    pub branch: Option<&'a str>,
    /// State (its stored spelling).
    pub state: Option<&'a str>,
}

/// One host of a build.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct BuildHostRow {
    /// Host name.
    pub host: String,
    /// `queued`, `building`, `publishing`, `succeeded`, `failed`.
    pub state: String,
    /// The built toplevel.
    pub store_path: Option<String>,
    /// Why it failed (with the log tail).
    pub error: Option<String>,
    /// The generation this build made for the host, if any.
    pub generation: Option<i64>,
    /// Started at.
    pub started_at: Option<i64>,
    /// Ended at.
    pub finished_at: Option<i64>,
    /// What the build decided for the host (`build::model::Verdict`), once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
}

/// A host's newest build: what `berth hosts` shows beside the host.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct LastBuild {
    /// Build id.
    pub id: i64,
    /// Its commit.
    pub commit_sha: String,
    /// Its branch.
    pub branch: String,
    /// The build's state (`build::model::BuildState`).
    pub state: String,
    /// The host's state in it (`build::model::HostState`).
    pub host_state: String,
    /// What it decided for the host (`build::model::Verdict`), once it did.
    pub verdict: Option<String>,
    /// The generation it made for the host, if any.
    pub generation: Option<i64>,
}

const BUILD_COLUMNS: &str = "id, repository, commit_sha, branch, hosts, state, reason, signature, history_base, \
                             created_at, started_at, finished_at, attempts";

impl Db {
    /// Queues a build, unless the same repository, commit, branch and hosts are already
    /// queued, running or built: then that build's id is returned and `false`. Also when
    /// two replicas receive the same request at once (a webhook delivered twice): they take
    /// turns, and the second finds the first's build.
    pub async fn enqueue_build(
        &self,
        repository: &str,
        commit: &str,
        branch: &str,
        hosts: &str,
    ) -> Result<(i64, bool), DbError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(super::write_begin(pool)).await?;
            if let Some(lock) = super::lock_builds(pool) {
                sqlx::query(lock).execute(&mut *tx).await?;
            }
            let existing: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM builds WHERE repository = $1 AND commit_sha = $2 AND branch = $3 AND hosts = $4
                 AND state IN ('queued', 'running', 'succeeded') ORDER BY id DESC LIMIT 1",
            )
            .bind(repository).bind(commit).bind(branch).bind(hosts).fetch_optional(&mut *tx).await?;
            if let Some(id) = existing {
                return Ok((id, false));
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO builds (repository, commit_sha, branch, hosts, state, created_at, attempts)
                 VALUES ($1, $2, $3, $4, 'queued', $5, 0) RETURNING id",
            )
            .bind(repository).bind(commit).bind(branch).bind(hosts).bind(now()).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            Ok((id, true))
        })
    }

    /// Takes the oldest queued build for `worker`, if any. `None` means no build is queued
    /// that no one else is taking: concurrent claimers (other workers, other replicas) each
    /// get a different build.
    pub async fn claim_build(&self, worker: &str) -> Result<Option<BuildRow>, DbError> {
        on_pool!(self, pool => {
            // PostgreSQL, READ COMMITTED: without SKIP LOCKED two claimers pick the same row,
            // the second waits for the first's commit, re-checks `state = 'queued'`, and
            // updates nothing although other builds are queued.
            let sql = format!(
                "UPDATE builds SET state = 'running', claimed_by = $1, started_at = $2, heartbeat_at = $2,
                        attempts = attempts + 1, reason = NULL
                 WHERE id = (SELECT id FROM builds WHERE state = 'queued' ORDER BY id LIMIT 1 {})
                   AND state = 'queued'
                 RETURNING {BUILD_COLUMNS}",
                super::skip_locked(pool)
            );
            Ok(sqlx::query_as(&sql).bind(worker).bind(now()).fetch_optional(pool).await?)
        })
    }

    /// Records that `worker` still runs build `id`; false when the build is no longer
    /// running for it (cancelled, or taken over after a crash).
    pub async fn heartbeat_build(&self, id: i64, worker: &str) -> Result<bool, DbError> {
        on_pool!(self, pool => Ok(sqlx::query(
            "UPDATE builds SET heartbeat_at = $1 WHERE id = $2 AND claimed_by = $3 AND state = 'running'",
        ).bind(now()).bind(id).bind(worker).execute(pool).await?.rows_affected() == 1))
    }

    /// Settles builds left `running` by a crashed worker (no heartbeat since `stale_before`):
    /// run again when they were tried fewer than `max_attempts` times, failed otherwise.
    /// Returns (requeued, failed).
    pub async fn recover_builds(&self, stale_before: i64, max_attempts: i64) -> Result<(u64, u64), DbError> {
        on_pool!(self, pool => {
            let failed = sqlx::query(
                "UPDATE builds SET state = 'failed', finished_at = $1,
                        reason = 'interrupted ' || attempts || ' times (server stopped or crashed while building)'
                 WHERE state = 'running' AND COALESCE(heartbeat_at, 0) < $2 AND attempts >= $3",
            ).bind(now()).bind(stale_before).bind(max_attempts).execute(pool).await?.rows_affected();
            let requeued = sqlx::query(
                "UPDATE builds SET state = 'queued', claimed_by = NULL,
                        reason = 'interrupted (server stopped or crashed while building); queued again'
                 WHERE state = 'running' AND COALESCE(heartbeat_at, 0) < $1",
            ).bind(stale_before).execute(pool).await?.rows_affected();
            Ok((requeued, failed))
        })
    }

    /// Ends a running build.
    pub async fn finish_build(&self, id: i64, state: &str, reason: Option<&str>) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE builds SET state = $1, reason = $2, finished_at = $3 WHERE id = $4 AND state = 'running'")
                .bind(state).bind(reason).bind(now()).bind(id).execute(pool).await?;
            Ok(())
        })
    }

    /// Records what the signature check found on the commit itself.
    pub async fn set_build_signature(&self, id: i64, signature: &str) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE builds SET signature = $1 WHERE id = $2").bind(signature).bind(id).execute(pool).await?;
            Ok(())
        })
    }

    /// Cancels a queued or running build; false when it had already ended.
    pub async fn cancel_build(&self, id: i64) -> Result<bool, DbError> {
        on_pool!(self, pool => Ok(sqlx::query(
            "UPDATE builds SET state = 'cancelled', reason = 'cancelled by a user', finished_at = $1
             WHERE id = $2 AND state IN ('queued', 'running')",
        ).bind(now()).bind(id).execute(pool).await?.rows_affected() == 1))
    }

    /// One build.
    pub async fn build(&self, id: i64) -> Result<Option<BuildRow>, DbError> {
        let sql = format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = $1");
        on_pool!(self, pool => Ok(sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?))
    }

    /// The most recent builds, newest first.
    pub async fn recent_builds(&self, limit: i64) -> Result<Vec<BuildRow>, DbError> {
        let sql = format!("SELECT {BUILD_COLUMNS} FROM builds ORDER BY id DESC LIMIT $1");
        on_pool!(self, pool => Ok(sqlx::query_as(&sql).bind(limit).fetch_all(pool).await?))
    }

    /// The most recent builds matching `filter`, newest first.
    pub async fn find_builds(&self, filter: &BuildFilter<'_>, limit: i64) -> Result<Vec<BuildRow>, DbError> {
        // A NULL parameter matches every row, so one statement serves every combination.
        let sql = format!(
            "SELECT {BUILD_COLUMNS} FROM builds
             WHERE ($1 IS NULL OR repository = $1) AND ($2 IS NULL OR branch = $2) AND ($3 IS NULL OR state = $3)
             ORDER BY id DESC LIMIT $4"
        );
        on_pool!(self, pool => Ok(sqlx::query_as(&sql)
            .bind(filter.repository).bind(filter.branch).bind(filter.state).bind(limit)
            .fetch_all(pool).await?))
    }

    /// A build's hosts, by name.
    pub async fn build_hosts(&self, id: i64) -> Result<Vec<BuildHostRow>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT host, state, store_path, error, generation, started_at, finished_at, verdict
             FROM build_hosts WHERE build_id = $1 ORDER BY host",
        ).bind(id).fetch_all(pool).await?))
    }

    /// Sets one host's state (and what is known: store path, error, generation).
    pub async fn set_build_host(&self, id: i64, row: &BuildHostRow) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO build_hosts (build_id, host, state, store_path, error, generation, started_at, finished_at, verdict)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (build_id, host) DO UPDATE SET state = $3, store_path = $4, error = $5,
                     generation = $6, started_at = $7, finished_at = $8, verdict = $9",
            )
            .bind(id).bind(&row.host).bind(&row.state).bind(&row.store_path).bind(&row.error)
            .bind(row.generation).bind(row.started_at).bind(row.finished_at).bind(&row.verdict).execute(pool).await?;
            Ok(())
        })
    }

    /// Records the generation a build made for one of its hosts (its verdict: `deployed`).
    pub async fn set_build_host_generation(&self, id: i64, host: &str, generation: i64) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE build_hosts SET generation = $1, verdict = 'deployed' WHERE build_id = $2 AND host = $3")
                .bind(generation).bind(id).bind(host).execute(pool).await?;
            Ok(())
        })
    }

    /// Records what a build decided for one of its hosts (`build::model::Verdict`).
    pub async fn set_build_host_verdict(&self, id: i64, host: &str, verdict: &str) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE build_hosts SET verdict = $1 WHERE build_id = $2 AND host = $3")
                .bind(verdict).bind(id).bind(host).execute(pool).await?;
            Ok(())
        })
    }

    /// Every host's newest build, in one query, by host name.
    pub async fn last_builds(&self) -> Result<Vec<(String, LastBuild)>, DbError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            host: String,
            #[sqlx(flatten)]
            build: LastBuild,
        }
        let rows: Vec<Row> = on_pool!(self, pool => sqlx::query_as(
            "SELECT bh.host, b.id, b.commit_sha, b.branch, b.state, bh.state AS host_state, bh.verdict, bh.generation
             FROM build_hosts bh JOIN builds b ON b.id = bh.build_id
             WHERE bh.build_id = (SELECT MAX(x.build_id) FROM build_hosts x WHERE x.host = bh.host)
             ORDER BY bh.host",
        ).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|r| (r.host, r.build)).collect())
    }

    /// How many builds are queued and how many running, in one query (for `/metrics`).
    pub async fn active_builds(&self) -> Result<(u64, u64), DbError> {
        let rows: Vec<(String, i64)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT state, COUNT(*) FROM builds WHERE state IN ('queued', 'running') GROUP BY state",
        ).fetch_all(pool).await?);
        let count = |state: &str| rows.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n as u64);
        Ok((count("queued"), count("running")))
    }

    /// Forgets a build's host rows (before it runs again).
    pub async fn clear_build_hosts(&self, id: i64) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM build_hosts WHERE build_id = $1").bind(id).execute(pool).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::db::testing::for_each_backend;
    use crate::db::{BuildFilter, Db};

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    for_each_backend! {
        async fn builds_are_found_by_repository_branch_and_state(db: Db) {
            let (main, _) = db.enqueue_build("fleet", SHA, "main", "").await.unwrap();
            let (test, _) = db.enqueue_build("fleet", SHA, "test-a", "").await.unwrap();
            let (other, _) = db.enqueue_build("infra", SHA, "main", "").await.unwrap();
            assert!(db.cancel_build(test).await.unwrap());
            let ids = |filter: BuildFilter<'static>| {
                let db = db.clone();
                async move { db.find_builds(&filter, 50).await.unwrap().into_iter().map(|b| b.id).collect::<Vec<_>>() }
            };
            assert_eq!(ids(BuildFilter::default()).await, [other, test, main]);
            assert_eq!(ids(BuildFilter { repository: Some("fleet"), ..Default::default() }).await, [test, main]);
            assert_eq!(ids(BuildFilter { branch: Some("main"), ..Default::default() }).await, [other, main]);
            assert_eq!(ids(BuildFilter { state: Some("cancelled"), ..Default::default() }).await, [test]);
            let all = BuildFilter { repository: Some("fleet"), branch: Some("main"), state: Some("queued") };
            assert_eq!(ids(all).await, [main]);
        }

        async fn a_commit_is_queued_once_and_claimed_once(db: Db) {
            let (id, created) = db.enqueue_build("fleet", SHA, "main", "").await.unwrap();
            assert!(created);
            assert_eq!(db.enqueue_build("fleet", SHA, "main", "").await.unwrap(), (id, false));
            let (other, created) = db.enqueue_build("fleet", SHA, "test-a", "").await.unwrap();
            assert!(created && other != id, "another branch is another build");
            assert_eq!(db.active_builds().await.unwrap(), (2, 0), "(queued, running)");
            let claimed = db.claim_build("w1").await.unwrap().unwrap();
            assert_eq!((claimed.id, claimed.state.as_str(), claimed.attempts), (id, "running", 1));
            assert_eq!(db.active_builds().await.unwrap(), (1, 1));
            assert_eq!(db.claim_build("w2").await.unwrap().unwrap().id, other);
            assert_eq!(db.active_builds().await.unwrap(), (0, 2));
            assert!(db.claim_build("w3").await.unwrap().is_none());
            assert!(db.heartbeat_build(id, "w1").await.unwrap());
            assert!(!db.heartbeat_build(id, "w2").await.unwrap());
        }

        async fn interrupted_builds_run_again_then_fail(db: Db) {
            let (id, _) = db.enqueue_build("fleet", SHA, "main", "").await.unwrap();
            db.claim_build("w1").await.unwrap();
            let later = crate::db::now() + 10;
            assert_eq!(db.recover_builds(later, 2).await.unwrap(), (1, 0));
            assert_eq!(db.build(id).await.unwrap().unwrap().state, "queued");
            db.claim_build("w1").await.unwrap();
            assert_eq!(db.recover_builds(later, 2).await.unwrap(), (0, 1));
            let build = db.build(id).await.unwrap().unwrap();
            assert_eq!(build.state, "failed");
            assert!(build.reason.unwrap().contains("interrupted 2 times"));
        }

        async fn cancel_only_what_has_not_ended(db: Db) {
            let (id, _) = db.enqueue_build("fleet", SHA, "main", "").await.unwrap();
            assert!(db.cancel_build(id).await.unwrap());
            assert!(!db.cancel_build(id).await.unwrap());
            assert!(db.claim_build("w").await.unwrap().is_none(), "a cancelled build is never claimed");
        }

        async fn build_hosts_record_results(db: Db) {
            let (id, _) = db.enqueue_build("fleet", SHA, "main", "a b").await.unwrap();
            db.set_build_signature(id, "unsigned").await.unwrap();
            let mut row = crate::db::BuildHostRow {
                host: "b".into(),
                state: "building".into(),
                store_path: None,
                error: None,
                generation: None,
                started_at: Some(1),
                finished_at: None,
                verdict: None,
            };
            db.set_build_host(id, &row).await.unwrap();
            row.state = "succeeded".into();
            row.store_path = Some("/nix/store/x".into());
            db.set_build_host(id, &row).await.unwrap();
            db.set_build_host(id, &crate::db::BuildHostRow { host: "a".into(), ..row.clone() }).await.unwrap();
            db.set_build_host_generation(id, "b", 7).await.unwrap();
            db.set_build_host_verdict(id, "a", "unchanged").await.unwrap();
            let hosts = db.build_hosts(id).await.unwrap();
            assert_eq!(hosts.iter().map(|h| (h.host.as_str(), h.generation)).collect::<Vec<_>>(), [("a", None), ("b", Some(7))]);
            let verdicts: Vec<_> = hosts.iter().map(|h| h.verdict.as_deref()).collect();
            assert_eq!(verdicts, [Some("unchanged"), Some("deployed")]);
            assert_eq!(hosts[1].store_path.as_deref(), Some("/nix/store/x"));
            db.claim_build("w").await.unwrap().unwrap();
            db.finish_build(id, "succeeded", Some("done")).await.unwrap();
            let build = db.build(id).await.unwrap().unwrap();
            assert_eq!((build.state.as_str(), build.signature.as_deref()), ("succeeded", Some("unsigned")));
            assert_eq!(db.recent_builds(1).await.unwrap(), [build]);
            // Each host's newest build: a later build of `a` alone replaces `a`'s only.
            let (later, _) = db.enqueue_build("fleet", SHA, "test-a", "a").await.unwrap();
            db.set_build_host(later, &crate::db::BuildHostRow { host: "a".into(), state: "building".into(), verdict: None, ..row.clone() }).await.unwrap();
            let last: Vec<_> = db.last_builds().await.unwrap().into_iter()
                .map(|(host, b)| (host, b.id, b.host_state, b.verdict, b.generation)).collect();
            assert_eq!(last, [
                ("a".to_string(), later, "building".to_string(), None, None),
                ("b".to_string(), id, "succeeded".to_string(), Some("deployed".to_string()), Some(7)),
            ]);
            db.clear_build_hosts(id).await.unwrap();
            assert!(db.build_hosts(id).await.unwrap().is_empty());
        }

        /// The same request reaches two replicas at once, many times over: one build.
        async fn concurrent_requests_on_two_replicas_queue_one_build(backend: Backend) {
            const REQUESTS: usize = 12;
            let database = backend.database().await;
            let replicas = [database.open().await, database.open().await];
            let start = std::sync::Arc::new(tokio::sync::Barrier::new(REQUESTS));
            let requests: Vec<_> = (0..REQUESTS)
                .map(|n| {
                    let (db, start) = (replicas[n % 2].clone(), start.clone());
                    tokio::spawn(async move {
                        start.wait().await;
                        db.enqueue_build("fleet", SHA, "main", "").await.unwrap()
                    })
                })
                .collect();
            let mut answers = Vec::new();
            for request in requests {
                answers.push(request.await.unwrap());
            }
            let created: Vec<_> = answers.iter().filter(|(_, created)| *created).collect();
            assert_eq!(created.len(), 1, "{answers:?}");
            assert!(answers.iter().all(|(id, _)| *id == created[0].0), "{answers:?}");
        }

        /// Two replicas' workers claim at once: every claim gets a build, none twice. (A
        /// lost race shows up in some rounds only: several rounds.)
        async fn concurrent_claims_on_two_replicas_take_each_build_once(backend: Backend) {
            const CLAIMERS: usize = 12;
            const ROUNDS: usize = 10;
            let database = backend.database().await;
            let replicas = [database.open().await, database.open().await];
            let mut claimed: Vec<i64> = Vec::new();
            for round in 0..ROUNDS {
                for n in 0..CLAIMERS {
                    replicas[0].enqueue_build("fleet", SHA, &format!("b{round}-{n}"), "").await.unwrap();
                }
                let start = std::sync::Arc::new(tokio::sync::Barrier::new(CLAIMERS));
                let claims: Vec<_> = (0..CLAIMERS)
                    .map(|n| {
                        let (db, start) = (replicas[n % 2].clone(), start.clone());
                        tokio::spawn(async move {
                            start.wait().await;
                            db.claim_build(&format!("w{n}")).await.unwrap()
                        })
                    })
                    .collect();
                for claim in claims {
                    let build = claim.await.unwrap();
                    claimed.push(build.expect("a lost race takes the next build, not none").id);
                }
            }
            claimed.sort();
            claimed.dedup();
            assert_eq!(claimed.len(), CLAIMERS * ROUNDS, "a build claimed twice");
            assert!(replicas[1].claim_build("late").await.unwrap().is_none());
        }
    }
}
