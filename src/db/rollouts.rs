//! Staged rollouts: each rollout, its hosts' waves, and releasing a wave (the generations it
//! holds become visible to their agents; with PostgreSQL every replica hears of it,
//! `Notice::Released`). Every state change is one conditional `UPDATE`,
//! so two replicas driving the same rollout cannot both apply a step.

use super::{now, on_pool, Db, DbError};
use crate::deploy::rollout::{RolloutState, Supersede};

/// One rollout as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RolloutRow {
    /// Its id.
    pub id: i64,
    /// The repository.
    pub repository: String,
    /// The deploy branch.
    pub branch: String,
    /// The commit it rolls out.
    pub commit_sha: String,
    /// The build that made its generations.
    pub build_id: Option<i64>,
    /// Where it stands.
    pub state: RolloutState,
    /// The current (released) wave, from 0.
    pub wave: i64,
    /// How many waves.
    pub waves: i64,
    /// When the current wave was released.
    pub released_at: Option<i64>,
    /// When its hosts were all settled (the soak's start).
    pub settled_at: Option<i64>,
    /// The host that halted it.
    pub halted_host: Option<String>,
    /// Why it halted, was aborted or superseded.
    pub reason: Option<String>,
    /// When it was made.
    pub created_at: i64,
    /// When its state last changed.
    pub updated_at: i64,
}

/// A rollout as read, its state still a name.
#[derive(sqlx::FromRow)]
struct RolloutJoin {
    id: i64,
    repository: String,
    branch: String,
    commit_sha: String,
    build_id: Option<i64>,
    state: String,
    wave: i64,
    waves: i64,
    released_at: Option<i64>,
    settled_at: Option<i64>,
    halted_host: Option<String>,
    reason: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl RolloutJoin {
    /// The row; a state no writer stores (a newer berth's, say) reads as `aborted`, which
    /// nothing drives, and is logged.
    fn into_row(self) -> RolloutRow {
        let state = RolloutState::try_from(self.state).unwrap_or_else(|e| {
            tracing::warn!(rollout = self.id, error = %e, "reading a rollout");
            RolloutState::Aborted
        });
        RolloutRow {
            id: self.id,
            repository: self.repository,
            branch: self.branch,
            commit_sha: self.commit_sha,
            build_id: self.build_id,
            state,
            wave: self.wave,
            waves: self.waves,
            released_at: self.released_at,
            settled_at: self.settled_at,
            halted_host: self.halted_host,
            reason: self.reason,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// One host of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct RolloutHostRow {
    /// Host name.
    pub host: String,
    /// Its wave, from 0.
    pub wave: i64,
    /// A resume accepted its failure.
    pub waived: bool,
    /// The rollout's generation of it (none yet: the build is still making them).
    pub generation: Option<i64>,
    /// Whether that generation is still held.
    pub held: bool,
    /// When the host last polled or reported.
    pub last_seen: Option<i64>,
    /// Its newest released generation.
    pub newest_released: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct HostJoin {
    host: String,
    wave: i64,
    waived: i64,
    generation: Option<i64>,
    held_by: Option<i64>,
    last_seen: Option<i64>,
    newest_released: Option<i64>,
}

const COLUMNS: &str = "id, repository, branch, commit_sha, build_id, state, wave, waves, released_at, settled_at,
    halted_host, reason, created_at, updated_at";
pub(super) const OPEN: &str = "('queued', 'running', 'halted')";

/// A rollout to make.
#[derive(Debug, Clone)]
pub struct NewRollout<'a> {
    /// The repository.
    pub repository: &'a str,
    /// Its deploy branch.
    pub branch: &'a str,
    /// The commit.
    pub commit_sha: &'a str,
    /// The build.
    pub build_id: Option<i64>,
    /// Host names per wave (none empty).
    pub waves: &'a [Vec<String>],
}

impl Db {
    /// Records a rollout, `queued` on wave -1 until its generations exist ([`Db::set_rollout_ready`]);
    /// with `Supersede::Replace` the open rollouts of its branch become `superseded`.
    pub async fn create_rollout(&self, r: &NewRollout<'_>, supersede: Supersede) -> Result<i64, DbError> {
        let t = now();
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(super::write_begin(pool)).await?;
            // A build run again after a crash: its unfinished rollout goes.
            sqlx::query(
                "UPDATE rollouts SET state = 'superseded', reason = 'its build ran again', updated_at = $2
                 WHERE build_id = $1 AND wave = -1 AND state = 'queued'",
            )
            .bind(r.build_id).bind(t).execute(&mut *tx).await?;
            if supersede == Supersede::Replace {
                let sql = format!(
                    "UPDATE rollouts SET state = 'superseded', reason = 'a newer commit replaced it', updated_at = $3
                     WHERE repository = $1 AND branch = $2 AND state IN {OPEN}"
                );
                sqlx::query(&sql).bind(r.repository).bind(r.branch).bind(t).execute(&mut *tx).await?;
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO rollouts (repository, branch, commit_sha, build_id, state, wave, waves, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, 'queued', -1, $5, $6, $6) RETURNING id",
            )
            .bind(r.repository).bind(r.branch).bind(r.commit_sha).bind(r.build_id)
            .bind(r.waves.len() as i64).bind(t)
            .fetch_one(&mut *tx).await?;
            for (wave, hosts) in r.waves.iter().enumerate() {
                for host in hosts {
                    sqlx::query("INSERT INTO rollout_hosts (rollout_id, host, wave) VALUES ($1, $2, $3)")
                        .bind(id).bind(host).bind(wave as i64).execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            Ok(id)
        })
    }

    /// Every generation of rollout `id` is made: the driver may start it (wave 0).
    pub async fn set_rollout_ready(&self, id: i64) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE rollouts SET wave = 0 WHERE id = $1 AND wave = -1").bind(id).execute(pool).await?;
            Ok(())
        })
    }

