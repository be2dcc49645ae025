//! Tokens at rest: only their SHA-256 hash, scope and bookkeeping.

use super::{on_pool, Db, DbError};

/// A stored token (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TokenRow {
    /// Short public identifier.
    pub id: String,
    /// Scope as text (`push`, `host:web-1`, …).
    pub scope: String,
    /// Free text given at creation.
    pub description: String,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
}

impl Db {
    /// Stores a new token's hash.
    pub async fn insert_token(&self, id: &str, hash: &str, scope: &str, description: &str) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO tokens (id, hash, scope, description, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(id).bind(hash).bind(scope).bind(description).bind(super::now()).execute(pool).await?;
            Ok(())
        })
    }

    /// The scope of the unrevoked token with this hash.
    pub async fn token_scope(&self, hash: &str) -> Result<Option<String>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_scalar("SELECT scope FROM tokens WHERE hash = $1 AND revoked_at IS NULL")
            .bind(hash).fetch_optional(pool).await?))
    }

    /// Every token, newest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT id, scope, description, created_at, revoked_at FROM tokens ORDER BY created_at DESC, id")
            .fetch_all(pool).await?))
    }

    /// Revokes a token by id; false when no unrevoked token has that id.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, DbError> {
        on_pool!(self, pool => Ok(sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(super::now()).bind(id).execute(pool).await?.rows_affected() == 1))
    }
}

#[cfg(test)]
mod tests {
    use crate::db::{testing::for_each_backend, Db};

    for_each_backend! {
        async fn revoked_tokens_stop_working(db: Db) {
            db.insert_token("id1", "hash1", "push", "laptop").await.unwrap();
            assert_eq!(db.token_scope("hash1").await.unwrap().as_deref(), Some("push"));
            assert!(db.revoke_token("id1").await.unwrap());
            assert!(!db.revoke_token("id1").await.unwrap());
            assert_eq!(db.token_scope("hash1").await.unwrap(), None);
            assert!(db.list_tokens().await.unwrap()[0].revoked_at.is_some());
        }
    }
}
