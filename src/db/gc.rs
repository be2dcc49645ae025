//! Retention's view of the index: a snapshot for the planner, the one transaction that
//! forgets what a plan deletes (and records the objects still to delete), and pins.

use std::collections::HashMap;

use super::{now, on_pool, Db, DbError};
use crate::gc::plan::{GenerationEntry, PathEntry, Plan, Snapshot};

/// Object kinds in `gc_pending`, deleted in this order: a narinfo before its NAR.
pub const PENDING_NARINFO: &str = "narinfo";
/// See [`PENDING_NARINFO`].
pub const PENDING_NAR: &str = "nar";

/// A named pin.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct PinRow {
    /// Name.
    pub name: String,
    /// Pinned store path.
    pub store_path: String,
    /// When.
    pub created_at: i64,
}

fn hash_of(store_path: &str) -> String {
    store_path.trim_start_matches("/nix/store/").chars().take(32).collect()
}

/// The snapshot's rows as read, in one transaction.
struct RawSnapshot {
    paths: Vec<(String, String, i64, i64)>,
    refs: Vec<(String, String)>,
    generations: Vec<(String, i64, String, i64)>,
    active: Vec<(String, i64)>,
    pins: Vec<String>,
    loose: Vec<(String, i64, i64)>,
}

impl Db {
    /// Reads everything the planner needs.
    pub async fn gc_snapshot(&self) -> Result<Snapshot, DbError> {
        let raw: RawSnapshot = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            RawSnapshot {
                paths: sqlx::query_as("SELECT hash, nar_file, file_size, created_at FROM paths").fetch_all(&mut *tx).await?,
                refs: sqlx::query_as("SELECT referrer, reference FROM refs").fetch_all(&mut *tx).await?,
                generations: sqlx::query_as("SELECT host, number, store_path, created_at FROM generations")
                    .fetch_all(&mut *tx)
                    .await?,
                active: sqlx::query_as("SELECT name, active_generation FROM hosts WHERE active_generation IS NOT NULL")
                    .fetch_all(&mut *tx)
                    .await?,
                pins: sqlx::query_scalar("SELECT store_path FROM pins").fetch_all(&mut *tx).await?,
                loose: sqlx::query_as(
                    "SELECT name, file_size, created_at FROM nar_files f
                     WHERE NOT EXISTS (SELECT 1 FROM paths p WHERE p.nar_file = f.name)",
                )
                .fetch_all(&mut *tx)
                .await?,
            }
        });
        let RawSnapshot { paths, refs, generations, active, pins, loose } = raw;
        let mut references: HashMap<String, Vec<String>> = HashMap::new();
        for (referrer, reference) in refs {
            let target = hash_of(&reference);
            if target != referrer {
                references.entry(referrer).or_default().push(target);
            }
        }
        Ok(Snapshot {
            paths: paths
                .into_iter()
                .map(|(hash, nar_file, file_size, created_at)| PathEntry {
                    references: references.remove(&hash).unwrap_or_default(),
                    hash,
                    nar_file,
                    file_size: file_size as u64,
                    created_at,
                })
                .collect(),
            generations: generations
                .into_iter()
                .map(|(host, number, store_path, created_at)| GenerationEntry {
                    host,
                    number,
                    root: hash_of(&store_path),
                    created_at,
                })
                .collect(),
            active: active.into_iter().collect(),
            pins: pins.iter().map(|p| hash_of(p)).collect(),
            loose_nar_files: loose.into_iter().map(|(n, s, t)| (n, s as u64, t)).collect(),
            now: now(),
        })
    }

    /// Applies a plan to the index in one transaction: generations dropped, paths and their
    /// references forgotten (so they vanish from HTTP at once), NAR file records removed, and
    /// the objects to delete recorded in `gc_pending`. Returns the dropped generations'
    /// (host, build id).
    pub async fn gc_commit(&self, plan: &Plan) -> Result<Vec<(String, Option<i64>)>, DbError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut released = Vec::new();
            for (host, number) in &plan.drop_generations {
                let build: Option<Option<i64>> = sqlx::query_scalar("DELETE FROM generations WHERE host = $1 AND number = $2 RETURNING build_id")
                    .bind(host).bind(number).fetch_optional(&mut *tx).await?;
                if let Some(build) = build {
                    released.push((host.clone(), build));
                }
            }
            for hash in &plan.delete_paths {
                sqlx::query("DELETE FROM refs WHERE referrer = $1").bind(hash).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM paths WHERE hash = $1").bind(hash).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO gc_pending (kind, name) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(PENDING_NARINFO).bind(hash).execute(&mut *tx).await?;
            }
            for file in &plan.delete_nar_files {
                sqlx::query("DELETE FROM nar_files WHERE name = $1").bind(file).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO gc_pending (kind, name) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(PENDING_NAR).bind(file).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(released)
        })
    }

    /// Objects a collection still has to delete, narinfos first, at most `limit`.
    pub async fn gc_pending(&self, limit: i64) -> Result<Vec<(String, String)>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT kind, name FROM gc_pending ORDER BY CASE kind WHEN 'narinfo' THEN 0 ELSE 1 END, name LIMIT $1",
        ).bind(limit).fetch_all(pool).await?))
    }

    /// Marks a pending deletion done.
    pub async fn gc_pending_done(&self, kind: &str, name: &str) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM gc_pending WHERE kind = $1 AND name = $2").bind(kind).bind(name).execute(pool).await?;
            Ok(())
        })
    }

    /// Whether a NAR file is in use again (received anew, or referenced by a path) since a
    /// collection decided to delete it.
    pub async fn nar_file_in_use(&self, name: &str) -> Result<bool, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_scalar::<_, i64>(
            "SELECT 1 FROM nar_files WHERE name = $1 UNION ALL SELECT 1 FROM paths WHERE nar_file = $1 LIMIT 1",
        ).bind(name).fetch_optional(pool).await?.is_some()))
    }

    /// Adds or moves a named pin.
    pub async fn set_pin(&self, name: &str, store_path: &str) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO pins (name, store_path, created_at) VALUES ($1, $2, $3)
                         ON CONFLICT (name) DO UPDATE SET store_path = $2, created_at = $3")
                .bind(name).bind(store_path).bind(now()).execute(pool).await?;
            Ok(())
        })
    }

    /// Removes a pin; false when there was none.
    pub async fn remove_pin(&self, name: &str) -> Result<bool, DbError> {
        on_pool!(self, pool => Ok(sqlx::query("DELETE FROM pins WHERE name = $1").bind(name).execute(pool).await?.rows_affected() == 1))
    }

    /// Every pin.
    pub async fn pins(&self) -> Result<Vec<PinRow>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as("SELECT name, store_path, created_at FROM pins ORDER BY name").fetch_all(pool).await?))
    }
}
