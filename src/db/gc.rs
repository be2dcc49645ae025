//! Retention's view of the index: a snapshot for the planner, the one transaction that reads
//! it, plans and forgets what the plan deletes (recording the objects still to delete), what
//! the build host's GC roots are still needed for, and pins.

use std::collections::{HashMap, HashSet};

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
    generations: Vec<(String, i64, String, i64, String)>,
    active: Vec<(String, i64)>,
    confirmed: Vec<(String, i64)>,
    last_reports: Vec<(String, i64, String)>,
    held: Vec<(String, i64)>,
    pins: Vec<String>,
    building: Vec<String>,
    loose: Vec<(String, i64, i64)>,
}

/// The phases an agent reports while it applies a generation, before it settles.
const IN_FLIGHT_PHASES: &[&str] = &["downloading", "activating", "healthy"];

/// Each path's references, as hash parts separated by spaces, per dialect (`refs` holds
/// basenames, see `ingest::publish`). One row per referrer: reading half a million rows one
/// by one takes four times as long.
const SQLITE_REFS: &str = "SELECT referrer, group_concat(substr(reference, 1, 32), ' ') FROM refs GROUP BY referrer";
/// See [`SQLITE_REFS`].
const POSTGRES_REFS: &str = "SELECT referrer, string_agg(substr(reference, 1, 32), ' ') FROM refs GROUP BY referrer";

/// Reads a `RawSnapshot` inside the transaction `$tx` (either dialect; `$refs` is its
/// references query).
macro_rules! read_snapshot {
    ($tx:ident, $refs:expr) => {
        RawSnapshot {
            paths: sqlx::query_as("SELECT hash, nar_file, file_size, created_at FROM paths")
                .fetch_all(&mut *$tx)
                .await?,
            refs: sqlx::query_as($refs).fetch_all(&mut *$tx).await?,
            generations: sqlx::query_as("SELECT host, number, store_path, created_at, branch FROM generations")
                .fetch_all(&mut *$tx)
                .await?,
            active: sqlx::query_as("SELECT name, active_generation FROM hosts WHERE active_generation IS NOT NULL")
                .fetch_all(&mut *$tx)
                .await?,
            confirmed: sqlx::query_as("SELECT DISTINCT host, generation FROM reports WHERE phase = 'confirmed'")
                .fetch_all(&mut *$tx)
                .await?,
            last_reports: sqlx::query_as(
                "SELECT r.host, r.generation, r.phase FROM reports r
                 JOIN (SELECT MAX(id) AS id FROM reports GROUP BY host) l ON r.id = l.id",
            )
            .fetch_all(&mut *$tx)
            .await?,
            held: sqlx::query_as(
                "SELECT g.host, g.number FROM generations g JOIN rollouts r ON r.id = g.held_by
                 WHERE r.state IN ('queued', 'running', 'halted')",
            )
            .fetch_all(&mut *$tx)
            .await?,
            pins: sqlx::query_scalar("SELECT store_path FROM pins").fetch_all(&mut *$tx).await?,
            building: sqlx::query_scalar(
                "SELECT h.store_path FROM build_hosts h JOIN builds b ON b.id = h.build_id
                 WHERE b.state IN ('queued', 'running') AND h.store_path IS NOT NULL",
            )
            .fetch_all(&mut *$tx)
            .await?,
            loose: sqlx::query_as(
                "SELECT name, file_size, created_at FROM nar_files f
                 WHERE NOT EXISTS (SELECT 1 FROM paths p WHERE p.nar_file = f.name)",
            )
            .fetch_all(&mut *$tx)
            .await?,
        }
    };
}

/// Rows per multi-row statement: well under either dialect's limit on bound parameters.
const CHUNK: usize = 500;

/// Runs `$prefix ($column IN (…))` for `$values`, a chunk at a time, on `$ex`.
macro_rules! delete_in {
    ($ex:expr, $prefix:literal, $values:expr) => {
        for chunk in $values.chunks(CHUNK) {
            let mut q = sqlx::QueryBuilder::new($prefix);
            q.push(" IN (");
            let mut list = q.separated(", ");
            for v in chunk {
                list.push_bind(v);
            }
            q.push(")");
            q.build().execute(&mut *$ex).await?;
        }
    };
}

