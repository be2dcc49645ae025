//! The path index: one row per published store path (with its signed narinfo text, so a
//! lookup is one indexed read), its references, and the NAR files received.

use std::collections::HashSet;

use futures::{stream::BoxStream, StreamExt, TryStreamExt};
use sqlx::postgres::PgListener;

use super::{on_pool, Db, DbError};
use crate::published;

/// Notifications on the published-path channel, over a connection of its own.
pub struct PathListener(PgListener);

impl PathListener {
    /// The next payload; `None` when the connection was lost (and made again: what was sent
    /// meanwhile is lost, so the caller reloads).
    pub async fn next(&mut self) -> Result<Option<String>, DbError> {
        Ok(self.0.try_recv().await?.map(|n| n.payload().to_owned()))
    }
}

/// A published path. `hash` is the store-path hash part, `references` are basenames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRow {
    /// Store-path hash part (the narinfo key).
    pub hash: String,
    /// Store-path basename.
    pub store_path: String,
    /// NAR file name under `nar/`.
    pub nar_file: String,
    /// `sha256:<nixbase32>` of the NAR.
    pub nar_hash: String,
    /// Uncompressed NAR size.
    pub nar_size: i64,
    /// Stored (compressed) file size.
    pub file_size: i64,
    /// Deriver basename, if known.
    pub deriver: Option<String>,
    /// The signed narinfo exactly as served.
    pub narinfo: String,
    /// Reference basenames.
    pub references: Vec<String>,
}

/// A NAR file that was received and verified, whether or not a narinfo points at it yet.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NarFileRow {
    /// File name under `nar/`.
    pub name: String,
    /// `sha256:<nixbase32>` of the file.
    pub file_hash: String,
    /// File size.
    pub file_size: i64,
    /// `sha256:<nixbase32>` of the decompressed NAR.
    pub nar_hash: String,
    /// Decompressed NAR size.
    pub nar_size: i64,
}

impl Db {
    /// Records a published path and its references. A path already present is left as it
    /// is: pushing twice is harmless, and the first complete publication wins.
    pub async fn insert_path(&self, row: &PathRow) -> Result<bool, DbError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO paths (hash, store_path, nar_file, nar_hash, nar_size, file_size, deriver, narinfo, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (hash) DO NOTHING",
            )
            .bind(&row.hash).bind(&row.store_path).bind(&row.nar_file).bind(&row.nar_hash)
            .bind(row.nar_size).bind(row.file_size).bind(&row.deriver).bind(&row.narinfo).bind(super::now())
            .execute(&mut *tx).await?.rows_affected() == 1;
            if inserted {
                for reference in &row.references {
                    sqlx::query("INSERT INTO refs (referrer, reference) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                        .bind(&row.hash).bind(reference).execute(&mut *tx).await?;
                }
                // Sent at commit, to every replica's published-path set (`published.rs`).
                if let Some(notify) = super::notify_sql(pool) {
                    sqlx::query(notify).bind(published::CHANNEL).bind(published::Notice::published(&row.hash))
                        .execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            Ok(inserted)
        })
    }

