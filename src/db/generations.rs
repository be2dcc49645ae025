//! Hosts and their numbered generations: what each host should run, and its history.

use super::{now, on_pool, Db, DbError};

/// One generation of one host.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct GenerationRow {
    /// Host name.
    pub host: String,
    /// 1, 2, 3… per host.
    pub number: i64,
    /// The system toplevel.
    pub store_path: String,
    /// Commit it was built from.
    pub commit_sha: String,
    /// Branch that deployed it.
    pub branch: String,
    /// Build that made it.
    pub build_id: Option<i64>,
    /// When it was made.
    pub created_at: i64,
    /// Who signed its commit (a trusted signer), when a signature was checked.
    pub signer: Option<String>,
    /// What became of it on the host (filled by the API's history, not stored).
    #[sqlx(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<crate::deploy::status::Outcome>,
    /// The host's own profile generation it became when confirmed (`system-5-link`: 5;
    /// filled by the API's history from the host's reports, not stored here).
    #[sqlx(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_generation: Option<i64>,
}

/// A host's newest released generation, and whether `berth hosts pause` holds the host.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Released {
    /// The generation.
    #[sqlx(flatten)]
    pub generation: GenerationRow,
    /// The host is paused: it is handed nothing newer than what it runs.
    pub paused: bool,
}

/// A host and its newest generation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostRow {
    /// Host name.
    pub name: String,
    /// Repository that defines it.
    pub repository: String,
    /// Newest generation (the desired one), if any.
    pub latest: Option<GenerationRow>,
    /// What the host last reported.
    pub status: super::HostStatus,
    /// The state of its newest generation, or offline (filled by the API, not stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::deploy::status::HostState>,
    /// Its newest build and what that build decided for it (filled by the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_build: Option<super::LastBuild>,
    /// The rollout that holds its newest generation (its wave is not released yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<i64>,
    /// The tags it was enrolled with (`berth hosts add --tags`); the configuration's
    /// `[repositories.hosts.<name>] tags` apply as well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// `push` for a host berth pushes to (`delivery = "push"`; filled by the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
}

/// A row of [`Db::hosts`]' join: the host, and its newest generation if it has one.
#[derive(sqlx::FromRow)]
struct HostJoin {
    name: String,
    repository: String,
    #[sqlx(flatten)]
    status: super::HostStatus,
    number: Option<i64>,
    store_path: Option<String>,
    commit_sha: Option<String>,
    branch: Option<String>,
    build_id: Option<i64>,
    created_at: Option<i64>,
    signer: Option<String>,
    held_by: Option<i64>,
    tags: Option<String>,
}

impl HostJoin {
    fn into_row(self) -> HostRow {
        let latest = match (self.number, self.store_path, self.commit_sha, self.branch, self.created_at) {
            (Some(number), Some(store_path), Some(commit_sha), Some(branch), Some(created_at)) => Some(GenerationRow {
                host: self.name.clone(),
                number,
                store_path,
                commit_sha,
                branch,
                build_id: self.build_id,
                created_at,
                signer: self.signer,
                outcome: None,
                profile_generation: None,
            }),
            _ => None,
        };
        HostRow {
            name: self.name,
            repository: self.repository,
            latest,
            status: self.status,
            state: None,
            last_build: None,
            held_by: self.held_by,
            tags: split_tags(self.tags.as_deref()),
            delivery: None,
        }
    }
}

/// The comma list the index keeps a host's enrolled tags in.
pub fn split_tags(list: Option<&str>) -> Vec<String> {
    list.map(|t| t.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect()).unwrap_or_default()
}

const GENERATION_COLUMNS: &str = "host, number, store_path, commit_sha, branch, build_id, created_at, signer";

