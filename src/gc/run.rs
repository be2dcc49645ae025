//! The collector: applies a plan so that a client never sees a narinfo whose NAR (or whose
//! references) are gone, and so that a push or build running meanwhile is never damaged.
//!
//! How concurrent pushes stay safe: `ingest::publish` holds the *publish gate* for reading
//! while it checks a narinfo's references and NAR and indexes it; the collector holds it for
//! writing while it snapshots, plans and commits (index rows gone in one transaction), and
//! again while it deletes each batch of objects, re-checking under the gate that no
//! publication brought them back. So a path is published either before the snapshot (and
//! is planned with its references) or after the commit (and then finds a deleted reference
//! missing and is refused, never half-published). A NAR uploaded but not yet published is
//! kept by the grace period.
//!
//! How concurrent builds stay safe: generations, pins and builds are recorded without the
//! gate, so the snapshot is read, planned and applied in one write transaction
//! (`Db::gc_apply`): a generation recorded meanwhile waits for the commit. The toplevel of
//! a build in flight is a root, so a build that found its system already in the cache (an
//! old system built again) does not lose it before it records the generation.
//!
//! Replicas: with PostgreSQL several `berth serve` processes may share the index and the
//! bucket. The publish gate is then also a database lock (`db::PublishGate`), so the above
//! holds for publications on every replica; and one collection runs at a time across all of
//! them (`Db::try_lock_collection`, besides the in-process `gc_running`).
//!
//! Why NAR deletions wait with replicas: a replica serves a narinfo from its in-memory cache
//! for up to `narinfo_cache::TTL` after reading it, and only the collecting process forgets
//! deleted paths at once. So for a while after the commit another replica may still hand a
//! client the narinfo of a deleted path; the client then fetches the NAR, which must still
//! be there — a narinfo served without its NAR is a broken substitution. Hence a NAR's
//! deletion is due only `TTL + NAR_DELETION_MARGIN` after the commit: the margin covers a
//! lookup that read the index just before the commit and cached what it read just after
//! (the cache's epoch guard is per process too), the client's NAR request following its
//! narinfo, and clocks of replicas that disagree by a few seconds. The narinfo *object* may
//! go at once: HTTP serves narinfos from the index, never from the object, which only keeps
//! the bucket readable as a plain binary cache — and there a missing narinfo is simply a
//! miss. Deletions not yet due stay in `gc_pending` (counted in the report as
//! `deferred_deletions`); the next collection (the schedule's, or the next `berth gc`)
//! finishes them. SQLite belongs to one process, whose cache is forgotten at the commit:
//! there every deletion is due at once.
//!
//! Objects are deleted narinfo first, NAR second; deletions owed by an interrupted run are
//! in `gc_pending` and finished first by the next one. The deleted paths' reference rows go
//! last, a chunk per statement without the gate (the snapshot ignores them meanwhile). The
//! build host's GC roots that no generation needs any more are released by every run (so a
//! run killed before it released them is made good by the next).

use std::time::Instant;

use futures::{StreamExt, TryStreamExt};

use super::plan::{self, Policy};
use super::reconcile;
use crate::{
    app::AppState,
    db::{now, DbError, PathObjectKind, PENDING_NAR, PENDING_NARINFO},
    metrics::Metrics,
    narinfo_cache,
    nixfmt::{DrvName, DrvOutputId, NarFileName, StorePathHash},
    store::{ObjectKey, StoreError},
};

/// Objects deleted per hold of the publish gate.
const BATCH: i64 = 500;
/// Deleted paths whose reference rows are dropped per statement (outside the gate).
const FORGET_REFERENCES: i64 = 5_000;
/// Object deletions in flight at once.
const DELETES_IN_FLIGHT: usize = 16;
/// Seconds a NAR outlives the narinfo caches of other replicas, beyond their TTL (see the
/// module documentation).
const NAR_DELETION_MARGIN: i64 = 30;

/// When the NAR files a collection committing at `now` deletes may go: at once when one
/// process serves the database (`shared` false), after every replica's cached narinfo for
/// them has expired otherwise.
fn nar_due(shared: bool, now: i64) -> i64 {
    if shared {
        now + narinfo_cache::TTL.as_secs() as i64 + NAR_DELETION_MARGIN
    } else {
        0
    }
}

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
    /// Objects (narinfos, NARs) an interrupted collection still owed, deleted first.
    pub resumed_deletions: usize,
    /// NAR deletions left pending until other replicas' cached narinfos have expired
    /// (PostgreSQL only); the next collection deletes them.
    pub deferred_deletions: u64,
    /// GC roots released on the build host.
    pub gc_roots_released: usize,
    /// What a crash had left between storage and index, repaired first.
    pub reconciled: reconcile::Reconciled,
    /// How long it took.
    pub duration_ms: u64,
    /// The plan as text.
    pub summary: String,
}

