//! Metadata: the index of paths, NAR files and tokens (later: hosts, generations, builds).
//! SQLite embedded by default, PostgreSQL when replicas share a bucket; one access layer for
//! both. Every query is written once in SQL that both dialects accept (`$1` placeholders,
//! TEXT and BIGINT columns) and run on whichever pool is open.

mod builds;
mod cache_keys;
mod commits;
mod deploy_keys;
mod diffs;
mod enroll;
mod forge;
mod gc;
mod generations;
mod listen;
mod locks;
mod migrations;
mod objects;
mod paths;
mod reports;
mod resign;
mod rollouts;
#[cfg(test)]
pub(crate) mod testing;
mod tokens;

use std::{
    collections::HashSet,
    str::FromStr,
    sync::atomic::{AtomicU64, Ordering},
};

use sqlx::{
    postgres::{PgPool, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous},
};

pub use builds::{BuildFilter, BuildHostRow, BuildRow, LastBuild};
pub use cache_keys::CacheKeyRow;
pub use commits::BuildCommitRow;
pub use deploy_keys::DeployKeyRow;
pub use diffs::StoredDiff;
pub use enroll::{Enrolled, HostRemoval};
pub use forge::ForgeStatusRow;
pub use gc::{PinRow, PENDING_NAR, PENDING_NARINFO};
pub use generations::{GenerationRow, HostRow, NewGeneration, Released};
pub use listen::{GenerationListener, Heard, Notice, CHANNEL as GENERATIONS_CHANNEL};
pub use locks::{CollectionLock, GateGuard, Leadership, PublishGate, COLLECTION_KEY, OFFLINE_WATCH_KEY, PUSH_KEY};
pub use objects::{PathObject, PathObjectKind};
pub use paths::{CacheStats, ClosureRow, NarFileRow, PathListener, PathRow, RecentPath};
pub use reports::{HostStatus, Recorded, ReportRow};
pub use resign::{ResignLock, ResignRun, ResignState};
pub use rollouts::{NewRollout, RolloutHostRow, RolloutRow};
pub use tokens::TokenRow;

/// Metadata failures. Display texts are for logs; clients see "internal error".
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database URL is not `sqlite://…` or `postgres://…`.
    #[error("unsupported database URL: use sqlite:///path/to/db.sqlite or postgres://…")]
    BadUrl,
    /// The database failed.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// A stored value this version cannot read.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl DbError {
    /// Whether the database's disk is full: SQLite's SQLITE_FULL (13), PostgreSQL's
    /// `disk_full` (53100), or ENOSPC/EDQUOT (28, 122 on Linux) from the connection itself.
    pub fn is_storage_full(&self) -> bool {
        match self {
            Self::Sql(sqlx::Error::Database(e)) => matches!(e.code().as_deref(), Some("13" | "53100")),
            Self::Sql(sqlx::Error::Io(e)) => matches!(e.raw_os_error(), Some(28 | 122)),
            _ => false,
        }
    }
}

/// An open metadata database. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Db {
    /// Embedded SQLite (WAL mode).
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool `$db` holds: the query is written once
/// and type-checked for each dialect.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {{
        $crate::db::count_query();
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    }};
}
pub(crate) use on_pool;

/// Database operations begun by this process (see [`queries`]).
static QUERIES: AtomicU64 = AtomicU64::new(0);

/// Counts one database operation: every `on_pool!` (one statement, or one transaction of a
/// few) and the few queries written per dialect. Process-wide, like the `/metrics` it feeds.
pub(crate) fn count_query() {
    if SCRAPING.try_with(|_| ()).is_ok() {
        SCRAPE_QUERIES.fetch_add(1, Ordering::Relaxed);
    } else {
        QUERIES.fetch_add(1, Ordering::Relaxed);
    }
}

/// Database operations run by `/metrics` scrapes (see [`scraping`]).
static SCRAPE_QUERIES: AtomicU64 = AtomicU64::new(0);

tokio::task_local! {
    /// Set while a `/metrics` scrape reads the index.
    static SCRAPING: ();
}

/// Runs `f` (a `/metrics` scrape's reads) with its queries counted apart from
/// [`queries`]: measuring what idle long-polls or `berth hosts` cost must not change it.
pub async fn scraping<F: std::future::Future>(f: F) -> F::Output {
    SCRAPING.scope((), f).await
}

/// The database operations `/metrics` scrapes ran (`berth_db_scrape_queries_total`).
pub fn scrape_queries() -> u64 {
    SCRAPE_QUERIES.load(Ordering::Relaxed)
}

