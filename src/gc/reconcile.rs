//! Storage and index agree again after a crash, before any collection decides anything.
//!
//! Publication writes storage first and the index second (see `ingest`), so a process killed
//! between the two leaves objects the index does not know:
//! - a `<hash>.narinfo` object without its path row (killed after the narinfo write): a
//!   client of the storage alone (`file://`, `s3://`) sees the path, so its NAR must stay.
//!   It is published again (its NAR adopted if its record was lost too), or, when that cannot
//!   work (its NAR is gone, or a reference never made it), deleted once it is older than the
//!   grace period (a publication in flight on another replica is younger);
//! - a NAR object without its record (killed after the NAR's commit): no narinfo of the
//!   index points at it and `HEAD` calls it absent, so a client uploads it again; one that
//!   nothing claims within the grace period is deleted.
//!
//! Listings are streamed a page at a time and checked against the index in batches, so
//! memory stays bounded however large the cache.

use std::time::SystemTime;

use futures::TryStreamExt;

use super::run::GcError;
use crate::{
    app::AppState,
    ingest::{self, IngestError},
    nixfmt::{NarFileName, PathInfo, StorePathHash},
    store::ObjectKey,
};

/// Names checked against the index per query.
const BATCH: usize = 500;
/// Most stray narinfos handled in one run (the rest in the next): a bound on memory.
const MAX_STRAYS: usize = 100_000;

/// What a reconciliation repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reconciled {
    /// Narinfo objects without an index row that were published again.
    pub narinfos_indexed: usize,
    /// Narinfo objects without an index row that could not be, deleted.
    pub narinfos_deleted: usize,
    /// NAR objects without a record, older than the grace period, deleted.
    pub nars_deleted: usize,
}

/// Whether an object written at `modified` is past the grace period at `now`.
fn is_old(modified: SystemTime, now: SystemTime, grace_secs: i64) -> bool {
    now.duration_since(modified).is_ok_and(|age| age.as_secs() as i64 >= grace_secs)
}

/// Repairs what a crash left between storage and index (see the module documentation).
pub async fn reconcile(state: &AppState, grace_secs: i64) -> Result<Reconciled, GcError> {
    let mut done = Reconciled::default();
    let strays = stray_narinfos(state).await?;
    republish(state, strays, grace_secs, &mut done).await?;
    delete_orphan_nars(state, grace_secs, &mut done).await?;
    if done != Reconciled::default() {
        tracing::warn!(?done, "storage reconciled with the index after a crash");
    }
    Ok(done)
}

/// Narinfo objects whose path the index lacks.
async fn stray_narinfos(state: &AppState) -> Result<Vec<(StorePathHash, SystemTime)>, GcError> {
    let mut strays = Vec::new();
    let mut pages = state.store.list_narinfos().try_chunks(BATCH);
    while let Some(page) = pages.try_next().await.map_err(|e| e.1)? {
        let hashes: Vec<String> = page.iter().map(|(h, _)| h.to_string()).collect();
        let present = state.db.present(&hashes).await?;
        strays.extend(page.into_iter().filter(|(h, _)| !present.contains(h.as_str())));
        if strays.len() >= MAX_STRAYS {
            break;
        }
    }
    Ok(strays)
}

/// Publishes stray narinfos again, dependencies first (passes until none progresses), and
/// deletes those that cannot be published and are past the grace period.
async fn republish(
    state: &AppState,
    mut strays: Vec<(StorePathHash, SystemTime)>,
    grace_secs: i64,
    done: &mut Reconciled,
) -> Result<(), GcError> {
    let now = SystemTime::now();
    loop {
        let mut waiting = Vec::new();
        let before = strays.len();
        for (hash, modified) in strays {
            match republish_one(state, &hash).await {
                Ok(()) => done.narinfos_indexed += 1,
                // A reference may be a stray itself, published later in this pass.
                Err(IngestError::MissingReferences(_)) => waiting.push((hash, modified)),
                Err(IngestError::Store(e)) => return Err(e.into()),
                Err(IngestError::Db(e)) => return Err(e.into()),
                Err(e) => {
                    if is_old(modified, now, grace_secs) {
                        tracing::warn!(%hash, reason = %e, "deleting a narinfo that cannot be published");
                        delete_narinfo(state, &hash).await?;
                        done.narinfos_deleted += 1;
                    }
                }
            }
        }
        if waiting.is_empty() || waiting.len() == before {
            for (hash, modified) in waiting {
                if is_old(modified, now, grace_secs) {
                    tracing::warn!(%hash, "deleting a narinfo whose references are not in the cache");
                    delete_narinfo(state, &hash).await?;
                    done.narinfos_deleted += 1;
                }
            }
            return Ok(());
        }
        strays = waiting;
    }
}

async fn republish_one(state: &AppState, hash: &StorePathHash) -> Result<(), IngestError> {
    let Some(text) = state.store.get_bytes(&ObjectKey::NarInfo(hash.clone())).await? else {
        return Ok(()); // gone meanwhile
    };
    let info = PathInfo::parse(&text)?;
    if info.hash() != *hash {
        return Err(IngestError::NotInCache(format!("{hash}.narinfo describes {}", info.hash())));
    }
    let file = info.nar_file()?;
    if state.db.nar_file(file.as_str()).await?.is_none() {
        ingest::adopt_nar(state.cache(), &file).await?;
    }
    ingest::publish(state.cache(), info).await.map(drop)
}

async fn delete_narinfo(state: &AppState, hash: &StorePathHash) -> Result<(), GcError> {
    let _gate = state.publish_gate.write().await?;
    if state.db.narinfo(hash.as_str()).await?.is_none() {
        state.store.delete(&ObjectKey::NarInfo(hash.clone())).await?;
    }
    Ok(())
}

/// Deletes NAR objects the index does not know (no record, no path, no deletion owed) that
/// are past the grace period.
async fn delete_orphan_nars(state: &AppState, grace_secs: i64, done: &mut Reconciled) -> Result<(), GcError> {
    let now = SystemTime::now();
    let mut pages = state.store.list_nars().try_chunks(BATCH);
    while let Some(page) = pages.try_next().await.map_err(|e| e.1)? {
        let old: Vec<NarFileName> =
            page.into_iter().filter(|(_, modified)| is_old(*modified, now, grace_secs)).map(|(n, _)| n).collect();
        if old.is_empty() {
            continue;
        }
        let names: Vec<String> = old.iter().map(|n| n.to_string()).collect();
        let _gate = state.publish_gate.write().await?;
        let known = state.db.nar_files_known(&names).await?;
        for name in old.into_iter().filter(|n| !known.contains(n.as_str())) {
            tracing::warn!(nar = %name, "deleting a NAR object that no record claims");
            state.store.delete(&ObjectKey::Nar(name)).await?;
            done.nars_deleted += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_objects_past_the_grace_period_are_old() {
        let now = SystemTime::now();
        assert!(is_old(now - Duration::from_secs(10), now, 10));
        assert!(!is_old(now - Duration::from_secs(9), now, 10));
        assert!(is_old(now, now, 0));
        assert!(!is_old(now + Duration::from_secs(60), now, 0), "a clock ahead of ours: young");
    }
}
