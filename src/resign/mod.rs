//! `berth cache resign`: re-signs every published narinfo with the current cache key, so
//! clients can move `trusted-public-keys` to a new key (docs/keys.md).
//!
//! Streaming and resumable: the index is read in hash order, [`BATCH`] rows at a time after
//! a cursor, and the cursor is recorded after each batch (`db/resign.rs`), so a killed server
//! resumes after the last batch it recorded (`POST /api/v1/cache/resign` again). Re-signing
//! is idempotent (`nixfmt::resign_narinfo`), so the batch a crash interrupted is re-done
//! harmlessly.
//!
//! Beside uploads and collection: each batch holds the publish gate for *reading*, as a
//! publication does, for the time of that batch only — uploads go on (they sign with the
//! current key anyway), and a collection, which takes the gate for writing, waits at most one
//! batch and never deletes a path between the batch's read and its writes. The index text is
//! replaced only if it is still the text read (`Db::replace_narinfo`), so a path collected
//! between batches is never brought back in the index; its narinfo object can only be
//! written while the gate excludes collection, so it is not brought back in the store either.
//! The collection lock is never taken.
//!
//! Per path: the `<hash>.narinfo` object first (one atomic put), then the index, then this
//! process's narinfo cache forgets it. Other replicas serve their cached copy for at most
//! `narinfo_cache::TTL`, after which they read the re-signed text.

use std::sync::Arc;

use bytes::Bytes;

use crate::{
    app::AppState,
    crash::{self, Step},
    db::{DbError, ResignLock, ResignRun, ResignState},
    nixfmt::{resign_narinfo, OldSignatures, StorePathHash},
    store::{ObjectKey, StoreError},
};

/// Narinfos read, re-signed and written per batch (and per hold of the publish gate).
pub const BATCH: i64 = 100;

/// Why a run could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ResignError {
    /// A run is working, here or on another replica.
    #[error("a re-signing run is already in progress")]
    Busy,
    /// An unfinished run with the other choice for old signatures waits to be resumed.
    #[error("an unfinished run that {recorded} old signatures waits to be resumed; resume it with the same choice")]
    OtherChoice {
        /// What the unfinished run does.
        recorded: &'static str,
    },
    /// The index failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a requested run starts, given the one recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Go on after the recorded cursor.
    Resume,
    /// Start from the first path, with this choice.
    Fresh(OldSignatures),
}

/// PURE: an unfinished run by the same key is resumed (with the same choice: asking for the
/// other one is refused, as switching half-way would leave the cache half of each); anything
/// else starts afresh — a finished run, none, or one by an earlier key (the key changed: what
/// it signed must be signed again).
pub fn decide(
    recorded: Option<&ResignRun>,
    key_name: &str,
    asked: Option<OldSignatures>,
) -> Result<Start, ResignError> {
    match recorded {
        Some(run) if run.state == ResignState::Running && run.key_name == key_name => match asked {
            Some(asked) if asked != run.old_signatures => {
                Err(ResignError::OtherChoice { recorded: choice_verb(run.old_signatures) })
            }
            _ => Ok(Start::Resume),
        },
        Some(run) if run.state == ResignState::Running => Ok(Start::Fresh(asked.unwrap_or(run.old_signatures))),
        _ => Ok(Start::Fresh(asked.unwrap_or(OldSignatures::Keep))),
    }
}

fn choice_verb(old: OldSignatures) -> &'static str {
    match old {
        OldSignatures::Keep => "keeps",
        OldSignatures::Drop => "drops",
    }
}

/// Starts (or resumes) a run in the background and returns it as recorded at its start.
pub async fn start(state: &AppState, asked: Option<OldSignatures>) -> Result<ResignRun, ResignError> {
    let local = Arc::clone(&state.resign_running).try_lock_owned().map_err(|_| ResignError::Busy)?;
    let lock = state.db.try_lock_resign().await?.ok_or(ResignError::Busy)?;
    let key_name = state.signing_key.name();
    let recorded = state.db.resign_run().await?;
    if let Start::Fresh(old) = decide(recorded.as_ref(), key_name, asked)? {
        state.db.begin_resign(key_name, old).await?;
    }
    let run = state.db.resign_run().await?.ok_or_else(|| DbError::Corrupt("resign run vanished".into()))?;
    let working = state.clone();
    tokio::spawn(async move {
        match work(&working, &lock).await {
            Ok(()) => tracing::info!("re-signing run finished"),
            Err(e) => tracing::error!(error = %e, "re-signing run stopped; POST /api/v1/cache/resign resumes it"),
        }
        drop((lock, local));
    });
    Ok(run)
}