    /// The signed narinfo of a published path.
    pub async fn narinfo(&self, hash: &str) -> Result<Option<String>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_scalar("SELECT narinfo FROM paths WHERE hash = $1")
            .bind(hash).fetch_optional(pool).await?))
    }

    /// How many paths are published.
    pub async fn count_paths(&self) -> Result<i64, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_scalar("SELECT count(*) FROM paths").fetch_one(pool).await?))
    }

    /// Every published path's hash, streamed (the published-path set's load).
    pub fn published_hashes(&self) -> BoxStream<'_, Result<String, DbError>> {
        on_pool!(self, pool => sqlx::query_scalar("SELECT hash FROM paths").fetch(pool).map_err(DbError::from).boxed())
    }

    /// Sends `payload` on the published-path channel (PostgreSQL; nothing to tell with SQLite).
    pub async fn notify_paths(&self, payload: &str) -> Result<(), DbError> {
        if let Db::Postgres(pool) = self {
            super::count_query();
            sqlx::query("SELECT pg_notify($1, $2)").bind(published::CHANNEL).bind(payload).execute(pool).await?;
        }
        Ok(())
    }

    /// A listener on the published-path channel (PostgreSQL; `None` with SQLite, which one
    /// process owns).
    pub async fn listen_paths(&self) -> Result<Option<PathListener>, DbError> {
        let Db::Postgres(pool) = self else { return Ok(None) };
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(published::CHANNEL).await?;
        Ok(Some(PathListener(listener)))
    }

    /// Which of `hashes` are published.
    pub async fn present(&self, hashes: &[String]) -> Result<HashSet<String>, DbError> {
        self.select_in("SELECT hash FROM paths WHERE hash IN ({in})", hashes).await
    }

    /// Records a verified NAR file (idempotent). Receiving it again renews its time, so the
    /// grace period protects it until its narinfo arrives.
    pub async fn insert_nar_file(&self, row: &NarFileRow) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO nar_files (name, file_hash, file_size, nar_hash, nar_size, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET created_at = excluded.created_at",
            )
            .bind(&row.name).bind(&row.file_hash).bind(row.file_size).bind(&row.nar_hash).bind(row.nar_size)
            .bind(super::now()).execute(pool).await?;
            Ok(())
        })
    }

    /// A verified NAR file by name.
    pub async fn nar_file(&self, name: &str) -> Result<Option<NarFileRow>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT name, file_hash, file_size, nar_hash, nar_size FROM nar_files WHERE name = $1",
        ).bind(name).fetch_optional(pool).await?))
    }
}

/// What the cache holds, for the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct CacheStats {
    /// Published paths.
    pub paths: i64,
    /// Sum of their uncompressed NAR sizes.
    pub nar_bytes: i64,
    /// Sum of their stored (compressed) NAR file sizes.
    pub file_bytes: i64,
}

/// A published path as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct RecentPath {
    /// Store-path basename.
    pub store_path: String,
    /// Uncompressed NAR size.
    pub nar_size: i64,
    /// Stored file size.
    pub file_size: i64,
    /// When it was published (Unix seconds).
    pub created_at: i64,
}

/// One path of a closure: basename, NAR size, NAR file size.
pub type ClosureRow = (String, i64, i64);

