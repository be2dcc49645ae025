//! Enrollment at rest: codes (only their hash), their single use, the host token they are
//! traded for and the SSH host key recorded with it, and removing a host.

use super::{now, on_pool, Db, DbError};
use crate::{
    auth::NewToken,
    enroll::{judge, render::RecordedKey, HostKey, NewCode, PresentedCode, Refusal, StoredCode},
};

/// The outcome of trading a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    /// The code was used now; the host's earlier tokens were revoked.
    Enrolled {
        /// The host the code was made for.
        host: String,
        /// Host tokens revoked by the re-issue.
        revoked: u64,
    },
    /// The code is refused.
    Refused(Refusal),
}

/// What `berth hosts remove` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostRemoval {
    /// Host tokens revoked.
    pub tokens_revoked: u64,
    /// Unused codes deleted.
    pub codes_deleted: u64,
    /// Whether the host's row, generations and reports were deleted too (`--purge`).
    pub purged: bool,
}

impl Db {
    /// Makes `host` known (or updates its tags and repository when given) and stores its new
    /// code; any unused code made for it earlier stops working.
    pub async fn add_enrollment(
        &self,
        host: &str,
        repository: Option<&str>,
        tags: Option<&str>,
        code: &NewCode,
        expires_at: i64,
    ) -> Result<(), DbError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(super::write_begin(pool)).await?;
            sqlx::query(
                "INSERT INTO hosts (name, repository, created_at, tags) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET repository = COALESCE($5, hosts.repository),
                     tags = COALESCE(excluded.tags, hosts.tags)",
            )
            .bind(host).bind(repository.unwrap_or("")).bind(now()).bind(tags).bind(repository)
            .execute(&mut *tx).await?;
            sqlx::query("DELETE FROM enroll_codes WHERE host = $1 AND used_at IS NULL").bind(host).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO enroll_codes (id, hash, host, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(&code.id).bind(&code.hash).bind(host).bind(now()).bind(expires_at).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Trades `presented` for `token` (scope `host:<host>`) and records `key`, if the code
    /// was made for `host`, is unused and unexpired at `at`. The code is used by one
    /// conditional UPDATE, so of concurrent requests with one code exactly one wins. The
    /// host's earlier tokens are revoked: enrolling again (a reinstalled host) re-issues.
    pub async fn enroll(
        &self,
        presented: &PresentedCode,
        host: Option<&str>,
        key: &HostKey,
        token: &NewToken,
        at: i64,
    ) -> Result<Enrolled, DbError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(super::write_begin(pool)).await?;
            let stored: Option<StoredCode> =
                sqlx::query_as("SELECT hash, host, expires_at, used_at FROM enroll_codes WHERE id = $1")
                    .bind(&presented.id).fetch_optional(&mut *tx).await?;
            let host = match (judge::judge(presented, host, stored.as_ref(), at), stored) {
                (Ok(()), Some(stored)) => stored.host,
                (Err(refusal), _) => return Ok(Enrolled::Refused(refusal)),
                (Ok(()), None) => return Ok(Enrolled::Refused(Refusal::Unknown)),
            };
            let scope = format!("host:{host}");
            let used = sqlx::query(
                "UPDATE enroll_codes SET used_at = $1 WHERE id = $2 AND hash = $3 AND used_at IS NULL AND expires_at > $1",
            )
            .bind(at).bind(&presented.id).bind(&presented.hash).execute(&mut *tx).await?.rows_affected();
            if used != 1 {
                return Ok(Enrolled::Refused(Refusal::Used));
            }
            let revoked = sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE scope = $2 AND revoked_at IS NULL")
                .bind(at).bind(&scope).execute(&mut *tx).await?.rows_affected();
            sqlx::query("INSERT INTO tokens (id, hash, scope, description, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(&token.id).bind(&token.hash).bind(&scope).bind("enrolled").bind(at).execute(&mut *tx).await?;
            sqlx::query("UPDATE hosts SET ssh_host_key = $1, enrolled_at = $2 WHERE name = $3")
                .bind(key.to_string()).bind(at).bind(&host).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(Enrolled::Enrolled { host, revoked })
        })
    }

    /// Every recorded SSH host key, by host name.
    pub async fn host_keys(&self) -> Result<Vec<RecordedKey>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT name AS host, ssh_host_key AS key FROM hosts WHERE ssh_host_key IS NOT NULL ORDER BY name")
            .fetch_all(pool).await?))
    }

    /// Revokes everything `host` holds: its tokens, its unused codes and its recorded key.
    /// Its generations and reports stay for audit unless `purge`, which deletes them and the
    /// host itself. `None` when no such host is known.
    pub async fn remove_host(&self, host: &str, purge: bool) -> Result<Option<HostRemoval>, DbError> {
        let scope = format!("host:{host}");
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(super::write_begin(pool)).await?;
            let known: Option<String> = sqlx::query_scalar("SELECT name FROM hosts WHERE name = $1")
                .bind(host).fetch_optional(&mut *tx).await?;
            if known.is_none() {
                return Ok(None);
            }
            let tokens_revoked = sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE scope = $2 AND revoked_at IS NULL")
                .bind(now()).bind(&scope).execute(&mut *tx).await?.rows_affected();
            let codes_deleted = sqlx::query("DELETE FROM enroll_codes WHERE host = $1 AND used_at IS NULL")
                .bind(host).execute(&mut *tx).await?.rows_affected();
            if purge {
                // Its place in rollouts goes too: a purged host neither blocks nor counts in a wave.
                for table in ["DELETE FROM generations WHERE host = $1", "DELETE FROM reports WHERE host = $1",
                              "DELETE FROM enroll_codes WHERE host = $1", "DELETE FROM rollout_hosts WHERE host = $1",
                              "DELETE FROM hosts WHERE name = $1"] {
                    sqlx::query(table).bind(host).execute(&mut *tx).await?;
                }
            } else {
                sqlx::query("UPDATE hosts SET ssh_host_key = NULL WHERE name = $1").bind(host).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(Some(HostRemoval { tokens_revoked, codes_deleted, purged: purge }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        auth::{hash_token, new_token},
        db::testing::for_each_backend,
        enroll::{code, new_code},
    };

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn7MDb9JBGobzPBoiU4/gmrmYExASOzH7cfoOHrSheB";

    async fn add(db: &Db, host: &str, expires_at: i64) -> PresentedCode {
        let c = new_code().unwrap();
        db.add_enrollment(host, Some("fleet"), Some("web,eu"), &c, expires_at).await.unwrap();
        code::parse(&c.secret).unwrap()
    }

    async fn trade(db: &Db, c: &PresentedCode, host: &str, at: i64) -> (Enrolled, NewToken) {
        let token = new_token().unwrap();
        (db.enroll(c, Some(host), &HostKey::parse(KEY).unwrap(), &token, at).await.unwrap(), token)
    }

    for_each_backend! {
        async fn a_code_enrolls_its_host_once(db: Db) {
            let c = add(&db, "web-1", now() + 3600).await;
            assert_eq!(trade(&db, &c, "web-2", now()).await.0, Enrolled::Refused(Refusal::OtherHost));
            let (enrolled, token) = trade(&db, &c, "web-1", now()).await;
            assert_eq!(enrolled, Enrolled::Enrolled { host: "web-1".into(), revoked: 0 });
            assert_eq!(db.token_scope(&token.hash).await.unwrap().as_deref(), Some("host:web-1"));
            assert_eq!(trade(&db, &c, "web-1", now()).await.0, Enrolled::Refused(Refusal::Used));
            let keys = db.host_keys().await.unwrap();
            assert_eq!(keys, vec![RecordedKey { host: "web-1".into(), key: KEY.into() }]);
            assert_eq!(db.host_repository("web-1").await.unwrap().as_deref(), Some("fleet"));
            // A forged secret under a real id is unknown, not "used".
            let forged = PresentedCode { id: c.id.clone(), hash: hash_token("guess") };
            assert_eq!(trade(&db, &forged, "web-1", now()).await.0, Enrolled::Refused(Refusal::Unknown));

            // Enrolling again (a reinstalled host) re-issues: the old token stops working.
            let again = add(&db, "web-1", now() + 3600).await;
            let (enrolled, second) = trade(&db, &again, "web-1", now()).await;
            assert_eq!(enrolled, Enrolled::Enrolled { host: "web-1".into(), revoked: 1 });
            assert_eq!(db.token_scope(&token.hash).await.unwrap(), None);
            assert!(db.token_scope(&second.hash).await.unwrap().is_some());
        }

        async fn expired_and_superseded_codes_are_refused(db: Db) {
            let c = add(&db, "web-1", now() + 10).await;
            assert_eq!(trade(&db, &c, "web-1", now() + 10).await.0, Enrolled::Refused(Refusal::Expired));
            let newer = add(&db, "web-1", now() + 3600).await;
            assert_eq!(trade(&db, &c, "web-1", now()).await.0, Enrolled::Refused(Refusal::Unknown), "superseded");
            assert!(matches!(trade(&db, &newer, "web-1", now()).await.0, Enrolled::Enrolled { .. }));
        }

        async fn removing_a_host_revokes_its_token_and_keeps_its_history(db: Db) {
            assert_eq!(db.remove_host("web-1", false).await.unwrap(), None);
            let c = add(&db, "web-1", now() + 3600).await;
            let (_, token) = trade(&db, &c, "web-1", now()).await;
            let pending = add(&db, "web-1", now() + 3600).await;
            let g = crate::db::NewGeneration {
                host: "web-1", repository: "fleet", store_path: "/nix/store/x", commit_sha: "c",
                branch: "main", build_id: None, signer: None, rollout_id: None, held: false, diff_from: None, diff: None,
            };
            db.add_generation(&g).await.unwrap();
            let waves = [vec!["web-1".to_owned(), "web-2".to_owned()]];
            let new = crate::db::NewRollout { repository: "fleet", branch: "main", commit_sha: "c", build_id: None, waves: &waves };
            let rollout = db.create_rollout(&new, crate::deploy::rollout::Supersede::Replace).await.unwrap();
            let removed = db.remove_host("web-1", false).await.unwrap().unwrap();
            assert_eq!(removed, HostRemoval { tokens_revoked: 1, codes_deleted: 1, purged: false });
            assert_eq!(db.token_scope(&token.hash).await.unwrap(), None);
            assert_eq!(trade(&db, &pending, "web-1", now()).await.0, Enrolled::Refused(Refusal::Unknown));
            assert!(db.host_keys().await.unwrap().is_empty());
            assert_eq!(db.latest_generation("web-1").await.unwrap().map(|g| g.number), Some(1), "history stays");
            let purged = db.remove_host("web-1", true).await.unwrap().unwrap();
            assert!(purged.purged);
            let left: Vec<_> = db.rollout_hosts(rollout, None).await.unwrap().into_iter().map(|h| h.host).collect();
            assert_eq!(left, ["web-2"], "a purged host leaves its rollouts");
            assert_eq!(db.latest_generation("web-1").await.unwrap(), None);
            assert_eq!(db.host_repository("web-1").await.unwrap(), None);
        }
    }

    for_each_backend! {
        /// Two replicas trade one code at the same moment: exactly one wins.
        async fn concurrent_use_of_one_code_has_one_winner(backend: Backend) {
            let database = backend.database().await;
            let (a, b) = (database.open().await, database.open().await);
            for round in 0..5 {
                let c = add(&a, "web-1", now() + 3600).await;
                let ((x, _), (y, _)) = tokio::join!(trade(&a, &c, "web-1", now()), trade(&b, &c, "web-1", now()));
                let wins = [&x, &y].iter().filter(|e| matches!(e, Enrolled::Enrolled { .. })).count();
                assert_eq!(wins, 1, "round {round}: {x:?} {y:?}");
                assert!([&x, &y].contains(&&Enrolled::Refused(Refusal::Used)), "{x:?} {y:?}");
            }
        }
    }
}
