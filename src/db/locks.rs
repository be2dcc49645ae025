//! Locks that hold across every process sharing the database: the publish gate and the
//! one-collection-at-a-time lock. SQLite belongs to one process, so an in-process lock is all
//! there is to take; with PostgreSQL several replicas may serve, so each lock is also a
//! PostgreSQL advisory lock (keys below, berth's alone in its database).
//!
//! Why a transaction-level lock for the gate: it lives exactly as long as its transaction, so
//! dropping the guard (no `async` in `Drop`) is enough — sqlx rolls the dropped transaction
//! back when the connection goes back to its pool, which ends the lock. A guard can never
//! leak the lock into the pool. The collection lock is held for minutes and must not pin a
//! transaction open that long: it is a session lock, unlocked explicitly, on a connection
//! that is closed rather than returned to the pool, so a lock not released (an error, a
//! panic) dies with its session.

use std::sync::Arc;

use sqlx::{
    pool::PoolConnection,
    postgres::{PgPool, PgPoolOptions},
    Postgres, Transaction,
};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use super::{Db, DbError};

/// `pg_advisory_xact_lock*` key of the publish gate ("berth" + 1).
const PUBLISH_GATE_KEY: i64 = 0x6265_7274_6801;
/// `pg_try_advisory_lock` key held while a collection runs ("berth" + 2).
pub const COLLECTION_KEY: i64 = 0x6265_7274_6802;
/// `pg_try_advisory_lock` key held while a cache re-signing run works ("berth" + 4; + 3 is
/// the schema migrations' lock, `migrations.rs`).
pub const RESIGN_KEY: i64 = 0x6265_7274_6804;
/// `pg_try_advisory_lock` key of the replica that watches for hosts going offline ("berth" + 5).
pub const OFFLINE_WATCH_KEY: i64 = 0x6265_7274_6805;
/// `pg_try_advisory_lock` key of the replica that drives the pushed hosts ("berth" + 6).
pub const PUSH_KEY: i64 = 0x6265_7274_6806;
/// Gate holders per process at once (a publication, rollback or pin each). They have a pool
/// of their own: a holder needs the main pool's connections for its work, and holders
/// filling the main pool would wait on each other for ever.
const GATE_CONNECTIONS: u32 = 16;

/// The publish gate: publications (and rollbacks, pins) hold it for reading, the collector
/// for writing (see `gc::run`). Cheap to clone; clones are the same gate.
#[derive(Clone, Debug)]
pub struct PublishGate {
    local: Arc<RwLock<()>>,
    /// PostgreSQL: where the advisory lock's transactions run.
    shared: Option<PgPool>,
}

/// A hold of the gate; dropping it releases it (the database lock a moment later, when its
/// connection has rolled back).
#[derive(Debug)]
#[must_use = "the gate is released when the guard drops"]
pub struct GateGuard {
    /// Dropped first: its rollback is queued before another holder in this process starts.
    _shared: Option<Transaction<'static, Postgres>>,
    _local: Local,
}

