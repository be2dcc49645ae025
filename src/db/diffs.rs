//! The closure diff stored with each generation (issue 16): made on the build host with the
//! generation (`NewGeneration::diff`), against what the host ran then, and kept so the
//! generation's own diff does not change when the host moves on or retention collects the
//! old system's paths.

use super::{on_pool, Db, DbError};

/// A generation's stored diff, as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredDiff {
    /// The generation's number.
    pub number: i64,
    /// The generation it was taken against (none: the host's first system).
    pub diff_from: Option<i64>,
    /// `deploy::diff::ClosureDiff` as JSON.
    pub diff: String,
}

impl Db {
    /// Generation `number`'s stored diff, if one was stored.
    pub async fn generation_diff(&self, host: &str, number: i64) -> Result<Option<StoredDiff>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT number, diff_from, diff FROM generations WHERE host = $1 AND number = $2 AND diff IS NOT NULL",
        ).bind(host).bind(number).fetch_optional(pool).await?))
    }

    /// Every stored diff of a host's generations, newest first (the dashboard's host page).
    pub async fn generation_diffs(&self, host: &str) -> Result<Vec<StoredDiff>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT number, diff_from, diff FROM generations WHERE host = $1 AND diff IS NOT NULL ORDER BY number DESC",
        ).bind(host).fetch_all(pool).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{testing::for_each_backend, NewGeneration};

    fn generation<'a>(host: &'a str, diff_from: Option<i64>, diff: Option<&'a str>) -> NewGeneration<'a> {
        NewGeneration {
            host,
            repository: "fleet",
            store_path: "/nix/store/x",
            commit_sha: "c1",
            branch: "main",
            build_id: None,
            signer: None,
            rollout_id: None,
            held: false,
            diff_from,
            diff,
        }
    }

    for_each_backend! {
        /// Stored with its generation; none for one made without; multi-byte text comes
        /// back as it went in; a `diff_from` without a diff is not kept.
        async fn a_generation_keeps_its_diff(db: Db) {
            let text = r#"{"added":["tö-1"]}"#;
            assert_eq!(db.add_generation(&generation("a", None, Some(text))).await.unwrap(), 1);
            assert_eq!(db.add_generation(&generation("a", Some(1), Some("{}"))).await.unwrap(), 2);
            assert_eq!(db.add_generation(&generation("a", Some(2), None)).await.unwrap(), 3);
            let first = db.generation_diff("a", 1).await.unwrap().unwrap();
            assert_eq!(first, StoredDiff { number: 1, diff_from: None, diff: text.into() });
            assert_eq!(db.generation_diff("a", 2).await.unwrap().unwrap().diff_from, Some(1));
            assert_eq!(db.generation_diff("a", 3).await.unwrap(), None);
            assert_eq!(db.generation_diff("a", 4).await.unwrap(), None);
            assert_eq!(db.generation_diff("b", 1).await.unwrap(), None);
            let all: Vec<(i64, Option<i64>)> =
                db.generation_diffs("a").await.unwrap().iter().map(|d| (d.number, d.diff_from)).collect();
            assert_eq!(all, [(2, Some(1)), (1, None)]);
            assert!(db.generation_diffs("b").await.unwrap().is_empty());
        }
    }
}
