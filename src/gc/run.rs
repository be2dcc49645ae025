//! The collector: applies a plan so that a client never sees a narinfo whose NAR (or whose
//! references) are gone, and so that a push running meanwhile is never damaged.
//!
//! How concurrent pushes stay safe: `ingest::publish` holds the *publish gate* for reading
//! while it checks a narinfo's references and NAR and indexes it; the collector holds it for
//! writing while it snapshots, plans and commits (index rows gone in one transaction), and
//! again while it deletes each batch of objects, re-checking under the gate that no
//! publication brought them back. So a path is published either before the snapshot (and
//! is planned with its references) or after the commit (and then finds a deleted reference
//! missing and is refused, never half-published). Objects are deleted narinfo first, NAR
//! second; deletions owed by an interrupted run are in `gc_pending` and finished first by
//! the next one.

use std::time::Instant;

use super::plan::{self, Plan, Policy};
use crate::{
    app::AppState,
    build::worker::gc_root,
    db::{DbError, PENDING_NAR, PENDING_NARINFO},
    metrics::Metrics,
    nixfmt::{NarFileName, StorePathHash},
    store::{ObjectKey, StoreError},
};

/// Objects deleted per hold of the publish gate.
const BATCH: i64 = 500;

/// Why a collection did not run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Another collection is running.
    #[error("a collection is already running")]
    Busy,
    /// The index failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a collection did (or, dry, would do).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// (host, number) of each dropped generation.
    pub dropped_generations: Vec<(String, i64)>,
    /// Paths deleted.
    pub paths_deleted: usize,
    /// NAR files deleted.
    pub nar_files_deleted: usize,
    /// Bytes of NAR files freed.
    pub bytes_freed: u64,
    /// Paths kept.
    pub paths_kept: usize,
    /// How long it took.
    pub duration_ms: u64,
    /// The plan as text.
    pub summary: String,
}

/// Runs one collection with `policy`.
pub async fn collect(state: &AppState, policy: &Policy, dry_run: bool) -> Result<GcReport, GcError> {
    let _one = state.gc_running.try_lock().map_err(|_| GcError::Busy)?;
    let started = Instant::now();
    if !dry_run {
        finish_pending(state).await?;
    }
    let plan = {
        let _gate = state.publish_gate.write().await;
        let snapshot = state.db.gc_snapshot().await?;
        let plan = plan::plan(&snapshot, policy);
        if !dry_run {
            let released = state.db.gc_commit(&plan).await?;
            release_roots(state, &released).await;
        }
        plan
    };
    if !dry_run {
        finish_pending(state).await?;
        Metrics::add(&state.metrics.gc_paths_deleted, plan.delete_paths.len() as u64);
        Metrics::add(&state.metrics.gc_bytes_freed, plan.bytes_freed);
    }
    let report = report(plan, dry_run, started);
    tracing::info!(
        dry_run,
        generations = report.dropped_generations.len(),
        paths = report.paths_deleted,
        nar_files = report.nar_files_deleted,
        bytes = report.bytes_freed,
        ms = report.duration_ms,
        "garbage collection"
    );
    Ok(report)
}

fn report(plan: Plan, dry_run: bool, started: Instant) -> GcReport {
    GcReport {
        dry_run,
        summary: plan::render(&plan),
        paths_deleted: plan.delete_paths.len(),
        nar_files_deleted: plan.delete_nar_files.len(),
        bytes_freed: plan.bytes_freed,
        paths_kept: plan.kept_paths,
        dropped_generations: plan.drop_generations,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

/// Deletes the objects the index no longer references, a batch per hold of the gate,
/// skipping any that a publication brought back meanwhile.
async fn finish_pending(state: &AppState) -> Result<(), GcError> {
    loop {
        let _gate = state.publish_gate.write().await;
        let batch = state.db.gc_pending(BATCH).await?;
        if batch.is_empty() {
            return Ok(());
        }
        for (kind, name) in batch {
            match kind.as_str() {
                PENDING_NARINFO => delete_narinfo(state, &name).await?,
                PENDING_NAR => delete_nar(state, &name).await?,
                _ => {}
            }
            state.db.gc_pending_done(&kind, &name).await?;
        }
    }
}

async fn delete_narinfo(state: &AppState, hash: &str) -> Result<(), GcError> {
    let Ok(hash) = StorePathHash::parse(hash) else { return Ok(()) };
    if state.db.narinfo(hash.as_str()).await?.is_some() {
        return Ok(()); // published again since
    }
    state.store.delete(&ObjectKey::NarInfo(hash.clone())).await?;
    state.store.delete(&ObjectKey::Listing(hash)).await?;
    Ok(())
}

async fn delete_nar(state: &AppState, name: &str) -> Result<(), GcError> {
    let Ok(file) = NarFileName::parse(name) else { return Ok(()) };
    if state.db.nar_file_in_use(name).await? {
        return Ok(()); // received again since
    }
    state.store.delete(&ObjectKey::Nar(file)).await?;
    Ok(())
}

/// Removes the build host's GC roots of dropped generations, so its own Nix store can be
/// collected too (`nix-collect-garbage`).
async fn release_roots(state: &AppState, released: &[(String, Option<i64>)]) {
    for (host, build) in released {
        let Some(build) = build else { continue };
        let root = gc_root(&state.config.data_dir, host, *build);
        match tokio::fs::remove_file(&root).await {
            Ok(()) => tracing::info!(root = %root.display(), "released GC root"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(root = %root.display(), error = %e, "cannot release GC root"),
        }
    }
}
