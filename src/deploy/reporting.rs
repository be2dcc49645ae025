//! Recording what a host reports about a deploy, whoever reports it: its agent (through
//! `POST /api/v1/hosts/{name}/reports`) or, for a pushed host, berth's push driver. One
//! path: the index, the deploy metrics, the event bus and the rollout driver see both alike.

use crate::{
    app::AppState,
    db::{DbError, GenerationRow, Recorded, ReportRow},
    deploy::status::Phase,
    events::Event,
};

/// Records `row` (about `generation`, in `phase`) for `host`; a re-sent terminal report is
/// recognised and counted once.
pub async fn record(
    state: &AppState,
    host: &str,
    generation: &GenerationRow,
    phase: Phase,
    row: &ReportRow,
    active: Option<i64>,
) -> Result<Recorded, DbError> {
    let message = row.message.as_deref().unwrap_or("");
    tracing::info!(host, generation = row.generation, phase = %row.phase, message, "host report");
    if state.db.add_report(host, row, active).await? == Recorded::Repeated {
        tracing::info!(host, generation = row.generation, phase = %row.phase, "report sent again; already recorded");
        return Ok(Recorded::Repeated);
    }
    if let Some(outcome) = crate::metrics::DeployOutcome::of_phase(phase) {
        state.metrics.deploys.add(outcome, 1);
    }
    state.events.publish_some(Event::of_report(generation, phase, row.message.as_deref()));
    // A rollout whose wave this host is in may move on (or halt).
    state.rollouts.poke();
    Ok(Recorded::New)
}
