//! The cache signing keys berth has signed with and since when: a key's age for
//! `[keys] cache_max_age_days` (its file has no date of its own), and the expiry
//! `key_expiring` last warned of, so each replica warns once per expiry.

use super::{now, on_pool, Db, DbError};

/// A cache key as recorded.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CacheKeyRow {
    /// Its public half, Nix format.
    pub public_key: String,
    /// When berth first signed with it (Unix seconds).
    pub first_used: i64,
    /// The expiry `key_expiring` last warned of.
    pub warned_for: Option<i64>,
}

impl Db {
    /// Records that berth signs with `public` (from now, if it is new): once, at start.
    pub async fn use_cache_key(&self, public: &str) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO cache_keys (public_key, first_used) VALUES ($1, $2) ON CONFLICT (public_key) DO NOTHING")
                .bind(public).bind(now()).execute(pool).await?;
            Ok(())
        })
    }

    /// The record of cache key `public`; `None` until [`Db::use_cache_key`] recorded it.
    pub async fn cache_key(&self, public: &str) -> Result<Option<CacheKeyRow>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT public_key, first_used, warned_for FROM cache_keys WHERE public_key = $1",
        ).bind(public).fetch_optional(pool).await?))
    }

    /// Records that `key_expiring` warned of expiry `at` for cache key `public`; `false` when
    /// that was already recorded (another replica warned first).
    pub async fn warn_cache_key(&self, public: &str, at: i64) -> Result<bool, DbError> {
        on_pool!(self, pool => Ok(sqlx::query(
            "UPDATE cache_keys SET warned_for = $1 WHERE public_key = $2 AND (warned_for IS NULL OR warned_for <> $1)",
        ).bind(at).bind(public).execute(pool).await?.rows_affected() == 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::for_each_backend;

    for_each_backend! {
        async fn a_cache_key_keeps_its_first_use_and_warns_once_per_expiry(db: Db) {
            assert_eq!(db.cache_key("k-1:AAAA").await.unwrap(), None);
            db.use_cache_key("k-1:AAAA").await.unwrap();
            let first = db.cache_key("k-1:AAAA").await.unwrap().unwrap();
            assert_eq!(first.warned_for, None);
            db.use_cache_key("k-1:AAAA").await.unwrap();
            let again = db.cache_key("k-1:AAAA").await.unwrap().unwrap();
            assert_eq!(again.first_used, first.first_used, "a restart keeps the key's age");
            assert!(db.warn_cache_key("k-1:AAAA", 100).await.unwrap());
            assert!(!db.warn_cache_key("k-1:AAAA", 100).await.unwrap(), "once per expiry");
            assert!(db.warn_cache_key("k-1:AAAA", 200).await.unwrap(), "again for a new expiry");
            assert_eq!(db.cache_key("k-1:AAAA").await.unwrap().unwrap().warned_for, Some(200));
        }
    }
}