    /// One rollout.
    pub async fn rollout(&self, id: i64) -> Result<Option<RolloutRow>, DbError> {
        let sql = format!("SELECT {COLUMNS} FROM rollouts WHERE id = $1");
        let row: Option<RolloutJoin> =
            on_pool!(self, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?);
        Ok(row.map(RolloutJoin::into_row))
    }

    /// The newest `limit` rollouts, newest first.
    pub async fn rollouts(&self, limit: i64) -> Result<Vec<RolloutRow>, DbError> {
        let sql = format!("SELECT {COLUMNS} FROM rollouts ORDER BY id DESC LIMIT $1");
        let rows: Vec<RolloutJoin> = on_pool!(self, pool => sqlx::query_as(&sql).bind(limit).fetch_all(pool).await?);
        Ok(rows.into_iter().map(RolloutJoin::into_row).collect())
    }

    /// Rollouts the driver moves on (queued and running), oldest first.
    pub async fn driven_rollouts(&self) -> Result<Vec<RolloutRow>, DbError> {
        let sql = format!("SELECT {COLUMNS} FROM rollouts WHERE state IN ('queued', 'running') ORDER BY id");
        let rows: Vec<RolloutJoin> = on_pool!(self, pool => sqlx::query_as(&sql).fetch_all(pool).await?);
        Ok(rows.into_iter().map(RolloutJoin::into_row).collect())
    }

    /// Whether an open rollout older than `id` exists on its branch (a queued one waits).
    pub async fn rollout_ahead(&self, r: &RolloutRow) -> Result<bool, DbError> {
        let sql = format!(
            "SELECT COUNT(*) FROM rollouts WHERE repository = $1 AND branch = $2 AND id < $3 AND state IN {OPEN}"
        );
        let n: i64 = on_pool!(self, pool => sqlx::query_scalar(&sql)
            .bind(&r.repository).bind(&r.branch).bind(r.id).fetch_one(pool).await?);
        Ok(n > 0)
    }

