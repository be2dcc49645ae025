//! What berth posted to the forge for each build: one row per build and status context
//! (`berth/build`, `berth/deploy/<host>`), the latest state sent and how its delivery went,
//! so `berth build status` shows a forge that refused or could not be reached.

use super::{now, on_pool, Db, DbError};

/// The latest status of one context of a build.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct ForgeStatusRow {
    /// `berth/build`, `berth/deploy/<host>` or `berth/deploy`.
    pub context: String,
    /// `pending`, `success` or `failure`.
    pub state: String,
    /// The description sent.
    pub description: String,
    /// `delivered`, `retrying` or `failed`.
    pub delivery: String,
    /// Attempts made.
    pub attempts: i64,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// When this row last changed.
    pub updated_at: i64,
}

impl Db {
    /// Records where a status of `build` stands (replacing that context's previous one).
    pub async fn record_forge_status(&self, build: i64, row: &ForgeStatusRow) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO forge_statuses (build_id, context, state, description, delivery, attempts, error, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (build_id, context) DO UPDATE SET state = excluded.state,
                    description = excluded.description, delivery = excluded.delivery,
                    attempts = excluded.attempts, error = excluded.error, updated_at = excluded.updated_at",
            )
            .bind(build).bind(&row.context).bind(&row.state).bind(&row.description).bind(&row.delivery)
            .bind(row.attempts).bind(&row.error).bind(now()).execute(pool).await?;
            Ok(())
        })
    }

    /// The statuses of a build, by context.
    pub async fn forge_statuses(&self, build: i64) -> Result<Vec<ForgeStatusRow>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT context, state, description, delivery, attempts, error, updated_at FROM forge_statuses
             WHERE build_id = $1 ORDER BY context",
        ).bind(build).fetch_all(pool).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::for_each_backend;

    for_each_backend! {
        async fn the_latest_status_of_each_context_is_kept(db: Db) {
            let row = |context: &str, state: &str, delivery: &str, error: Option<&str>| ForgeStatusRow {
                context: context.into(),
                state: state.into(),
                description: "d".into(),
                delivery: delivery.into(),
                attempts: 1,
                error: error.map(Into::into),
                updated_at: 0,
            };
            db.record_forge_status(1, &row("berth/build", "pending", "delivered", None)).await.unwrap();
            db.record_forge_status(1, &row("berth/build", "success", "failed", Some("HTTP 503"))).await.unwrap();
            db.record_forge_status(1, &row("berth/deploy/a", "pending", "retrying", None)).await.unwrap();
            db.record_forge_status(2, &row("berth/build", "pending", "delivered", None)).await.unwrap();
            let got: Vec<(String, String, String, Option<String>)> = db.forge_statuses(1).await.unwrap().into_iter()
                .map(|r| (r.context, r.state, r.delivery, r.error)).collect();
            assert_eq!(got, [
                ("berth/build".into(), "success".into(), "failed".into(), Some("HTTP 503".into())),
                ("berth/deploy/a".into(), "pending".into(), "retrying".into(), None),
            ]);
        }
    }
}