/// Works through the recorded run until every path after its cursor is re-signed.
async fn work(state: &AppState, _lock: &ResignLock) -> Result<(), ResignError> {
    let Some(run) = state.db.resign_run().await? else { return Ok(()) };
    let mut cursor = run.cursor;
    tracing::info!(key = %run.key_name, old = run.old_signatures.as_str(), after = %cursor, "re-signing narinfos");
    loop {
        let gate = state.publish_gate.read().await?;
        let batch = state.db.narinfos_after(&cursor, BATCH).await?;
        let Some((last, _)) = batch.last() else { break };
        let last = last.clone();
        let mut changed = Vec::new();
        for (hash, text) in &batch {
            if resign_one(state, hash, text, run.old_signatures).await? {
                changed.push(hash.clone());
            }
        }
        state.narinfos.forget(&changed);
        state.db.advance_resign(&last, changed.len() as i64).await?;
        drop(gate);
        crash::point(Step::ResignBatchRecorded);
        cursor = last;
    }
    state.db.finish_resign().await?;
    Ok(())
}

/// Re-signs one path (object, then index); whether its index text changed.
async fn resign_one(state: &AppState, hash: &str, text: &str, old: OldSignatures) -> Result<bool, ResignError> {
    let (key, parsed) = (&state.signing_key, StorePathHash::parse(hash));
    let (resigned, hash_key) = match (resign_narinfo(text, key, old), parsed) {
        (Ok(Some(resigned)), Ok(h)) => (resigned, h),
        (Ok(None), _) => return Ok(false),
        (Err(e), _) => {
            // Not ours to repair here: reported, and the run goes on with the rest.
            tracing::warn!(hash, error = %e, "a published narinfo does not parse; left as it is");
            return Ok(false);
        }
        (_, Err(e)) => {
            tracing::warn!(hash, error = %e, "a published path has an invalid hash; left as it is");
            return Ok(false);
        }
    };
    state.store.put(&ObjectKey::NarInfo(hash_key), Bytes::from(resigned.clone())).await?;
    Ok(state.db.replace_narinfo(hash, text, &resigned).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(key: &str, old: OldSignatures, state: ResignState) -> ResignRun {
        ResignRun {
            key_name: key.into(),
            old_signatures: old,
            state,
            cursor: "x".into(),
            resigned: 1,
            started_at: 0,
            finished_at: None,
        }
    }

    #[track_caller]
    fn check(recorded: Option<ResignRun>, asked: Option<OldSignatures>, expected: Result<Start, &str>) {
        let got = decide(recorded.as_ref(), "cache-2", asked).map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_owned));
    }

    #[test]
    fn decides_whether_to_resume() {
        use OldSignatures::{Drop, Keep};
        use ResignState::{Done, Running};
        check(None, None, Ok(Start::Fresh(Keep)));
        check(None, Some(Drop), Ok(Start::Fresh(Drop)));
        check(Some(run("cache-2", Drop, Running)), None, Ok(Start::Resume));
        check(Some(run("cache-2", Drop, Running)), Some(Drop), Ok(Start::Resume));
        check(
            Some(run("cache-2", Drop, Running)),
            Some(Keep),
            Err("an unfinished run that drops old signatures waits to be resumed; resume it with the same choice"),
        );
        check(Some(run("cache-1", Drop, Running)), None, Ok(Start::Fresh(Drop)));
        check(Some(run("cache-1", Drop, Running)), Some(Keep), Ok(Start::Fresh(Keep)));
        check(Some(run("cache-2", Drop, Done)), Some(Keep), Ok(Start::Fresh(Keep)));
        check(Some(run("cache-2", Drop, Done)), None, Ok(Start::Fresh(Keep)));
    }
}