    /// The hosts of rollout `id` (of wave `wave` alone, when given), by wave and name, each
    /// with its generation, last contact and newest released generation: one query.
    pub async fn rollout_hosts(&self, id: i64, wave: Option<i64>) -> Result<Vec<RolloutHostRow>, DbError> {
        let rows: Vec<HostJoin> = on_pool!(self, pool => sqlx::query_as(
            "SELECT rh.host, rh.wave, rh.waived, g.number AS generation, g.held_by, h.last_seen,
                (SELECT MAX(number) FROM generations r WHERE r.host = rh.host AND r.held_by IS NULL) AS newest_released
             FROM rollout_hosts rh
             LEFT JOIN generations g ON g.host = rh.host AND g.rollout_id = rh.rollout_id
             LEFT JOIN hosts h ON h.name = rh.host
             WHERE rh.rollout_id = $1 AND ($2 IS NULL OR rh.wave = $2)
             ORDER BY rh.wave, rh.host",
        ).bind(id).bind(wave).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|r| RolloutHostRow {
                host: r.host,
                wave: r.wave,
                waived: r.waived != 0,
                generation: r.generation,
                held: r.held_by.is_some(),
                last_seen: r.last_seen,
                newest_released: r.newest_released,
            })
            .collect())
    }

    /// Reports of wave `wave`'s hosts about their rollout generation or later ones, as
    /// `(host, generation, phase, message)`, oldest first.
    pub async fn rollout_reports(
        &self,
        id: i64,
        wave: i64,
    ) -> Result<Vec<(String, i64, String, Option<String>)>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT r.host, r.generation, r.phase, r.message FROM reports r
             JOIN rollout_hosts rh ON rh.host = r.host
             JOIN generations g ON g.host = r.host AND g.rollout_id = rh.rollout_id
             WHERE rh.rollout_id = $1 AND rh.wave = $2 AND r.generation >= g.number
             ORDER BY r.id",
        ).bind(id).bind(wave).fetch_all(pool).await?))
    }

    /// Releases wave `to` of rollout `id` if it is still `from` (`running` on wave `wave`, or
    /// `queued`): the rollout is `running` on wave `to` and its generations there no longer
    /// held. Returns the released hosts, or `None` when another step came first.
    pub async fn release_wave(
        &self,
        id: i64,
        from: RolloutState,
        wave: i64,
        to: i64,
    ) -> Result<Option<Vec<String>>, DbError> {
        let t = now();
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(super::write_begin(pool)).await?;
            let moved = sqlx::query(
                "UPDATE rollouts SET state = 'running', wave = $1, released_at = $2, settled_at = NULL, updated_at = $2
                 WHERE id = $3 AND state = $4 AND wave = $5",
            )
            .bind(to).bind(t).bind(id).bind(from.as_str()).bind(wave).execute(&mut *tx).await?;
            if moved.rows_affected() != 1 {
                return Ok(None);
            }
            sqlx::query(
                "UPDATE generations SET held_by = NULL
                 WHERE held_by = $1 AND host IN (SELECT host FROM rollout_hosts WHERE rollout_id = $1 AND wave = $2)",
            )
            .bind(id).bind(to).execute(&mut *tx).await?;
            let hosts: Vec<String> = sqlx::query_scalar("SELECT host FROM rollout_hosts WHERE rollout_id = $1 AND wave = $2")
                .bind(id).bind(to).fetch_all(&mut *tx).await?;
            // PostgreSQL: every replica's long-polls of these hosts look again at commit.
            if let Some(notify) = super::notify_sql(pool) {
                for host in &hosts {
                    let released = super::Notice::Released { host: host.clone() };
                    sqlx::query(notify).bind(super::GENERATIONS_CHANNEL).bind(released.payload()).execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            Ok(Some(hosts))
        })
    }

    /// Moves rollout `id` from one of `from` to `to`, recording the host and reason given
    /// (a resume clears them). `false` when it was in none of `from`.
    pub async fn set_rollout_state(
        &self,
        id: i64,
        from: &[RolloutState],
        to: RolloutState,
        host: Option<&str>,
        reason: Option<&str>,
    ) -> Result<bool, DbError> {
        let list: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
        let sql = format!(
            "UPDATE rollouts SET state = $1, halted_host = $2, reason = $3, updated_at = $4
             WHERE id = $5 AND state IN ({})",
            list.join(", ")
        );
        on_pool!(self, pool => Ok(sqlx::query(&sql)
            .bind(to.as_str()).bind(host).bind(reason).bind(now()).bind(id)
            .execute(pool).await?.rows_affected() == 1))
    }

    /// Records that wave `wave` of a running rollout settled at `at` (the soak's start).
    pub async fn set_rollout_settled(&self, id: i64, wave: i64, at: i64) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE rollouts SET settled_at = $1 WHERE id = $2 AND wave = $3 AND state = 'running'")
                .bind(at).bind(id).bind(wave).execute(pool).await?;
            Ok(())
        })
    }

    /// Accepts `host`'s failure in rollout `id` (a resume).
    pub async fn waive_rollout_host(&self, id: i64, host: &str) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE rollout_hosts SET waived = 1 WHERE rollout_id = $1 AND host = $2")
                .bind(id).bind(host).execute(pool).await?;
            Ok(())
        })
    }

    /// Every rollout's hosts (a few rollouts' worth: the newest `limit`), for `GET /api/v1/rollouts`.
    pub async fn rollouts_with_hosts(&self, limit: i64) -> Result<Vec<(RolloutRow, Vec<RolloutHostRow>)>, DbError> {
        let mut out = Vec::new();
        for r in self.rollouts(limit).await? {
            let hosts = self.rollout_hosts(r.id, None).await?;
            out.push((r, hosts));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{testing::for_each_backend, NewGeneration};

    fn generation<'a>(host: &'a str, rollout: i64, held: bool) -> NewGeneration<'a> {
        NewGeneration {
            host,
            repository: "fleet",
            store_path: "/nix/store/x",
            commit_sha: "c",
            branch: "main",
            build_id: None,
            signer: None,
            rollout_id: Some(rollout),
            held,
            diff_from: None,
            diff: None,
        }
    }

    for_each_backend! {
        async fn waves_are_released_once_and_in_order(db: Db) {
            let waves = [vec!["a".to_owned()], vec!["b".to_owned(), "c".to_owned()]];
            let new = NewRollout { repository: "fleet", branch: "main", commit_sha: "c", build_id: None, waves: &waves };
            let id = db.create_rollout(&new, Supersede::Replace).await.unwrap();
            for host in ["a", "b", "c"] {
                db.add_generation(&generation(host, id, true)).await.unwrap();
            }
            assert_eq!(db.release_wave(id, RolloutState::Queued, 0, 0).await.unwrap(), None, "not ready");
            db.set_rollout_ready(id).await.unwrap();
            assert_eq!(db.release_wave(id, RolloutState::Queued, 0, 0).await.unwrap(), Some(vec!["a".to_owned()]));
            assert_eq!(db.latest_released_generation("a").await.unwrap().map(|r| r.generation.number), Some(1));
            assert_eq!(db.latest_released_generation("b").await.unwrap(), None);
            // Retention keeps what an open rollout holds.
            let mut held: Vec<(String, Vec<i64>)> = db.gc_snapshot().await.unwrap().held.into_iter().collect();
            held.sort();
            assert_eq!(held, [("b".to_owned(), vec![1]), ("c".to_owned(), vec![1])]);
            let hosts = db.rollout_hosts(id, None).await.unwrap();
            assert_eq!(hosts.iter().map(|h| (h.host.as_str(), h.wave, h.held)).collect::<Vec<_>>(),
                [("a", 0, false), ("b", 1, true), ("c", 1, true)]);
            let held: Vec<_> = db.hosts().await.unwrap().into_iter().map(|h| h.held_by).collect();
            assert_eq!(held, [None, Some(id), Some(id)]);
            let mut listener = db.listen_generations().await.unwrap();
            let released = db.release_wave(id, RolloutState::Running, 0, 1).await.unwrap();
            assert_eq!(released, Some(vec!["b".to_owned(), "c".to_owned()]));
            // PostgreSQL: every replica hears which hosts' long-polls must look again.
            if let Some(listener) = listener.as_mut() {
                for host in ["b", "c"] {
                    let heard = listener.next().await.unwrap();
                    assert_eq!(heard, crate::db::Heard::Notice(crate::db::Notice::Released { host: host.into() }));
                }
            }
            assert_eq!(db.release_wave(id, RolloutState::Running, 0, 1).await.unwrap(), None, "a step applies once");
            assert_eq!(db.latest_released_generation("c").await.unwrap().map(|r| r.generation.number), Some(1));
            assert_eq!(db.rollout(id).await.unwrap().unwrap().wave, 1);

            // Queue: the next waits; replace: both open ones are superseded.
            let queued = db.create_rollout(&new, Supersede::Queue).await.unwrap();
            assert!(db.rollout_ahead(&db.rollout(queued).await.unwrap().unwrap()).await.unwrap());
            let halted = [RolloutState::Running];
            assert!(db.set_rollout_state(id, &halted, RolloutState::Halted, Some("b"), Some("boom")).await.unwrap());
            assert!(!db.set_rollout_state(id, &halted, RolloutState::Halted, None, None).await.unwrap());
            let newest = db.create_rollout(&new, Supersede::Replace).await.unwrap();
            let states: Vec<RolloutState> = db.rollouts(10).await.unwrap().into_iter().map(|r| r.state).collect();
            assert_eq!(states, [RolloutState::Queued, RolloutState::Superseded, RolloutState::Superseded]);
            assert_eq!(db.driven_rollouts().await.unwrap().into_iter().map(|r| r.id).collect::<Vec<_>>(), [newest]);
            assert_eq!(db.rollout(id).await.unwrap().unwrap().halted_host.as_deref(), Some("b"));
            db.add_generation(&generation("b", newest, true)).await.unwrap();
            let held = db.gc_snapshot().await.unwrap().held;
            assert_eq!(held.get("b"), Some(&vec![2]), "held by the open rollout, not by the superseded one");
        }
    }
}
