//! What hosts report about their deployments, and each host's resulting status.

use super::{now, on_pool, Db, DbError};

/// One report from a host's agent.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct ReportRow {
    /// Generation the report is about.
    pub generation: i64,
    /// `downloading`, `activating`, `healthy`, `confirmed`, `rolled_back`, `failed`, `needs_reboot`.
    pub phase: String,
    /// One line.
    pub message: Option<String>,
    /// Last lines of output.
    pub log_tail: Option<String>,
    /// How long the phase took.
    pub duration_ms: Option<i64>,
    /// On `confirmed`: the host's own profile generation it became (`system-5-link`: 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_generation: Option<i64>,
    /// When it arrived.
    #[serde(default)]
    pub created_at: i64,
}

/// A host's reported status.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct HostStatus {
    /// The generation the host last confirmed.
    pub active_generation: Option<i64>,
    /// The last phase it reported.
    pub phase: Option<String>,
    /// The last failure it reported.
    pub last_error: Option<String>,
    /// When it last polled or reported.
    pub last_seen: Option<i64>,
    /// Since when `berth hosts pause` holds it on its current generation, if it does.
    #[serde(default)]
    pub paused_at: Option<i64>,
}

/// Whether [`Db::add_report`] recorded a report or recognised a re-sent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new report: recorded, and the host's status moved.
    New,
    /// The same terminal report as the host's newest (an agent sending again a report whose
    /// answer it lost): only the host's last-seen time moved.
    Repeated,
}

/// What makes a report the same as the one before: generation, phase, profile generation,
/// message, log tail, duration.
type Ending = (i64, String, Option<i64>, Option<String>, Option<String>, Option<i64>);

/// The phases that end a deploy: sending one of them twice says nothing new.
fn ends_deploy(phase: &str) -> bool {
    matches!(phase, "confirmed" | "rolled_back" | "failed" | "needs_reboot")
}

