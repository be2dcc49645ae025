//! The server's deploy keys through a rotation (`deploy::rotation` decides, `deploy::keys`
//! drives) and what each host's agent last said it trusts. Every state change is conditional
//! on the state it changes from, so replicas applying the same decision change it once; the
//! unique indexes keep at most one `next` and one `current` key.

use super::{now, on_pool, Db, DbError};
use crate::deploy::rotation::{Change, HostAck, KeyRecord, KeyState};

/// One deploy key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployKeyRow {
    /// Its public half and state.
    pub record: KeyRecord,
    /// Its secret (Nix format); `None` for the key of `deploy_key_file`.
    pub secret: Option<String>,
    /// The expiry `key_expiring` last warned of (Unix seconds).
    pub warned_for: Option<i64>,
}

type KeyRow = (String, Option<String>, String, i64, i64, Option<i64>);

fn from_row((public, secret, state, created_at, changed_at, warned_for): KeyRow) -> Result<DeployKeyRow, DbError> {
    let state = state.parse::<KeyState>().map_err(|e| DbError::Corrupt(e.to_string()))?;
    Ok(DeployKeyRow { record: KeyRecord { public, state, created_at, changed_at }, secret, warned_for })
}

/// Whether an insert or update ran into a unique index (a second `next` or `current` key).
fn conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Db {
    /// Every deploy key, oldest first.
    pub async fn deploy_keys(&self) -> Result<Vec<DeployKeyRow>, DbError> {
        let rows: Vec<KeyRow> = on_pool!(self, pool => sqlx::query_as(
            "SELECT public_key, secret_key, state, created_at, changed_at, warned_for FROM deploy_keys ORDER BY created_at, public_key",
        ).fetch_all(pool).await?);
        rows.into_iter().map(from_row).collect()
    }

    /// Records the key of `deploy_key_file` (no secret) as `current` when there are no keys
    /// yet; when there are and this key is not among them (the operator replaced the file by
    /// hand), it becomes `current` and every key still in service starts retiring. Whether
    /// anything changed.
    pub async fn seed_deploy_key(&self, public: &str) -> Result<bool, DbError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(super::write_begin(pool)).await?;
            let known: Option<String> = sqlx::query_scalar("SELECT state FROM deploy_keys WHERE public_key = $1")
                .bind(public).fetch_optional(&mut *tx).await?;
            if known.is_some() {
                return Ok(false);
            }
            let t = now();
            sqlx::query("UPDATE deploy_keys SET state = $1, changed_at = $2 WHERE state IN ($3, $4)")
                .bind(KeyState::Retiring.as_str()).bind(t)
                .bind(KeyState::Next.as_str()).bind(KeyState::Current.as_str())
                .execute(&mut *tx).await?;
            sqlx::query("INSERT INTO deploy_keys (public_key, secret_key, state, created_at, changed_at) VALUES ($1, NULL, $2, $3, $3)")
                .bind(public).bind(KeyState::Current.as_str()).bind(t)
                .execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Adds the next key; `false` when there already is one (another replica, or another
    /// admin, was quicker).
    pub async fn add_next_deploy_key(&self, public: &str, secret: &str) -> Result<bool, DbError> {
        let t = now();
        let added = on_pool!(self, pool => sqlx::query(
            "INSERT INTO deploy_keys (public_key, secret_key, state, created_at, changed_at) VALUES ($1, $2, $3, $4, $4)",
        ).bind(public).bind(secret).bind(KeyState::Next.as_str()).bind(t).execute(pool).await.map(drop));
        match added {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies `changes` in one transaction, each only if its key is still in the state it
    /// changes from. How many applied.
    pub async fn change_deploy_keys(&self, changes: &[Change]) -> Result<u64, DbError> {
        let t = now();
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(super::write_begin(pool)).await?;
            let mut applied = 0;
            for c in changes {
                applied += sqlx::query("UPDATE deploy_keys SET state = $1, changed_at = $2 WHERE public_key = $3 AND state = $4")
                    .bind(c.to.as_str()).bind(t).bind(&c.public).bind(c.from.as_str())
                    .execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            Ok(applied)
        })
    }

    /// Records that `key_expiring` warned of expiry `at` for `public`; `false` when that was
    /// already recorded (another replica warned first: it alone sends the event).
    pub async fn warn_deploy_key(&self, public: &str, at: i64) -> Result<bool, DbError> {
        on_pool!(self, pool => Ok(sqlx::query(
            "UPDATE deploy_keys SET warned_for = $1 WHERE public_key = $2 AND (warned_for IS NULL OR warned_for <> $1)",
        ).bind(at).bind(public).execute(pool).await?.rows_affected() == 1))
    }

    /// Every host that holds a live token, with the keys its agent last listed (its
    /// acknowledgement) and when: the hosts a rotation waits for.
    pub async fn deploy_key_acks(&self) -> Result<Vec<(HostAck, Option<i64>)>, DbError> {
        let rows: Vec<(String, Option<String>, Option<i64>)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT h.name, h.deploy_keys_ack, h.deploy_keys_ack_at FROM hosts h
             WHERE EXISTS (SELECT 1 FROM tokens t WHERE t.scope = 'host:' || h.name AND t.revoked_at IS NULL)
             ORDER BY h.name",
        ).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(host, keys, at)| {
                let keys = keys.map(|k| k.split(',').filter(|k| !k.is_empty()).map(str::to_owned).collect());
                (HostAck { host, keys }, at)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::for_each_backend;

    fn states(rows: &[DeployKeyRow]) -> Vec<(&str, KeyState)> {
        rows.iter().map(|r| (r.record.public.as_str(), r.record.state)).collect()
    }

    for_each_backend! {
        async fn keys_move_forward_once_and_one_next_at_a_time(db: Db) {
            assert!(db.seed_deploy_key("k1").await.unwrap());
            assert!(!db.seed_deploy_key("k1").await.unwrap(), "seeded once");
            assert!(db.add_next_deploy_key("k2", "secret-2").await.unwrap());
            assert!(!db.add_next_deploy_key("k3", "secret-3").await.unwrap(), "one next key at a time");
            let rows = db.deploy_keys().await.unwrap();
            assert_eq!(states(&rows), [("k1", KeyState::Current), ("k2", KeyState::Next)]);
            assert_eq!((rows[0].secret.as_deref(), rows[1].secret.as_deref()), (None, Some("secret-2")));
            assert!(db.warn_deploy_key("k1", 500).await.unwrap());
            assert!(!db.warn_deploy_key("k1", 500).await.unwrap(), "one warning per expiry, on any replica");
            assert!(db.warn_deploy_key("k1", 900).await.unwrap(), "a moved expiry warns again");
            assert_eq!(db.deploy_keys().await.unwrap()[0].warned_for, Some(900));
            let promote = [
                Change { public: "k1".into(), from: KeyState::Current, to: KeyState::Retiring },
                Change { public: "k2".into(), from: KeyState::Next, to: KeyState::Current },
            ];
            assert_eq!(db.change_deploy_keys(&promote).await.unwrap(), 2);
            assert_eq!(db.change_deploy_keys(&promote).await.unwrap(), 0, "a second replica changes nothing");
            assert_eq!(states(&db.deploy_keys().await.unwrap()), [("k1", KeyState::Retiring), ("k2", KeyState::Current)]);
            // The file replaced by hand: it is current, everything else retires.
            assert!(db.seed_deploy_key("k9").await.unwrap());
            let rows = db.deploy_keys().await.unwrap();
            assert_eq!(
                states(&rows),
                [("k1", KeyState::Retiring), ("k2", KeyState::Retiring), ("k9", KeyState::Current)]
            );
        }

        async fn only_hosts_with_a_live_token_are_waited_for(db: Db) {
            for host in ["alpha", "beta", "gone"] {
                crate::db::on_pool!(&db, pool => sqlx::query("INSERT INTO hosts (name, repository, created_at) VALUES ($1, 'fleet', 0)")
                    .bind(host).execute(pool).await.map(drop).unwrap());
                db.insert_token(host, &format!("hash-{host}"), &format!("host:{host}"), "").await.unwrap();
            }
            db.revoke_token("gone").await.unwrap();
            db.touch_host("alpha", Some("k1,k2")).await.unwrap();
            db.touch_host("beta", None).await.unwrap();
            let acks = db.deploy_key_acks().await.unwrap();
            let view: Vec<_> = acks.iter().map(|(a, at)| (a.host.as_str(), a.keys.clone(), at.is_some())).collect();
            assert_eq!(
                view,
                [("alpha", Some(vec!["k1".to_owned(), "k2".to_owned()]), true), ("beta", None, false)]
            );
            // The same list again keeps the time it was first given.
            let first = acks[0].1;
            db.touch_host("alpha", Some("k1,k2")).await.unwrap();
            assert_eq!(db.deploy_key_acks().await.unwrap()[0].1, first);
        }
    }
}