/// What a collection with `policy` would do now, for people to look at (the dashboard's
/// retention page): the planner on one read of the index, without the collection lock or the
/// publish gate, so looking never delays a publication nor makes a collection `Busy`.
/// `collect(…, true)`, the API's dry run, plans under both.
pub async fn preview(state: &AppState, policy: &Policy) -> Result<plan::Plan, GcError> {
    Ok(plan::plan(&state.db.gc_snapshot().await?, policy))
}

/// Runs one collection with `policy`, unless one is running (in any process sharing the
/// database).
pub async fn collect(state: &AppState, policy: &Policy, dry_run: bool) -> Result<GcReport, GcError> {
    let _one = state.gc_running.try_lock().map_err(|_| GcError::Busy)?;
    let lock = state.db.try_lock_collection().await?.ok_or(GcError::Busy)?;
    let report = collect_alone(state, policy, dry_run).await;
    lock.release().await;
    report
}

/// [`collect`], holding the collection locks.
async fn collect_alone(state: &AppState, policy: &Policy, dry_run: bool) -> Result<GcReport, GcError> {
    let started = Instant::now();
    let mut report = GcReport { dry_run, ..GcReport::default() };
    if !dry_run {
        report.resumed_deletions = finish_pending(state).await?;
        report.reconciled = reconcile::reconcile(state, policy.grace_period).await?;
    }
    let plan = {
        let _gate = state.publish_gate.write().await?;
        if dry_run {
            plan::plan(&state.db.gc_snapshot().await?, policy)
        } else {
            let nar_due = nar_due(state.db.is_shared(), now());
            let plan = state.db.gc_apply(|snapshot| plan::plan(snapshot, policy), nar_due).await?;
            // After the commit: a lookup that read the old index cannot cache it any more.
            state.narinfos.forget(&plan.delete_paths);
            state.published.remove(&plan.delete_paths);
            if !plan.delete_paths.is_empty() {
                // Other replicas reload their sets; until they do, their stale entries only
                // send those misses to the index.
                if let Err(e) = state.db.notify_paths(crate::published::COLLECTED).await {
                    tracing::warn!(error = %e, "could not tell other replicas of the deleted paths");
                }
            }
            plan
        }
    };
    if !dry_run {
        report.gc_roots_released = release_roots(state).await?;
        finish_pending(state).await?;
        report.deferred_deletions = state.db.gc_pending_deferred(now()).await?;
        while state.db.gc_forget_references(FORGET_REFERENCES).await? > 0 {}
        Metrics::add(&state.metrics.gc_paths_deleted, plan.delete_paths.len() as u64);
        Metrics::add(&state.metrics.gc_bytes_freed, plan.bytes_freed);
        Metrics::add(&state.metrics.gc_runs, 1);
        state.metrics.gc_duration.observe(started.elapsed());
    }
    let report = GcReport {
        summary: plan::render(&plan),
        paths_deleted: plan.delete_paths.len(),
        nar_files_deleted: plan.delete_nar_files.len(),
        bytes_freed: plan.bytes_freed,
        paths_kept: plan.kept_paths,
        dropped_generations: plan.drop_generations,
        duration_ms: started.elapsed().as_millis() as u64,
        ..report
    };
    tracing::info!(
        dry_run,
        generations = report.dropped_generations.len(),
        paths = report.paths_deleted,
        nar_files = report.nar_files_deleted,
        bytes = report.bytes_freed,
        resumed = report.resumed_deletions,
        deferred = report.deferred_deletions,
        gc_roots = report.gc_roots_released,
        ms = report.duration_ms,
        "garbage collection"
    );
    state.events.publish_some(crate::events::Event::of_collection(&report));
    Ok(report)
}

