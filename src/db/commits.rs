//! The commits a build checked before deploying, each with its signature verdict and
//! signer, and where the check started: what `berth build status` shows of signed history.

use super::{on_pool, Db, DbError};

/// One checked commit of a build.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct BuildCommitRow {
    /// Full hash.
    #[sqlx(rename = "commit_sha")]
    pub commit: String,
    /// `trusted`, `unsigned` or `untrusted` (`build::trust::Verdict`).
    pub verdict: String,
    /// Who signed it, when trusted: the SSH principal or the GPG user id.
    pub signer: Option<String>,
    /// The key, when trusted: an SSH `SHA256:` fingerprint or a GPG key id.
    pub signing_key: Option<String>,
    /// Why it is not trusted.
    pub reason: Option<String>,
}

impl Db {
    /// Records what a build checked (`commits` oldest first) and where the check started
    /// (none: the commit alone was checked), replacing what an earlier attempt of the build
    /// recorded, in one transaction.
    pub async fn set_build_commits(
        &self,
        id: i64,
        base: Option<&str>,
        commits: &[BuildCommitRow],
    ) -> Result<(), DbError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM build_commits WHERE build_id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("UPDATE builds SET history_base = $1 WHERE id = $2").bind(base).bind(id).execute(&mut *tx).await?;
            for (position, c) in commits.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO build_commits (build_id, position, commit_sha, verdict, signer, signing_key, reason)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(id).bind(position as i64).bind(&c.commit).bind(&c.verdict).bind(&c.signer)
                .bind(&c.signing_key).bind(&c.reason).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Forgets what an earlier attempt of a build checked (before it runs again).
    pub async fn clear_build_commits(&self, id: i64) -> Result<(), DbError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM build_commits WHERE build_id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("UPDATE builds SET history_base = NULL WHERE id = $1").bind(id).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The commits a build checked, oldest first.
    pub async fn build_commits(&self, id: i64) -> Result<Vec<BuildCommitRow>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT commit_sha, verdict, signer, signing_key, reason FROM build_commits
             WHERE build_id = $1 ORDER BY position",
        ).bind(id).fetch_all(pool).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::for_each_backend;

    fn row(commit: char, verdict: &str, signer: Option<&str>) -> BuildCommitRow {
        BuildCommitRow {
            commit: commit.to_string().repeat(40),
            verdict: verdict.into(),
            signer: signer.map(Into::into),
            signing_key: signer.map(|_| "SHA256:k".into()),
            reason: None,
        }
    }

    for_each_backend! {
        async fn a_builds_checked_commits_are_kept_in_order_and_replaced_on_a_retry(db: Db) {
            let (id, _) = db.enqueue_build("fleet", &"0".repeat(40), "main", "").await.unwrap();
            let first = [row('b', "unsigned", None), row('a', "trusted", Some("alice"))];
            db.set_build_commits(id, Some("the start of the history"), &first).await.unwrap();
            assert_eq!(db.build_commits(id).await.unwrap(), first);
            let build = db.build(id).await.unwrap().unwrap();
            assert_eq!(build.history_base.as_deref(), Some("the start of the history"));
            let again = [row('c', "trusted", Some("bob"))];
            db.set_build_commits(id, None, &again).await.unwrap();
            assert_eq!(db.build_commits(id).await.unwrap(), again);
            assert_eq!(db.build(id).await.unwrap().unwrap().history_base, None, "the tip alone");
            assert!(db.build_commits(id + 1).await.unwrap().is_empty());
            db.clear_build_commits(id).await.unwrap();
            assert!(db.build_commits(id).await.unwrap().is_empty());
            assert_eq!(db.build(id).await.unwrap().unwrap().history_base, None);
        }
    }
}