/// Records `$names` of `$kind` in `gc_pending`, due at `$due`, a chunk at a time, on `$ex`.
/// An object already pending (deleted, published again, deleted again) takes the new due
/// time: a narinfo served since the first deletion may be cached until then.
macro_rules! add_pending {
    ($ex:expr, $kind:expr, $names:expr, $due:expr) => {
        for chunk in $names.chunks(CHUNK) {
            let mut q = sqlx::QueryBuilder::new("INSERT INTO gc_pending (kind, name, due_at) ");
            q.push_values(chunk, |mut row, name| {
                row.push_bind($kind).push_bind(name).push_bind($due);
            });
            q.push(" ON CONFLICT (kind, name) DO UPDATE SET due_at = excluded.due_at");
            q.build().execute(&mut *$ex).await?;
        }
    };
}

/// Applies `$plan` inside the transaction `$tx` (either dialect; NAR deletions due at
/// `$nar_due`), a chunk of rows per
/// statement: a plan of 100,000 paths is a few hundred statements, not half a million. The
/// deleted paths' references are forgotten afterwards (`gc_forget_references`): that is
/// most of the work, and it need not hold the lock.
macro_rules! apply_plan {
    ($tx:ident, $plan:expr, $nar_due:expr) => {{
        let (plan, nar_due): (&Plan, i64) = ($plan, $nar_due);
        for (host, number) in &plan.drop_generations {
            sqlx::query("DELETE FROM generations WHERE host = $1 AND number = $2")
                .bind(host)
                .bind(number)
                .execute(&mut *$tx)
                .await?;
        }
        delete_in!($tx, "DELETE FROM paths WHERE hash", plan.delete_paths);
        add_pending!($tx, PENDING_NARINFO, plan.delete_paths, 0_i64);
        delete_in!($tx, "DELETE FROM nar_files WHERE name", plan.delete_nar_files);
        add_pending!($tx, PENDING_NAR, plan.delete_nar_files, nar_due);
    }};
}

impl RawSnapshot {
    fn into_snapshot(self) -> Snapshot {
        let RawSnapshot { paths, refs, generations, active, confirmed, last_reports, held, pins, building, loose } =
            self;
        let mut held_by_host: HashMap<String, Vec<i64>> = HashMap::new();
        for (host, number) in held {
            held_by_host.entry(host).or_default().push(number);
        }
        let mut confirmed_by_host: HashMap<String, Vec<i64>> = HashMap::new();
        for (host, generation) in confirmed {
            confirmed_by_host.entry(host).or_default().push(generation);
        }
        // A report still in progress: the host is applying that generation.
        let in_flight = last_reports
            .into_iter()
            .filter(|(_, _, phase)| IN_FLIGHT_PHASES.contains(&phase.as_str()))
            .map(|(host, generation, _)| (host, generation))
            .collect();
        let mut references: HashMap<String, Vec<String>> = refs
            .into_iter()
            .map(|(referrer, targets)| {
                let targets = targets.split(' ').filter(|t| !t.is_empty() && *t != referrer).map(str::to_owned);
                let targets = targets.collect();
                (referrer, targets)
            })
            .collect();
        Snapshot {
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
                .map(|(host, number, store_path, created_at, branch)| GenerationEntry {
                    host,
                    number,
                    root: hash_of(&store_path),
                    created_at,
                    branch,
                })
                .collect(),
            active: active.into_iter().collect(),
            confirmed: confirmed_by_host,
            in_flight,
            held: held_by_host,
            pins: pins.iter().map(|p| hash_of(p)).collect(),
            building: building.iter().map(|p| hash_of(p)).collect(),
            loose_nar_files: loose.into_iter().map(|(n, s, t)| (n, s as u64, t)).collect(),
            now: now(),
        }
    }
}