/// Deletes the objects the index no longer references and that are due, a batch per hold of
/// the gate, skipping any that a publication brought back meanwhile. Within a batch every
/// narinfo goes before any NAR (and `gc_pending` hands out all due narinfos before the first
/// NAR; a NAR is never due before its narinfo). Returns how many deletions were due.
async fn finish_pending(state: &AppState) -> Result<usize, GcError> {
    let mut done = 0;
    loop {
        let _gate = state.publish_gate.write().await?;
        let batch = state.db.gc_pending(BATCH, now()).await?;
        if batch.is_empty() {
            return Ok(done);
        }
        let names = |kind: &str| -> Vec<String> {
            batch.iter().filter(|(k, _)| k == kind).map(|(_, name)| name.clone()).collect()
        };
        let (narinfos, nars) = (names(PENDING_NARINFO), names(PENDING_NAR));
        let published = state.db.present(&narinfos).await?;
        let gone: Vec<String> = narinfos.iter().filter(|h| !published.contains(*h)).cloned().collect();
        let mut keys = Vec::new();
        for hash in &gone {
            if let Ok(hash) = StorePathHash::parse(hash) {
                keys.push(ObjectKey::NarInfo(hash.clone()));
                keys.push(ObjectKey::Listing(hash));
            }
        }
        // Realisations and build logs of the paths, once no kept path has them.
        for (kind, name) in state.db.objects_only_of(&gone).await? {
            let key = match kind {
                PathObjectKind::Realisation => DrvOutputId::parse(&name).ok().map(ObjectKey::Realisation),
                PathObjectKind::DrvLog => DrvName::parse(&name).ok().map(ObjectKey::DrvLog),
            };
            keys.extend(key);
        }
        delete_all(state, keys).await?;
        state.db.detach_objects(&gone).await?;
        let in_use = state.db.nar_files_in_use(&nars).await?;
        let keys = nars.iter().filter(|n| !in_use.contains(*n)).filter_map(|n| NarFileName::parse(n).ok());
        delete_all(state, keys.map(ObjectKey::Nar).collect()).await?;
        state.db.gc_pending_done(&batch).await?;
        done += batch.len();
    }
}

/// Deletes objects, several at a time (object stores answer each in a round trip).
async fn delete_all(state: &AppState, keys: Vec<ObjectKey>) -> Result<(), GcError> {
    futures::stream::iter(keys)
        .map(|key| async move { state.store.delete(&key).await })
        .buffer_unordered(DELETES_IN_FLIGHT)
        .try_collect::<()>()
        .await?;
    Ok(())
}

/// Releases the build host's GC roots (`gcroots/<host>/build-<id>`, see `build::worker::gc_root`)
/// that no generation needs, so its own Nix store can be collected too (`nix-collect-garbage`).
/// A root is kept while its build is in flight or while it points at the toplevel of a
/// generation still recorded (of any host: a rollback generation has no build of its own);
/// roots of builds that made no generation (an unchanged host rebuilt) go with the system
/// they point at. Returns how many were released.
async fn release_roots(state: &AppState) -> Result<usize, GcError> {
    let dir = state.config.data_dir.join("gcroots");
    let (ended, toplevels) = state.db.gc_root_needs().await?;
    let mut released = 0;
    let Ok(mut hosts) = tokio::fs::read_dir(&dir).await else { return Ok(0) };
    while let Ok(Some(host)) = hosts.next_entry().await {
        let Ok(mut roots) = tokio::fs::read_dir(host.path()).await else { continue };
        while let Ok(Some(root)) = roots.next_entry().await {
            let name = root.file_name();
            let build = name.to_str().and_then(|n| n.strip_prefix("build-")).and_then(|id| id.parse::<i64>().ok());
            if !build.is_some_and(|id| ended.contains(&id)) {
                continue; // in flight, or not a root berth made
            }
            let root = root.path();
            let Ok(target) = tokio::fs::read_link(&root).await else { continue };
            if target.to_str().is_some_and(|t| toplevels.contains(t)) {
                continue;
            }
            match tokio::fs::remove_file(&root).await {
                Ok(()) => {
                    released += 1;
                    tracing::info!(root = %root.display(), "released GC root");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(root = %root.display(), error = %e, "cannot release GC root"),
            }
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nar_deletions_wait_for_replicas_caches_only_when_shared() {
        assert_eq!(nar_due(false, 1_000), 0, "one process: at once");
        let due = nar_due(true, 1_000);
        assert!(due > 1_000 + narinfo_cache::TTL.as_secs() as i64, "after every cached narinfo expired: {due}");
    }
}