impl Db {
    /// Records a report and updates the host's status: `confirmed` makes the generation
    /// active (or `active` overrides it: the generation a rolled-back host runs again). A
    /// report that ends a deploy and repeats the host's newest report (same generation, phase,
    /// profile generation, message, log tail and duration) is a re-send: it is not recorded again, so outcomes and events
    /// are counted once.
    pub async fn add_report(&self, host: &str, report: &ReportRow, active: Option<i64>) -> Result<Recorded, DbError> {
        let t = now();
        let failed = matches!(report.phase.as_str(), "rolled_back" | "failed");
        let active = active.or((report.phase == "confirmed").then_some(report.generation));
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if ends_deploy(&report.phase) {
                let newest: Option<Ending> = sqlx::query_as(
                    "SELECT generation, phase, profile_generation, message, log_tail, duration_ms FROM reports
                     WHERE host = $1 ORDER BY id DESC LIMIT 1",
                )
                .bind(host).fetch_optional(&mut *tx).await?;
                let again = (
                    report.generation,
                    report.phase.clone(),
                    report.profile_generation,
                    report.message.clone(),
                    report.log_tail.clone(),
                    report.duration_ms,
                );
                if newest == Some(again) {
                    sqlx::query("UPDATE hosts SET last_seen = $1 WHERE name = $2").bind(t).bind(host).execute(&mut *tx).await?;
                    tx.commit().await?;
                    return Ok(Recorded::Repeated);
                }
            }
            sqlx::query(
                "INSERT INTO reports (host, generation, phase, message, log_tail, duration_ms, created_at, profile_generation)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(host).bind(report.generation).bind(&report.phase).bind(&report.message).bind(&report.log_tail)
            .bind(report.duration_ms).bind(t).bind(report.profile_generation).execute(&mut *tx).await?;
            sqlx::query(
                "UPDATE hosts SET phase = $1, last_seen = $2,
                    active_generation = COALESCE($3, active_generation),
                    last_error = CASE WHEN $4 THEN $5 WHEN $1 = 'confirmed' THEN NULL ELSE last_error END
                 WHERE name = $6",
            )
            .bind(&report.phase).bind(t).bind(active).bind(failed).bind(&report.message).bind(host)
            .execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(Recorded::New)
        })
    }

    /// Marks a host as seen now (it polled for its manifest).
    ///
    /// `keys`: the deploy keys its agent listed (`x-berth-deploy-keys`, normalised), its
    /// acknowledgement of a rotation, recorded with the time it first changed to this list
    /// (the same statement: an idle fleet costs no more queries with rotation than without).
    pub async fn touch_host(&self, host: &str, keys: Option<&str>) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query(
                "UPDATE hosts SET last_seen = $1,
                     deploy_keys_ack_at = CASE WHEN $2 IS NOT NULL AND (deploy_keys_ack IS NULL OR deploy_keys_ack <> $2)
                         THEN $1 ELSE deploy_keys_ack_at END,
                     deploy_keys_ack = COALESCE($2, deploy_keys_ack)
                 WHERE name = $3",
            ).bind(now()).bind(keys).bind(host).execute(pool).await?;
            Ok(())
        })
    }

    /// A host's status.
    pub async fn host_status(&self, host: &str) -> Result<HostStatus, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT active_generation, phase, last_error, last_seen, paused_at FROM hosts WHERE name = $1",
        ).bind(host).fetch_optional(pool).await?.unwrap_or_default()))
    }

    /// Holds a known host on its current generation (`paused`), or releases it; `false` for an
    /// unknown host. Pausing a paused host keeps the time it was first paused.
    pub async fn set_paused(&self, host: &str, paused: bool) -> Result<bool, DbError> {
        let at = paused.then(now);
        on_pool!(self, pool => Ok(sqlx::query(
            "UPDATE hosts SET paused_at = CASE WHEN $1 THEN COALESCE(paused_at, $2) ELSE NULL END WHERE name = $3",
        ).bind(paused).bind(at).bind(host).execute(pool).await?.rows_affected() == 1))
    }

    /// Whether a host is paused.
    pub async fn paused(&self, host: &str) -> Result<bool, DbError> {
        Ok(self.host_status(host).await?.paused_at.is_some())
    }

    /// Every generation a host ever reported `confirmed`, in no order.
    pub async fn confirmed_generations(&self, host: &str) -> Result<Vec<i64>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_scalar(
            "SELECT DISTINCT generation FROM reports WHERE host = $1 AND phase = 'confirmed'",
        ).bind(host).fetch_all(pool).await?))
    }

    /// The newest generation of a host that ended (confirmed, rolled back or failed): what
    /// the push driver has nothing more to do for.
    pub async fn newest_settled_generation(&self, host: &str) -> Result<Option<i64>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_scalar(
            "SELECT MAX(generation) FROM reports WHERE host = $1 AND phase IN ('confirmed', 'rolled_back', 'failed')",
        ).bind(host).fetch_one(pool).await?))
    }

    /// Every report of a host as `(generation, phase, message)`, oldest first: what the
    /// outcome of each generation is computed from (`deploy::status`).
    pub async fn report_phases(&self, host: &str) -> Result<Vec<(i64, String, Option<String>)>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT generation, phase, message FROM reports WHERE host = $1 ORDER BY id",
        ).bind(host).fetch_all(pool).await?))
    }

    /// `(generation, profile generation)` for each generation of `host` whose confirmation
    /// named the profile generation it became (the newest such report of each).
    pub async fn profile_generations(&self, host: &str) -> Result<Vec<(i64, i64)>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT r.generation, r.profile_generation FROM reports r
             WHERE r.host = $1 AND r.profile_generation IS NOT NULL
               AND r.id = (SELECT MAX(id) FROM reports n
                           WHERE n.host = r.host AND n.generation = r.generation AND n.profile_generation IS NOT NULL)",
        ).bind(host).fetch_all(pool).await?))
    }

    /// Every host's reports about its newest generation as `(host, generation, phase,
    /// message)`, oldest first: what each host's state is computed from, for the whole fleet
    /// in one query.
    pub async fn newest_report_phases(&self) -> Result<Vec<(String, i64, String, Option<String>)>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT r.host, r.generation, r.phase, r.message FROM reports r
             JOIN (SELECT host, MAX(number) AS number FROM generations GROUP BY host) n
               ON r.host = n.host AND r.generation = n.number
             ORDER BY r.id",
        ).fetch_all(pool).await?))
    }

    /// A host's reports, newest first.
    pub async fn reports(&self, host: &str, limit: i64) -> Result<Vec<ReportRow>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT generation, phase, message, log_tail, duration_ms, profile_generation, created_at FROM reports
             WHERE host = $1 ORDER BY id DESC LIMIT $2",
        ).bind(host).bind(limit).fetch_all(pool).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{testing::for_each_backend, NewGeneration};

    fn report(generation: i64, phase: &str, message: Option<&str>) -> ReportRow {
        ReportRow {
            generation,
            phase: phase.into(),
            message: message.map(Into::into),
            log_tail: None,
            duration_ms: None,
            profile_generation: None,
            created_at: 0,
        }
    }

    for_each_backend! {
        async fn reports_move_the_host_status(db: Db) {
            let g = NewGeneration {
                host: "a",
                repository: "fleet",
                store_path: "/nix/store/x",
                commit_sha: "c",
                branch: "main",
                build_id: None,
                signer: None,
                rollout_id: None,
                held: false,
                diff_from: None,
                diff: None,
            };
            db.add_generation(&g).await.unwrap();
            assert_eq!(db.add_report("a", &report(1, "confirmed", None), None).await.unwrap(), Recorded::New);
            let status = db.host_status("a").await.unwrap();
            assert_eq!((status.active_generation, status.phase.as_deref()), (Some(1), Some("confirmed")));
            // The same report sent again (its answer was lost) is recognised, not recorded twice.
            assert_eq!(db.add_report("a", &report(1, "confirmed", None), None).await.unwrap(), Recorded::Repeated);
            assert_eq!(db.reports("a", 10).await.unwrap().len(), 1);
            assert_eq!(db.newest_settled_generation("a").await.unwrap(), Some(1));
            db.add_report("a", &report(2, "activating", None), Some(1)).await.unwrap();
            assert_eq!(db.newest_settled_generation("a").await.unwrap(), Some(1), "not over yet");
            db.add_report("a", &report(2, "rolled_back", Some("health check failed")), Some(1)).await.unwrap();
            assert_eq!(db.newest_settled_generation("a").await.unwrap(), Some(2));
            assert_eq!(db.newest_settled_generation("nobody").await.unwrap(), None);
            let status = db.host_status("a").await.unwrap();
            assert_eq!(status.active_generation, Some(1));
            assert_eq!(status.last_error.as_deref(), Some("health check failed"));
            assert_eq!(db.reports("a", 10).await.unwrap().len(), 3);
            assert_eq!(db.confirmed_generations("a").await.unwrap(), [1]);
            db.add_report("a", &report(3, "confirmed", None), None).await.unwrap();
            assert_eq!(db.host_status("a").await.unwrap().last_error, None);
            // Only the reports about each host's newest generation (here 1) decide its state.
            let newest = db.newest_report_phases().await.unwrap();
            assert_eq!(newest, [("a".to_owned(), 1, "confirmed".to_owned(), None)]);
            assert!(!db.paused("a").await.unwrap());
            assert!(db.set_paused("a", true).await.unwrap());
            let since = db.host_status("a").await.unwrap().paused_at.unwrap();
            let released = db.latest_released_generation("a").await.unwrap().unwrap();
            assert_eq!((released.generation.number, released.paused), (1, true), "the long-poll's one query");
            assert!(db.set_paused("a", true).await.unwrap());
            assert_eq!(db.host_status("a").await.unwrap().paused_at, Some(since), "paused since the first pause");
            assert!(db.set_paused("a", false).await.unwrap());
            assert!(!db.paused("a").await.unwrap());
            assert!(!db.latest_released_generation("a").await.unwrap().unwrap().paused);
            assert!(!db.set_paused("nobody", true).await.unwrap());
            // The profile generation each confirmation named; the newest one counts.
            for (generation, profile) in [(1, 4), (3, 5), (1, 6)] {
                let confirmed = ReportRow { profile_generation: Some(profile), ..report(generation, "confirmed", None) };
                db.add_report("a", &confirmed, None).await.unwrap();
            }
            let mut profiles = db.profile_generations("a").await.unwrap();
            profiles.sort();
            assert_eq!(profiles, [(1, 6), (3, 5)]);
            assert_eq!(db.reports("a", 1).await.unwrap()[0].profile_generation, Some(6));
            // A phase that does not end a deploy is recorded each time (a retried download),
            // and so is an ending that follows it, even one like an earlier.
            let count = db.reports("a", 100).await.unwrap().len();
            for phase in ["activating", "activating", "confirmed"] {
                assert_eq!(db.add_report("a", &report(3, phase, None), None).await.unwrap(), Recorded::New);
            }
            assert_eq!(db.reports("a", 100).await.unwrap().len(), count + 3);
            // Another ending with other words is another report (a host failing twice).
            let said = report(3, "confirmed", Some("again"));
            assert_eq!(db.add_report("a", &said, None).await.unwrap(), Recorded::New);
            assert_eq!(db.add_report("a", &said, None).await.unwrap(), Recorded::Repeated);
            assert_eq!(db.reports("a", 100).await.unwrap().len(), count + 4);
        }
    }
}
