//! Schema migrations, run at start-up, in order, once each. Append only: a migration that
//! has shipped is never edited.

use super::{on_pool, Db, DbError};

/// Each entry is one schema version; its SQL is valid for SQLite and PostgreSQL alike.
const MIGRATIONS: &[&str] = &[
    // 1: the cache index and tokens.
    "CREATE TABLE paths (
        hash TEXT PRIMARY KEY,
        store_path TEXT NOT NULL,
        nar_file TEXT NOT NULL,
        nar_hash TEXT NOT NULL,
        nar_size BIGINT NOT NULL,
        file_size BIGINT NOT NULL,
        deriver TEXT,
        narinfo TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX paths_nar_file ON paths (nar_file);
    CREATE TABLE refs (
        referrer TEXT NOT NULL,
        reference TEXT NOT NULL,
        PRIMARY KEY (referrer, reference)
    );
    CREATE INDEX refs_reference ON refs (reference);
    CREATE TABLE nar_files (
        name TEXT PRIMARY KEY,
        file_hash TEXT NOT NULL,
        file_size BIGINT NOT NULL,
        nar_hash TEXT NOT NULL,
        nar_size BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        scope TEXT NOT NULL,
        description TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );",
];

/// Brings the schema up to date.
pub async fn run(db: &Db) -> Result<(), DbError> {
    on_pool!(db, pool => {
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)").execute(pool).await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version").fetch_one(pool).await?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current.unwrap_or(0) as usize) {
            let mut tx = pool.begin().await?;
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)").bind(i as i64 + 1).execute(&mut *tx).await?;
            tx.commit().await?;
        }
        Ok(())
    })
}