#[derive(Debug)]
enum Local {
    Read(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Write(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

impl PublishGate {
    /// The gate of `db`: in-process for SQLite, also database-wide for PostgreSQL.
    pub fn new(db: &Db) -> Self {
        let shared = match db {
            Db::Sqlite(_) => None,
            Db::Postgres(pool) => {
                let options = PgPoolOptions::new().max_connections(GATE_CONNECTIONS);
                Some(options.connect_lazy_with((*pool.connect_options()).clone()))
            }
        };
        Self { local: Arc::default(), shared }
    }

    /// Holds the gate for reading: many readers at once, in every process, but no writer.
    pub async fn read(&self) -> Result<GateGuard, DbError> {
        // In-process first, then the database, in every holder: no two wait on each other
        // in opposite orders.
        let local = Local::Read(Arc::clone(&self.local).read_owned().await);
        let shared = self.lock("SELECT pg_advisory_xact_lock_shared($1)").await?;
        Ok(GateGuard { _shared: shared, _local: local })
    }

    /// Holds the gate for writing: no other holder, in any process.
    pub async fn write(&self) -> Result<GateGuard, DbError> {
        let local = Local::Write(Arc::clone(&self.local).write_owned().await);
        let shared = self.lock("SELECT pg_advisory_xact_lock($1)").await?;
        Ok(GateGuard { _shared: shared, _local: local })
    }

    async fn lock(&self, sql: &str) -> Result<Option<Transaction<'static, Postgres>>, DbError> {
        let Some(pool) = &self.shared else { return Ok(None) };
        super::count_query();
        let mut tx = pool.begin().await?;
        sqlx::query(sql).bind(PUBLISH_GATE_KEY).execute(&mut *tx).await?;
        Ok(Some(tx))
    }
}

/// Held while a collection runs: no other collection starts, in any process. Release it
/// with [`CollectionLock::release`]; dropped unreleased, its connection is closed, which
/// releases it too.
#[derive(Debug)]
#[must_use = "release the lock when the collection ends"]
pub struct CollectionLock {
    /// PostgreSQL: the session holding the advisory lock, closed when dropped.
    session: Option<PoolConnection<Postgres>>,
}

impl Db {
    /// Takes the collection lock, or `None` when another process holds it. (SQLite: one
    /// process owns the database, and its in-process lock is enough.)
    pub async fn try_lock_collection(&self) -> Result<Option<CollectionLock>, DbError> {
        let Db::Postgres(pool) = self else { return Ok(Some(CollectionLock { session: None })) };
        super::count_query();
        let mut session = pool.acquire().await?;
        // Before the lock is asked for: however this ends (an error, a cancelled future), the
        // session never goes back to the pool, lock and all.
        session.close_on_drop();
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(COLLECTION_KEY).fetch_one(&mut *session).await?;
        Ok(locked.then_some(CollectionLock { session: Some(session) }))
    }
}

/// The one replica that does a fleet-wide job (watching for hosts going offline, re-signing
/// the cache), so that it is done, and each event it finds announced, once, not once per
/// replica. With PostgreSQL it is a
/// session advisory lock on a connection of its own, closed (and the lock with it) when this
/// is dropped or the replica dies; another replica takes it at its next try. SQLite has one
/// process: it always leads.
#[derive(Debug)]
pub struct Leadership {
    key: i64,
    session: Option<PoolConnection<Postgres>>,
}

impl Db {
    /// Leads the job of `key`, or `None` while another replica does.
    pub async fn try_lead(&self, key: i64) -> Result<Option<Leadership>, DbError> {
        let Db::Postgres(pool) = self else { return Ok(Some(Leadership { key, session: None })) };
        super::count_query();
        let mut session = pool.acquire().await?;
        session.close_on_drop();
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut *session).await?;
        Ok(locked.then_some(Leadership { key, session: Some(session) }))
    }
}

impl Leadership {
    /// Whether this replica still leads: its session answers (a lost connection lost the
    /// lock with it, and another replica may lead now).
    pub async fn holds(&mut self) -> bool {
        let Some(session) = &mut self.session else { return true };
        super::count_query();
        match sqlx::query("SELECT 1").execute(&mut **session).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, key = self.key, "lost the connection holding a leader lock");
                false
            }
        }
    }
}