/// How many database operations (a statement or a transaction) this process has run:
/// `berth_db_queries_total`, so that what idle long-polls or `berth hosts` cost is measured,
/// not guessed.
pub fn queries() -> u64 {
    QUERIES.load(Ordering::Relaxed)
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn open(url: &str) -> Result<Self, DbError> {
        let db = if url.starts_with("sqlite:") {
            create_parent_dir(url)?;
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // WAL + NORMAL: a power cut may lose the last commits but never corrupts, and
                // a lost row only hides a path whose objects were written before it.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(std::time::Duration::from_secs(10));
            // No liveness check per checkout: a local file does not drop connections, and the
            // check costs more than a narinfo lookup.
            let pool = SqlitePoolOptions::new().max_connections(8).test_before_acquire(false);
            Db::Sqlite(pool.connect_with(options).await?)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Db::Postgres(PgPoolOptions::new().max_connections(16).connect(url).await?)
        } else {
            return Err(DbError::BadUrl);
        };
        migrations::run(&db).await?;
        Ok(db)
    }

    /// Whether other processes may share this database (PostgreSQL: replicas), so that
    /// what one process caches or holds in memory is not all there is.
    pub fn is_shared(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// The values a one-column text `SELECT` finds among `values`: each `{in}` in `sql` stands
    /// for the bound list of one chunk of them (run a chunk at a time, well under either
    /// dialect's limit on bound parameters).
    pub(crate) async fn select_in(&self, sql: &str, values: &[String]) -> Result<HashSet<String>, DbError> {
        let parts: Vec<&str> = sql.split("{in}").collect();
        let mut found = HashSet::new();
        for chunk in values.chunks(500) {
            on_pool!(self, pool => {
                let mut q = sqlx::QueryBuilder::new(parts[0]);
                for part in &parts[1..] {
                    {
                        let mut list = q.separated(", ");
                        for value in chunk {
                            list.push_bind(value);
                        }
                    }
                    q.push(*part);
                }
                let rows: Vec<String> = q.build_query_scalar().fetch_all(pool).await?;
                found.extend(rows);
            });
        }
        Ok(found)
    }

    /// Whether the database answers (health checks).
    pub async fn ping(&self) -> Result<(), DbError> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop)?);
        Ok(())
    }

    /// Closes every connection (checkpoints SQLite's WAL).
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

/// SQLite creates the file but not its directory: make the directory of `sqlite:///dir/file`.
fn create_parent_dir(url: &str) -> Result<(), DbError> {
    let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = std::path::Path::new(path.split('?').next().unwrap_or(path));
    match path.parent() {
        Some(dir) if path.is_absolute() && !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|e| DbError::Sql(sqlx::Error::Io(e)))
        }
        _ => Ok(()),
    }
}

/// The few spellings the dialects do not share.
pub(crate) trait Dialect {
    /// How a transaction that reads before it writes must begin. SQLite's default (deferred)
    /// transaction fails at once with "database is locked" when it upgrades to writing after
    /// another connection wrote; `BEGIN IMMEDIATE` takes the write lock first (and waits for
    /// it).
    const BEGIN: &'static str;
    /// Appended to a `SELECT` that picks a row to update, so that concurrent pickers each
    /// get another row instead of waiting for (and then losing) the same one. SQLite has one
    /// writer at a time and no row locks: nothing to add.
    const SKIP_LOCKED: &'static str;
    /// Run first in a write transaction that checks the `builds` table before inserting, so
    /// that two such transactions take turns. SQLite's `BEGIN IMMEDIATE` does that already;
    /// PostgreSQL's READ COMMITTED would let both check, then both insert. (The mode conflicts
    /// with itself and with claims' row updates, which wait a moment; readers never do.)
    const LOCK_BUILDS: Option<&'static str>;
    /// Run first in each migration's transaction (bound to the migration lock's key), so
    /// that replicas starting together take turns. SQLite's `BEGIN IMMEDIATE` suffices.
    const LOCK_MIGRATIONS: Option<&'static str>;
    /// Run in the transaction that makes a generation, bound to the channel and the payload,
    /// so that every replica hears of it at commit (`listen.rs`). SQLite: one process.
    const NOTIFY: Option<&'static str>;
}

impl Dialect for SqlitePool {
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
    const SKIP_LOCKED: &'static str = "";
    const LOCK_BUILDS: Option<&'static str> = None;
    const LOCK_MIGRATIONS: Option<&'static str> = None;
    const NOTIFY: Option<&'static str> = None;
}

impl Dialect for PgPool {
    const BEGIN: &'static str = "BEGIN";
    const SKIP_LOCKED: &'static str = "FOR UPDATE SKIP LOCKED";
    const LOCK_BUILDS: Option<&'static str> = Some("LOCK TABLE builds IN SHARE ROW EXCLUSIVE MODE");
    const LOCK_MIGRATIONS: Option<&'static str> = Some("SELECT pg_advisory_xact_lock($1)");
    const NOTIFY: Option<&'static str> = Some("SELECT pg_notify($1, $2)");
}

/// [`Dialect::BEGIN`] for `pool`'s dialect.
pub(crate) fn write_begin<P: Dialect>(_: &P) -> &'static str {
    P::BEGIN
}

/// [`Dialect::LOCK_BUILDS`] for `pool`'s dialect.
pub(crate) fn lock_builds<P: Dialect>(_: &P) -> Option<&'static str> {
    P::LOCK_BUILDS
}

/// [`Dialect::LOCK_MIGRATIONS`] for `pool`'s dialect.
pub(crate) fn lock_migrations<P: Dialect>(_: &P) -> Option<&'static str> {
    P::LOCK_MIGRATIONS
}

/// [`Dialect::NOTIFY`] for `pool`'s dialect.
pub(crate) fn notify_sql<P: Dialect>(_: &P) -> Option<&'static str> {
    P::NOTIFY
}

/// [`Dialect::SKIP_LOCKED`] for `pool`'s dialect.
pub(crate) fn skip_locked<P: Dialect>(_: &P) -> &'static str {
    P::SKIP_LOCKED
}

/// Seconds since the Unix epoch, as stored in every `*_at` column.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
pub(crate) async fn test_db() -> Db {
    // A named in-memory database shared by the pool's connections, unique per test.
    let url = format!("sqlite:file:{}?mode=memory&cache=shared", uuid::Uuid::new_v4());
    Db::open(&url).await.unwrap()
}