impl Db {
    /// How many paths the cache holds and their bytes.
    pub async fn cache_stats(&self) -> Result<CacheStats, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT CAST(COUNT(*) AS BIGINT) AS paths, CAST(COALESCE(SUM(nar_size), 0) AS BIGINT) AS nar_bytes,
                    CAST(COALESCE(SUM(file_size), 0) AS BIGINT) AS file_bytes FROM paths",
        ).fetch_one(pool).await?))
    }

    /// The `limit` paths published last, newest first.
    pub async fn recent_paths(&self, limit: i64) -> Result<Vec<RecentPath>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT store_path, nar_size, file_size, created_at FROM paths ORDER BY created_at DESC, hash LIMIT $1",
        ).bind(limit).fetch_all(pool).await?))
    }

    /// The closure of the published path `hash` (itself included), each path once, in one
    /// recursive query; paths the index lacks (never published, or collected) are left out.
    pub async fn closure(&self, hash: &str) -> Result<Vec<ClosureRow>, DbError> {
        // A reference is a basename, whose first 32 characters are the path's hash.
        on_pool!(self, pool => Ok(sqlx::query_as(
            "WITH RECURSIVE closure (hash) AS (
                 SELECT CAST($1 AS TEXT)
                 UNION
                 SELECT substr(r.reference, 1, 32) FROM refs r JOIN closure c ON r.referrer = c.hash
             )
             SELECT p.store_path, p.nar_size, p.file_size FROM closure c JOIN paths p ON p.hash = c.hash
             ORDER BY p.store_path",
        ).bind(hash).fetch_all(pool).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::for_each_backend;

    fn row(hash: &str, refs: &[&str]) -> PathRow {
        PathRow {
            hash: hash.into(),
            store_path: format!("{hash}-x"),
            nar_file: "f.nar.zst".into(),
            nar_hash: "sha256:0".into(),
            nar_size: 1,
            file_size: 1,
            deriver: None,
            narinfo: format!("StorePath: /nix/store/{hash}-x\n"),
            references: refs.iter().map(|r| r.to_string()).collect(),
        }
    }

    for_each_backend! {
        async fn publish_twice_keeps_the_first(db: Db) {
            assert!(db.insert_path(&row("a", &["b-x"])).await.unwrap());
            let mut second = row("a", &[]);
            second.narinfo = "other".into();
            assert!(!db.insert_path(&second).await.unwrap());
            assert_eq!(db.narinfo("a").await.unwrap().unwrap(), "StorePath: /nix/store/a-x\n");
            assert_eq!(db.narinfo("b").await.unwrap(), None);
            let present = db.present(&["a".into(), "b".into()]).await.unwrap();
            assert_eq!(present, HashSet::from(["a".to_string()]));
        }

        async fn closures_follow_references_once_whatever_the_cycles(db: Db) {
            let h = |c: char| c.to_string().repeat(32);
            let path = |c: char, refs: &[String]| PathRow {
                store_path: format!("{}-{c}", h(c)),
                references: refs.to_vec(),
                nar_size: 10,
                file_size: 4,
                ..row(&h(c), &[])
            };
            let name = |c: char| format!("{}-{c}", h(c));
            // top -> a -> b, top -> b, b -> b (itself), a -> missing (not in the index).
            db.insert_path(&path('b', &[name('b')])).await.unwrap();
            db.insert_path(&path('a', &[name('b'), name('m')])).await.unwrap();
            db.insert_path(&path('t', &[name('a'), name('b')])).await.unwrap();
            let closure = db.closure(&h('t')).await.unwrap();
            let names: Vec<&str> = closure.iter().map(|(n, _, _)| n.as_str()).collect();
            assert_eq!(names, [name('a'), name('b'), name('t')]);
            assert!(closure.iter().all(|(_, nar, file)| (*nar, *file) == (10, 4)));
            assert_eq!(db.closure(&h('b')).await.unwrap().len(), 1);
            assert!(db.closure(&h('z')).await.unwrap().is_empty());
        }

        async fn cache_stats_count_paths_and_bytes_and_list_the_newest(db: Db) {
            assert_eq!(db.cache_stats().await.unwrap(), CacheStats::default());
            assert!(db.recent_paths(5).await.unwrap().is_empty());
            for (hash, nar, file) in [("a", 10, 4), ("b", 30, 7)] {
                db.insert_path(&PathRow { nar_size: nar, file_size: file, ..row(hash, &[]) }).await.unwrap();
            }
            assert_eq!(db.cache_stats().await.unwrap(), CacheStats { paths: 2, nar_bytes: 40, file_bytes: 11 });
            let recent = db.recent_paths(1).await.unwrap();
            assert_eq!(recent.len(), 1);
            assert_eq!(db.recent_paths(5).await.unwrap().len(), 2);
        }

        async fn nar_files_are_idempotent(db: Db) {
            let f =
                NarFileRow { name: "n.nar".into(), file_hash: "h".into(), file_size: 3, nar_hash: "h".into(), nar_size: 3 };
            db.insert_nar_file(&f).await.unwrap();
            db.insert_nar_file(&f).await.unwrap();
            assert_eq!(db.nar_file("n.nar").await.unwrap(), Some(f));
            assert_eq!(db.nar_file("m.nar").await.unwrap(), None);
        }
    }
}