impl CollectionLock {
    /// Releases the lock (and closes its session).
    pub async fn release(mut self) {
        let Some(mut session) = self.session.take() else { return };
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)").bind(COLLECTION_KEY).execute(&mut *session).await;
        if let Err(e) = unlocked {
            // Closing the session releases it all the same.
            tracing::warn!(error = %e, "releasing the collection lock; closing its connection");
        }
        if let Err(e) = session.close().await {
            tracing::debug!(error = %e, "closing the collection lock's connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::db::testing::{for_each_backend, Backend};

    /// Whether a third session could take the gate's database lock for writing now.
    async fn gate_free_for_writing(db: &Db) -> bool {
        let Db::Postgres(pool) = db else { unreachable!() };
        let mut tx = pool.begin().await.unwrap();
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(PUBLISH_GATE_KEY)
            .fetch_one(&mut *tx)
            .await
            .unwrap()
    }

    /// Fails instead of hanging when a lock is never released.
    async fn soon<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), f).await.unwrap_or_else(|_| panic!("{what} never happened"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_gate_holds_across_replicas_and_is_released_on_drop() {
        let database = Backend::Postgres.database().await;
        let (one, two, observer) = (database.open().await, database.open().await, database.open().await);
        let (gate1, gate2) = (PublishGate::new(&one), PublishGate::new(&two));

        let reading = gate1.read().await.unwrap();
        let also_reading = soon("a second reader on another replica", gate2.read()).await.unwrap();
        assert!(!gate_free_for_writing(&observer).await, "readers exclude a writer");
        drop((reading, also_reading));

        let writing = soon("the writer, once readers dropped their guards", gate1.write()).await.unwrap();
        assert!(!gate_free_for_writing(&observer).await);
        let mut blocked = Box::pin(gate2.read());
        assert!(futures::poll!(blocked.as_mut()).is_pending());
        drop(writing);
        let reading = soon("a reader on another replica, once the writer dropped", blocked).await.unwrap();
        drop(reading);
        soon("the gate free again", async {
            while !gate_free_for_writing(&observer).await {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }

    for_each_backend! {
        /// In one process the gate is an ordinary read-write lock, whatever the database.
        async fn a_writer_excludes_readers_in_process(db: Db) {
            let gate = PublishGate::new(&db);
            let writing = gate.write().await.unwrap();
            let mut reading = Box::pin(gate.read());
            assert!(futures::poll!(reading.as_mut()).is_pending());
            drop(writing);
            let reading = soon("the reader", reading).await.unwrap();
            let mut writing = Box::pin(gate.write());
            assert!(futures::poll!(writing.as_mut()).is_pending());
            drop(reading);
            drop(soon("the writer", writing).await.unwrap());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_collection_at_a_time_across_replicas() {
        let database = Backend::Postgres.database().await;
        let (one, two) = (database.open().await, database.open().await);
        let running = one.try_lock_collection().await.unwrap().expect("free");
        assert!(two.try_lock_collection().await.unwrap().is_none(), "busy on the other replica");
        assert!(one.try_lock_collection().await.unwrap().is_none(), "busy on its own pool too");
        running.release().await;
        let running = two.try_lock_collection().await.unwrap().expect("released explicitly");
        drop(running); // unreleased: an error path
        let again = soon("the lock freed by its closed session", async {
            loop {
                if let Some(lock) = one.try_lock_collection().await.unwrap() {
                    return lock;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        again.release().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_replica_leads_and_another_takes_over_when_it_goes() {
        let database = Backend::Postgres.database().await;
        let (one, two) = (database.open().await, database.open().await);
        let mut leading = one.try_lead(OFFLINE_WATCH_KEY).await.unwrap().expect("free");
        assert!(leading.holds().await);
        assert!(two.try_lead(OFFLINE_WATCH_KEY).await.unwrap().is_none(), "the other replica leads");
        assert!(two.try_lead(COLLECTION_KEY).await.unwrap().is_some(), "another job's key is its own");
        drop(leading); // the leader stops: its session closes
        let mut taken = soon("the lead taken over", async {
            loop {
                if let Some(lead) = two.try_lead(OFFLINE_WATCH_KEY).await.unwrap() {
                    return lead;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(taken.holds().await);
        let sqlite = Backend::Sqlite.db().await;
        assert!(sqlite.try_lead(OFFLINE_WATCH_KEY).await.unwrap().is_some(), "one process: it leads");
        assert!(sqlite.try_lead(OFFLINE_WATCH_KEY).await.unwrap().is_some());
    }
}
