//! The re-signing run of `berth cache resign` (`resign/`): one row, its progress, and the
//! index queries it walks with. The cursor is the last path hash re-signed: the run reads
//! the index in hash order, a batch at a time, so it never holds every row and a resumed run
//! starts after the cursor.

use super::{
    locks::{Leadership, RESIGN_KEY},
    on_pool, Db, DbError,
};
use crate::nixfmt::OldSignatures;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResignState {
    /// Started and not finished: working, or stopped by a crash and waiting to be resumed.
    Running,
    /// Every path published before it finished is signed by its key.
    Done,
}

impl ResignState {
    fn as_str(self) -> &'static str {
        match self {
            ResignState::Running => "running",
            ResignState::Done => "done",
        }
    }

    fn parse(s: &str) -> Result<Self, DbError> {
        match s {
            "running" => Ok(ResignState::Running),
            "done" => Ok(ResignState::Done),
            other => Err(DbError::Corrupt(format!("resign state {other:?}"))),
        }
    }
}

/// The run as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResignRun {
    /// Name of the key it signs with.
    pub key_name: String,
    /// What it does with the signatures already there.
    pub old_signatures: OldSignatures,
    /// Where it is.
    pub state: ResignState,
    /// The last path hash it went past (empty before the first batch).
    pub cursor: String,
    /// Narinfos it rewrote so far.
    pub resigned: i64,
    /// When it started (Unix seconds).
    pub started_at: i64,
    /// When it finished.
    pub finished_at: Option<i64>,
}

type RunRow = (String, String, String, String, i64, i64, Option<i64>);

fn from_row((key_name, old, state, cursor, resigned, started_at, finished_at): RunRow) -> Result<ResignRun, DbError> {
    let old_signatures = OldSignatures::parse(&old).ok_or_else(|| DbError::Corrupt(format!("resign mode {old:?}")))?;
    Ok(ResignRun {
        key_name,
        old_signatures,
        state: ResignState::parse(&state)?,
        cursor,
        resigned,
        started_at,
        finished_at,
    })
}

/// Held while a run works: no other run works, in any process. Dropped, its session is
/// closed, which releases it (and a killed process releases it with its connection).
pub type ResignLock = Leadership;

impl Db {
    /// The recorded run, if any was ever started.
    pub async fn resign_run(&self) -> Result<Option<ResignRun>, DbError> {
        let row: Option<RunRow> = on_pool!(self, pool => sqlx::query_as(
            "SELECT key_name, old_signatures, state, cursor_hash, resigned, started_at, finished_at FROM resign_run WHERE id = 1",
        ).fetch_optional(pool).await?);
        row.map(from_row).transpose()
    }

    /// Records a new run from the start, replacing the one before.
    pub async fn begin_resign(&self, key_name: &str, old: OldSignatures) -> Result<(), DbError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM resign_run WHERE id = 1").execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO resign_run (id, key_name, old_signatures, state, cursor_hash, resigned, started_at)
                 VALUES (1, $1, $2, $3, '', 0, $4)",
            )
            .bind(key_name).bind(old.as_str()).bind(ResignState::Running.as_str()).bind(super::now())
            .execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Records that the run went past `cursor`, having rewritten `resigned` more narinfos.
    pub async fn advance_resign(&self, cursor: &str, resigned: i64) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE resign_run SET cursor_hash = $1, resigned = resigned + $2 WHERE id = 1")
                .bind(cursor).bind(resigned).execute(pool).await?;
            Ok(())
        })
    }

    /// Records that the run finished.
    pub async fn finish_resign(&self) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE resign_run SET state = $1, finished_at = $2 WHERE id = 1")
                .bind(ResignState::Done.as_str()).bind(super::now()).execute(pool).await?;
            Ok(())
        })
    }

    /// Up to `limit` published paths after `cursor` in hash order: `(hash, narinfo)`.
    pub async fn narinfos_after(&self, cursor: &str, limit: i64) -> Result<Vec<(String, String)>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT hash, narinfo FROM paths WHERE hash > $1 ORDER BY hash LIMIT $2",
        ).bind(cursor).bind(limit).fetch_all(pool).await?))
    }

    /// Replaces a path's narinfo text, only if it is still `old` (and the path still
    /// published): a collected path is never brought back. Whether it was replaced.
    pub async fn replace_narinfo(&self, hash: &str, old: &str, new: &str) -> Result<bool, DbError> {
        on_pool!(self, pool => Ok(sqlx::query("UPDATE paths SET narinfo = $1 WHERE hash = $2 AND narinfo = $3")
            .bind(new).bind(hash).bind(old).execute(pool).await?.rows_affected() == 1))
    }

    /// Takes the run's lock, or `None` when another process holds it. (SQLite: one process
    /// owns the database; `resign::start` holds an in-process lock as well.)
    pub async fn try_lock_resign(&self) -> Result<Option<ResignLock>, DbError> {
        self.try_lead(RESIGN_KEY).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{testing::for_each_backend, PathRow};

    fn row(hash: &str) -> PathRow {
        PathRow {
            hash: hash.into(),
            store_path: format!("{hash}-x"),
            nar_file: "f.nar.zst".into(),
            nar_hash: "sha256:0".into(),
            nar_size: 1,
            file_size: 1,
            deriver: None,
            narinfo: format!("old {hash}"),
            references: vec![],
        }
    }

    for_each_backend! {
        async fn a_run_walks_the_index_in_batches_and_records_its_progress(db: Db) {
            assert_eq!(db.resign_run().await.unwrap(), None);
            for hash in ["c", "a", "b"] {
                db.insert_path(&row(hash)).await.unwrap();
            }
            db.begin_resign("cache-2", OldSignatures::Drop).await.unwrap();
            let batch = db.narinfos_after("", 2).await.unwrap();
            assert_eq!(batch, [("a".into(), "old a".into()), ("b".into(), "old b".into())]);
            assert!(db.replace_narinfo("a", "old a", "new a").await.unwrap());
            assert!(!db.replace_narinfo("a", "old a", "newer a").await.unwrap(), "only from the text read");
            assert!(!db.replace_narinfo("z", "old z", "new z").await.unwrap(), "never brings a path back");
            assert_eq!(db.narinfo("z").await.unwrap(), None);
            db.advance_resign("b", 1).await.unwrap();
            let run = db.resign_run().await.unwrap().unwrap();
            assert_eq!((run.cursor.as_str(), run.resigned, run.state), ("b", 1, ResignState::Running));
            assert_eq!(run.old_signatures, OldSignatures::Drop);
            assert_eq!(db.narinfos_after(&run.cursor, 2).await.unwrap(), [("c".into(), "old c".into())]);
            db.finish_resign().await.unwrap();
            assert_eq!(db.resign_run().await.unwrap().unwrap().state, ResignState::Done);
            db.begin_resign("cache-3", OldSignatures::Keep).await.unwrap();
            let run = db.resign_run().await.unwrap().unwrap();
            assert_eq!((run.key_name.as_str(), run.cursor.as_str(), run.resigned), ("cache-3", "", 0));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_run_at_a_time_across_replicas() {
        let database = crate::db::testing::Backend::Postgres.database().await;
        let (one, two) = (database.open().await, database.open().await);
        let running = one.try_lock_resign().await.unwrap().expect("free");
        assert!(two.try_lock_resign().await.unwrap().is_none(), "busy on the other replica");
        drop(running);
        for _ in 0..200 {
            if two.try_lock_resign().await.unwrap().is_some() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the lock was not freed with its session");
    }
}