/// What a new generation records.
#[derive(Debug, Clone)]
pub struct NewGeneration<'a> {
    /// Host name.
    pub host: &'a str,
    /// Repository that defines the host.
    pub repository: &'a str,
    /// The toplevel.
    pub store_path: &'a str,
    /// Commit.
    pub commit_sha: &'a str,
    /// Branch.
    pub branch: &'a str,
    /// Build.
    pub build_id: Option<i64>,
    /// The commit's trusted signer, if one was checked.
    pub signer: Option<&'a str>,
    /// The rollout that makes it, if one does.
    pub rollout_id: Option<i64>,
    /// Whether that rollout holds it (its wave is not released yet): agents are not handed it.
    pub held: bool,
    /// The generation its stored diff is taken against (none: from nothing).
    pub diff_from: Option<i64>,
    /// Its closure diff as JSON (`deploy::diff::ClosureDiff`), stored with it (none: none).
    pub diff: Option<&'a str>,
}

impl Db {
    /// Records a new generation and returns its number (one more than the host's newest).
    /// With PostgreSQL the same transaction notifies every replica (`listen.rs`); waking this
    /// process's long-polls is the caller's (`deploy::watch::add_generation`).
    /// Numbers never collide, even between replicas: the host's row is locked first (an
    /// upsert that changes nothing still locks the row it finds), so concurrent writers for
    /// one host take turns, and each reads the number the previous one committed. (SQLite:
    /// the upsert takes the database's write lock, which serializes all writers anyway.)
    pub async fn add_generation(&self, g: &NewGeneration<'_>) -> Result<i64, DbError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO hosts (name, repository, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET repository =
                     CASE WHEN hosts.repository = '' THEN excluded.repository ELSE hosts.repository END",
            )
            .bind(g.host).bind(g.repository).bind(now()).execute(&mut *tx).await?;
            // PostgreSQL, READ COMMITTED: this statement's snapshot is taken after the lock
            // above was granted, so it sees the generation the previous holder committed.
            let number: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(number), 0) + 1 FROM generations WHERE host = $1")
                .bind(g.host).fetch_one(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO generations (host, number, store_path, commit_sha, branch, build_id, created_at, signer,
                    rollout_id, held_by, diff_from, diff)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(g.host).bind(number).bind(g.store_path).bind(g.commit_sha).bind(g.branch).bind(g.build_id).bind(now())
            .bind(g.signer).bind(g.rollout_id).bind(g.rollout_id.filter(|_| g.held))
            .bind(g.diff.and(g.diff_from)).bind(g.diff)
            .execute(&mut *tx).await?;
            if let Some(notify) = super::notify_sql(pool) {
                let made = super::Notice::Made { host: g.host.to_owned(), number };
                sqlx::query(notify).bind(super::GENERATIONS_CHANNEL).bind(made.payload()).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(number)
        })
    }

    /// A host's newest generation.
    pub async fn latest_generation(&self, host: &str) -> Result<Option<GenerationRow>, DbError> {
        let sql = format!("SELECT {GENERATION_COLUMNS} FROM generations WHERE host = $1 ORDER BY number DESC LIMIT 1");
        on_pool!(self, pool => Ok(sqlx::query_as(&sql).bind(host).fetch_optional(pool).await?))
    }

    /// A host's newest generation that no rollout holds (the one its agent is handed), and
    /// whether the host is paused: one query, what each wake of a manifest long-poll costs.
    pub async fn latest_released_generation(&self, host: &str) -> Result<Option<Released>, DbError> {
        let sql = format!(
            "SELECT {GENERATION_COLUMNS},
                EXISTS (SELECT 1 FROM hosts WHERE name = $1 AND paused_at IS NOT NULL) AS paused
             FROM generations WHERE host = $1 AND held_by IS NULL ORDER BY number DESC LIMIT 1"
        );
        on_pool!(self, pool => Ok(sqlx::query_as(&sql).bind(host).fetch_optional(pool).await?))
    }

    /// The store path a new build of `host` is compared with (an equal one makes no new
    /// generation): its newest generation that is released or held by a rollout still open.
    /// With `released_only` (the build's rollout replaces the open ones) generations held by
    /// a rollout count for nothing: they are never going to be released.
    pub async fn comparable_store_path(&self, host: &str, released_only: bool) -> Result<Option<String>, DbError> {
        let held = if released_only {
            String::new()
        } else {
            format!(" OR held_by IN (SELECT id FROM rollouts WHERE state IN {})", super::rollouts::OPEN)
        };
        let sql = format!(
            "SELECT store_path FROM generations WHERE host = $1 AND (held_by IS NULL{held}) ORDER BY number DESC LIMIT 1"
        );
        on_pool!(self, pool => Ok(sqlx::query_scalar(&sql).bind(host).fetch_optional(pool).await?))
    }

    /// One generation of a host.
    pub async fn generation(&self, host: &str, number: i64) -> Result<Option<GenerationRow>, DbError> {
        let sql = format!("SELECT {GENERATION_COLUMNS} FROM generations WHERE host = $1 AND number = $2");
        on_pool!(self, pool => Ok(sqlx::query_as(&sql).bind(host).bind(number).fetch_optional(pool).await?))
    }

    /// A host's generations, newest first.
    pub async fn generations(&self, host: &str) -> Result<Vec<GenerationRow>, DbError> {
        let sql = format!("SELECT {GENERATION_COLUMNS} FROM generations WHERE host = $1 ORDER BY number DESC");
        on_pool!(self, pool => Ok(sqlx::query_as(&sql).bind(host).fetch_all(pool).await?))
    }

    /// Every host with its newest generation and its status, by name: one query, whatever
    /// the fleet's size.
    pub async fn hosts(&self) -> Result<Vec<HostRow>, DbError> {
        let sql = "SELECT h.name, h.repository, h.active_generation, h.phase, h.last_error, h.last_seen, h.paused_at,
                h.tags, g.number, g.store_path, g.commit_sha, g.branch, g.build_id, g.created_at, g.signer, g.held_by
             FROM hosts h LEFT JOIN generations g
               ON g.host = h.name AND g.number = (SELECT MAX(number) FROM generations WHERE host = h.name)
             ORDER BY h.name";
        let rows: Vec<HostJoin> = on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        Ok(rows.into_iter().map(HostJoin::into_row).collect())
    }

    /// The number of the newest generation of each of `hosts` that has one (a few queries
    /// of 500 hosts each: what every waiting long-poll would look up, at once).
    pub async fn newest_generations(&self, hosts: &[String]) -> Result<Vec<(String, i64)>, DbError> {
        let mut newest = Vec::new();
        for chunk in hosts.chunks(500) {
            on_pool!(self, pool => {
                let mut q = sqlx::QueryBuilder::new("SELECT host, MAX(number) FROM generations WHERE host IN (");
                let mut list = q.separated(", ");
                for host in chunk {
                    list.push_bind(host);
                }
                q.push(") GROUP BY host");
                let rows: Vec<(String, i64)> = q.build_query_as().fetch_all(pool).await?;
                newest.extend(rows);
            });
        }
        Ok(newest)
    }

    /// The repository of a known host and the tags it was enrolled with.
    pub async fn host_placement(&self, name: &str) -> Result<Option<(String, Vec<String>)>, DbError> {
        let row: Option<(String, Option<String>)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT repository, tags FROM hosts WHERE name = $1",
        ).bind(name).fetch_optional(pool).await?);
        Ok(row.map(|(repository, tags)| (repository, split_tags(tags.as_deref()))))
    }

    /// The tags hosts were enrolled with, by host (hosts enrolled without tags left out).
    pub async fn enrolled_tags(&self) -> Result<Vec<(String, Vec<String>)>, DbError> {
        let rows: Vec<(String, Option<String>)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT name, tags FROM hosts WHERE tags IS NOT NULL AND tags <> ''",
        ).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|(host, tags)| (host, split_tags(tags.as_deref()))).collect())
    }

    /// The repository of a known host.
    pub async fn host_repository(&self, name: &str) -> Result<Option<String>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_scalar("SELECT repository FROM hosts WHERE name = $1")
            .bind(name).fetch_optional(pool).await?))
    }

    /// Whether a host is known.
    pub async fn host_exists(&self, name: &str) -> Result<bool, DbError> {
        Ok(self.host_repository(name).await?.is_some())
    }

    /// The commit of the newest generation that `repository`'s `branch` deployed to any host.
    pub async fn last_deployed_commit(&self, repository: &str, branch: &str) -> Result<Option<String>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_scalar(
            "SELECT g.commit_sha FROM generations g JOIN hosts h ON g.host = h.name
             WHERE h.repository = $1 AND g.branch = $2 ORDER BY g.created_at DESC, g.number DESC LIMIT 1",
        ).bind(repository).bind(branch).fetch_optional(pool).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::for_each_backend;

    fn generation<'a>(host: &'a str, path: &'a str) -> NewGeneration<'a> {
        NewGeneration {
            host,
            repository: "fleet",
            store_path: path,
            commit_sha: "c1",
            branch: "main",
            build_id: Some(1),
            signer: Some("alice"),
            rollout_id: None,
            held: false,
            diff_from: None,
            diff: None,
        }
    }

    for_each_backend! {
        async fn generations_are_numbered_per_host(db: Db) {
            assert_eq!(db.add_generation(&generation("a", "/nix/store/x")).await.unwrap(), 1);
            assert_eq!(db.add_generation(&generation("a", "/nix/store/y")).await.unwrap(), 2);
            assert_eq!(db.add_generation(&generation("b", "/nix/store/x")).await.unwrap(), 1);
            assert_eq!(db.latest_generation("a").await.unwrap().unwrap().store_path, "/nix/store/y");
            assert_eq!(db.generation("a", 1).await.unwrap().unwrap().store_path, "/nix/store/x");
            assert_eq!(db.generation("a", 1).await.unwrap().unwrap().signer.as_deref(), Some("alice"));
            assert_eq!(db.generation("a", 3).await.unwrap(), None);
            let hosts = db.hosts().await.unwrap();
            assert_eq!(hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
            assert_eq!(hosts[0].latest.as_ref().map(|g| g.number), Some(2));
            assert_eq!(db.generations("a").await.unwrap().len(), 2);
            let wanted = ["a", "b", "c"].map(String::from);
            let mut newest = db.newest_generations(&wanted).await.unwrap();
            newest.sort();
            assert_eq!(newest, [("a".to_owned(), 2), ("b".to_owned(), 1)]);
            assert_eq!(db.host_repository("a").await.unwrap().as_deref(), Some("fleet"));
            assert!(db.host_exists("b").await.unwrap() && !db.host_exists("c").await.unwrap());
            assert_eq!(db.last_deployed_commit("fleet", "main").await.unwrap().as_deref(), Some("c1"));
            assert_eq!(db.last_deployed_commit("fleet", "test-a").await.unwrap(), None);
        }

        /// Two replicas make generations for one host at once (a build and a rollback, say):
        /// numbers are distinct and consecutive, and none fails.
        async fn concurrent_generations_on_two_replicas_never_collide(backend: Backend) {
            const EACH: usize = 10;
            let database = backend.database().await;
            let replicas = [database.open().await, database.open().await];
            // The host exists already, and does not yet: both paths of the upsert race.
            for host in ["old", "new"] {
                if host == "old" {
                    replicas[0].add_generation(&generation(host, "/nix/store/x")).await.unwrap();
                }
                let start = std::sync::Arc::new(tokio::sync::Barrier::new(2 * EACH));
                let tasks: Vec<_> = (0..2 * EACH)
                    .map(|n| {
                        let (db, start) = (replicas[n % 2].clone(), start.clone());
                        tokio::spawn(async move {
                            start.wait().await;
                            db.add_generation(&generation(host, "/nix/store/y")).await.unwrap()
                        })
                    })
                    .collect();
                let mut numbers = Vec::new();
                for task in tasks {
                    numbers.push(task.await.unwrap());
                }
                numbers.sort();
                let first = if host == "old" { 2 } else { 1 };
                assert_eq!(numbers, (first..first + 2 * EACH as i64).collect::<Vec<_>>(), "host {host}");
            }
        }
    }
}