impl Db {
    /// Reads everything the planner needs, in one read transaction (for dry runs: by the
    /// time a plan made from it would be applied, the index may have changed).
    pub async fn gc_snapshot(&self) -> Result<Snapshot, DbError> {
        super::count_query();
        let raw = match self {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                read_snapshot!(tx, SQLITE_REFS)
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                read_snapshot!(tx, POSTGRES_REFS)
            }
        };
        Ok(raw.into_snapshot())
    }

    /// Reads the snapshot, lets `decide` plan from it, and applies the plan to the index, all
    /// in one write transaction: generations dropped, paths forgotten (so they vanish from
    /// HTTP at once), NAR file records removed, and the objects to
    /// delete recorded in `gc_pending` (narinfos due at once, NAR files at `nar_due`).
    /// Returns the plan applied.
    ///
    /// Why one transaction: generations, pins and builds are recorded without the publish
    /// gate, so a plan made from an earlier read could delete the system a generation
    /// recorded meanwhile points at (a build that found an old system still in the cache).
    /// The transaction takes the write lock before it reads (SQLite: a first write; PostgreSQL:
    /// the tables the plan depends on, locked against writers), so every writer waits for the
    /// commit and then sees the plan's result; readers are never blocked.
    pub async fn gc_apply(&self, decide: impl FnOnce(&Snapshot) -> Plan, nar_due: i64) -> Result<Plan, DbError> {
        super::count_query();
        match self {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                // A write (of nothing) takes SQLite's write lock before the first read.
                sqlx::query("DELETE FROM gc_pending WHERE 1 = 0").execute(&mut *tx).await?;
                let plan = decide(&read_snapshot!(tx, SQLITE_REFS).into_snapshot());
                apply_plan!(tx, &plan, nar_due);
                tx.commit().await?;
                Ok(plan)
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "LOCK TABLE paths, refs, nar_files, generations, hosts, pins, build_hosts, gc_pending
                     IN SHARE ROW EXCLUSIVE MODE",
                )
                .execute(&mut *tx)
                .await?;
                let plan = decide(&read_snapshot!(tx, POSTGRES_REFS).into_snapshot());
                apply_plan!(tx, &plan, nar_due);
                tx.commit().await?;
                Ok(plan)
            }
        }
    }

    /// What the build host's GC roots may still be needed for, read in one transaction: the
    /// builds that have ended (a build in flight may still record generations from its
    /// roots), and the toplevels of all generations. Builds are read first: a build that
    /// ended before that read recorded its generations before it ended.
    pub async fn gc_root_needs(&self) -> Result<(HashSet<i64>, HashSet<String>), DbError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let ended: Vec<i64> = sqlx::query_scalar("SELECT id FROM builds WHERE state NOT IN ('queued', 'running')")
                .fetch_all(&mut *tx)
                .await?;
            let toplevels: Vec<String> =
                sqlx::query_scalar("SELECT DISTINCT store_path FROM generations").fetch_all(&mut *tx).await?;
            Ok((ended.into_iter().collect(), toplevels.into_iter().collect()))
        })
    }

    /// Objects a collection still has to delete and may delete at `now`, narinfos first, at
    /// most `limit`.
    pub async fn gc_pending(&self, limit: i64, now: i64) -> Result<Vec<(String, String)>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT kind, name FROM gc_pending WHERE due_at <= $2
             ORDER BY CASE kind WHEN 'narinfo' THEN 0 ELSE 1 END, name LIMIT $1",
        ).bind(limit).bind(now).fetch_all(pool).await?))
    }

    /// How many pending deletions are not due yet at `now`.
    pub async fn gc_pending_deferred(&self, now: i64) -> Result<u64, DbError> {
        let n: i64 = on_pool!(self, pool => sqlx::query_scalar("SELECT COUNT(*) FROM gc_pending WHERE due_at > $1")
            .bind(now).fetch_one(pool).await?);
        Ok(n as u64)
    }

    /// Marks pending deletions (kind, name) done.
    pub async fn gc_pending_done(&self, done: &[(String, String)]) -> Result<(), DbError> {
        let mut by_kind: HashMap<&str, Vec<&str>> = HashMap::new();
        for (kind, name) in done {
            by_kind.entry(kind).or_default().push(name);
        }
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for (kind, names) in &by_kind {
                for chunk in names.chunks(CHUNK) {
                    let mut q = sqlx::QueryBuilder::new("DELETE FROM gc_pending WHERE kind = ");
                    q.push_bind(*kind).push(" AND name IN (");
                    let mut list = q.separated(", ");
                    for name in chunk {
                        list.push_bind(*name);
                    }
                    q.push(")");
                    q.build().execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Forgets the references of up to `limit` paths that are no longer indexed; returns how
    /// many rows went (0: none left). Safe without the publish gate: a path published again
    /// meanwhile is indexed, and its references are then left alone.
    pub async fn gc_forget_references(&self, limit: i64) -> Result<u64, DbError> {
        on_pool!(self, pool => Ok(sqlx::query(
            "DELETE FROM refs WHERE referrer IN (
                 SELECT DISTINCT r.referrer FROM refs r
                 WHERE NOT EXISTS (SELECT 1 FROM paths p WHERE p.hash = r.referrer) LIMIT $1)
             AND NOT EXISTS (SELECT 1 FROM paths p WHERE p.hash = refs.referrer)",
        ).bind(limit).execute(pool).await?.rows_affected()))
    }

    /// Which of these NAR files are in use again (received anew, or referenced by a path)
    /// since a collection decided to delete them.
    pub async fn nar_files_in_use(&self, names: &[String]) -> Result<HashSet<String>, DbError> {
        let sql =
            "SELECT name FROM nar_files WHERE name IN ({in}) UNION SELECT nar_file FROM paths WHERE nar_file IN ({in})";
        self.select_in(sql, names).await
    }

    /// Which NAR files of `names` the index knows: recorded, used by a path, or owed a
    /// deletion by a collection (whose time has not come: see `gc::run`).
    pub async fn nar_files_known(&self, names: &[String]) -> Result<HashSet<String>, DbError> {
        let sql =
            "SELECT name FROM nar_files WHERE name IN ({in}) UNION SELECT nar_file FROM paths WHERE nar_file IN ({in})
                   UNION SELECT name FROM gc_pending WHERE kind = 'nar' AND name IN ({in})";
        self.select_in(sql, names).await
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::db::{testing::for_each_backend, BuildHostRow, NarFileRow, NewGeneration, PathRow};
    use crate::gc::{plan, Policy};

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn hash(c: char) -> String {
        c.to_string().repeat(32)
    }

    fn store_path(c: char) -> String {
        format!("/nix/store/{}-sys-{c}", hash(c))
    }

    fn nar_file(c: char) -> String {
        format!("{}.nar.zst", hash(c))
    }

    /// Publishes path `c` (its NAR file, then its row) referencing `refs`.
    async fn publish(db: &Db, c: char, refs: &[char]) {
        let (file, digest) = (nar_file(c), "sha256:0".to_string());
        let row =
            NarFileRow { name: file.clone(), file_hash: digest.clone(), file_size: 10, nar_hash: digest, nar_size: 10 };
        db.insert_nar_file(&row).await.unwrap();
        let basename = |c: char| store_path(c)["/nix/store/".len()..].to_owned();
        db.insert_path(&PathRow {
            hash: hash(c),
            store_path: basename(c),
            nar_file: file,
            nar_hash: row.nar_hash,
            nar_size: 10,
            file_size: 10,
            deriver: None,
            narinfo: format!("StorePath: {}\n", store_path(c)),
            references: refs.iter().map(|r| basename(*r)).collect(),
        })
        .await
        .unwrap();
    }

    async fn generation(db: &Db, c: char) -> i64 {
        let g = NewGeneration {
            host: "h",
            repository: "fleet",
            store_path: &store_path(c),
            commit_sha: SHA,
            branch: "main",
            build_id: None,
            signer: None,
            rollout_id: None,
            held: false,
            diff_from: None,
            diff: None,
        };
        db.add_generation(&g).await.unwrap()
    }

    fn keep(n: usize) -> Policy {
        Policy { keep_last: n, keep_last_per_host: HashMap::new(), keep_newer_than: None, grace_period: 0 }
    }

    /// Host `h` has run `a` then `b`, both referencing `l`.
    async fn two_generations(db: &Db) {
        publish(db, 'l', &[]).await;
        publish(db, 'a', &['l']).await;
        publish(db, 'b', &['l']).await;
        assert_eq!((generation(db, 'a').await, generation(db, 'b').await), (1, 2));
    }

    for_each_backend! {
        async fn a_plan_is_applied_in_one_transaction_and_its_deletions_are_left_pending(db: Db) {
            two_generations(&db).await;
            let t = now();
            let plan = db.gc_apply(|s| plan::plan(s, &keep(1)), 0).await.unwrap();
            assert_eq!(plan.drop_generations, [("h".to_string(), 1)]);
            assert_eq!((plan.delete_paths, plan.delete_nar_files), (vec![hash('a')], vec![nar_file('a')]));
            assert_eq!(db.generations("h").await.unwrap().iter().map(|g| g.number).collect::<Vec<_>>(), [2]);
            assert!(db.narinfo(&hash('a')).await.unwrap().is_none(), "gone from HTTP at once");
            assert!(db.narinfo(&hash('l')).await.unwrap().is_some());
            assert!(db.nar_file(&nar_file('a')).await.unwrap().is_none());
            let pending = db.gc_pending(10, t).await.unwrap();
            assert_eq!(pending, [(PENDING_NARINFO.into(), hash('a')), (PENDING_NAR.into(), nar_file('a'))]);
            assert_eq!(db.gc_pending_deferred(t).await.unwrap(), 0);
            let snapshot = db.gc_snapshot().await.unwrap();
            assert_eq!(snapshot.paths.iter().map(|p| p.references.len()).sum::<usize>(), 1, "b -> l");
            let refs_of_a = || async {
                let n: i64 = on_pool!(&db, pool => sqlx::query_scalar("SELECT COUNT(*) FROM refs WHERE referrer = $1")
                    .bind(hash('a'))
                    .fetch_one(pool)
                    .await
                    .unwrap());
                n
            };
            assert_eq!(refs_of_a().await, 1, "forgotten afterwards");
            assert_eq!(db.gc_forget_references(10).await.unwrap(), 1);
            assert_eq!(refs_of_a().await, 0);
            assert_eq!(db.gc_forget_references(10).await.unwrap(), 0, "b's and l's stay");
            let in_use = db.nar_files_in_use(&[nar_file('a'), nar_file('b')]).await.unwrap();
            assert_eq!(in_use, [nar_file('b')].into_iter().collect());
            db.gc_pending_done(&pending).await.unwrap();
            assert!(db.gc_pending(10, t).await.unwrap().is_empty());
        }

        /// With replicas, a NAR's deletion waits until their cached narinfos have expired;
        /// the narinfo's does not.
        async fn nar_deletions_wait_until_due(db: Db) {
            two_generations(&db).await;
            let t = now();
            db.gc_apply(|s| plan::plan(s, &keep(1)), t + 100).await.unwrap();
            assert_eq!(db.gc_pending(10, t).await.unwrap(), [(PENDING_NARINFO.into(), hash('a'))]);
            assert_eq!(db.gc_pending_deferred(t).await.unwrap(), 1);
            let due = db.gc_pending(10, t + 100).await.unwrap();
            assert_eq!(due, [(PENDING_NARINFO.into(), hash('a')), (PENDING_NAR.into(), nar_file('a'))]);
            assert_eq!(db.gc_pending_deferred(t + 100).await.unwrap(), 0);

            // Published again and deleted again before it was due: the later time holds.
            publish(&db, 'a', &['l']).await;
            let plan = db.gc_apply(|s| plan::plan(s, &keep(1)), t + 200).await.unwrap();
            assert_eq!(plan.delete_nar_files, [nar_file('a')]);
            assert_eq!(db.gc_pending(10, t + 100).await.unwrap(), [(PENDING_NARINFO.into(), hash('a'))]);
            assert_eq!(db.gc_pending_deferred(t + 100).await.unwrap(), 1);
        }

        async fn a_build_in_flight_keeps_the_old_system_it_built_again(db: Db) {
            two_generations(&db).await;
            // A revert: the build produced `a` again, found it in the cache, and has not
            // recorded its generation yet.
            let (id, _) = db.enqueue_build("fleet", SHA, "main", "").await.unwrap();
            db.claim_build("w").await.unwrap().unwrap();
            let row = BuildHostRow {
                host: "h".into(),
                state: "publishing".into(),
                store_path: Some(store_path('a')),
                error: None,
                generation: None,
                started_at: None,
                finished_at: None,
                verdict: None,
            };
            db.set_build_host(id, &row).await.unwrap();
            assert_eq!(db.gc_snapshot().await.unwrap().building, [hash('a')]);
            let (ended, _) = db.gc_root_needs().await.unwrap();
            assert!(!ended.contains(&id), "its roots are needed while it runs");

            let plan = db.gc_apply(|s| plan::plan(s, &keep(1)), 0).await.unwrap();
            assert_eq!(plan.drop_generations, [("h".to_string(), 1)]);
            assert!(plan.delete_paths.is_empty(), "{:?}", plan.delete_paths);
            assert!(db.narinfo(&hash('a')).await.unwrap().is_some());

            assert_eq!(generation(&db, 'a').await, 3);
            db.finish_build(id, "succeeded", None).await.unwrap();
            assert!(db.gc_snapshot().await.unwrap().building.is_empty());
            let (ended, toplevels) = db.gc_root_needs().await.unwrap();
            assert!(ended.contains(&id));
            assert_eq!(toplevels, [store_path('a'), store_path('b')].into_iter().collect());
        }

        /// What hosts reported reaches the snapshot: every confirmed generation, and the one
        /// a host is applying while its last report is in progress.
        async fn reports_say_what_a_host_confirmed_and_applies(db: Db) {
            two_generations(&db).await;
            let report = |generation: i64, phase: &str| crate::db::ReportRow {
                generation,
                phase: phase.into(),
                message: None,
                log_tail: None,
                duration_ms: None,
                profile_generation: None,
                created_at: 0,
            };
            db.add_report("h", &report(1, "confirmed"), None).await.unwrap();
            db.add_report("h", &report(2, "downloading"), None).await.unwrap();
            let s = db.gc_snapshot().await.unwrap();
            assert_eq!((s.confirmed.get("h"), s.in_flight.get("h")), (Some(&vec![1]), Some(&2)));
            db.add_report("h", &report(2, "activating"), None).await.unwrap();
            db.add_report("h", &report(2, "confirmed"), None).await.unwrap();
            let s = db.gc_snapshot().await.unwrap();
            let mut confirmed = s.confirmed["h"].clone();
            confirmed.sort();
            assert_eq!((confirmed, s.in_flight.get("h")), (vec![1, 2], None));
            // Keep 1: the host runs 2, and 1 is its way back.
            assert!(plan::plan(&s, &keep(1)).drop_generations.is_empty());
        }

        async fn pins_are_named(db: Db) {
            db.set_pin("p", &store_path('a')).await.unwrap();
            db.set_pin("p", &store_path('b')).await.unwrap();
            db.set_pin("q", &store_path('a')).await.unwrap();
            let pins = db.pins().await.unwrap();
            assert_eq!(pins.iter().map(|p| (p.name.as_str(), p.store_path.clone())).collect::<Vec<_>>(),
                [("p", store_path('b')), ("q", store_path('a'))]);
            assert!(db.remove_pin("p").await.unwrap());
            assert!(!db.remove_pin("p").await.unwrap());
            assert_eq!(db.gc_snapshot().await.unwrap().pins, [hash('a')]);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_waits_while_a_plan_is_made_and_applied() {
        // A file, not memory: writers wait on SQLite's lock as in production.
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite://{}", dir.path().join("db.sqlite").display())).await.unwrap();
        two_generations(&db).await;
        let (planning, planned) = tokio::sync::oneshot::channel();
        let writer = {
            let db = db.clone();
            tokio::spawn(async move {
                planned.await.unwrap();
                let started = Instant::now();
                db.set_pin("p", &store_path('a')).await.unwrap();
                started.elapsed()
            })
        };
        db.gc_apply(
            |s| {
                planning.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300)); // a long plan
                plan::plan(s, &keep(1))
            },
            0,
        )
        .await
        .unwrap();
        let waited = writer.await.unwrap();
        assert!(waited >= Duration::from_millis(250), "the pin was written during the plan ({waited:?})");
    }
}
