//! The in-process side of the persistent queue: wakes workers when a build is submitted and
//! cancels a running build when asked. The queue itself lives in the database.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, DbError};

/// Cheap to clone; shared by the HTTP handlers and the workers.
#[derive(Clone, Default)]
pub struct Queue {
    wake: Arc<Notify>,
    running: Arc<Mutex<HashMap<i64, CancellationToken>>>,
    mirrors: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Queue {
    /// Queues a build (or finds the same one) and wakes a worker. Returns (id, created).
    pub async fn submit(
        &self,
        db: &Db,
        repository: &str,
        commit: &str,
        branch: &str,
        hosts: &[String],
    ) -> Result<(i64, bool), DbError> {
        let submitted = db.enqueue_build(repository, commit, branch, &hosts.join(" ")).await?;
        self.wake.notify_one();
        Ok(submitted)
    }

    /// Cancels build `id`: in the database, and the running worker if it is ours.
    pub async fn cancel(&self, db: &Db, id: i64) -> Result<bool, DbError> {
        let cancelled = db.cancel_build(id).await?;
        if let Some(token) = self.running.lock().expect("not poisoned").get(&id) {
            token.cancel();
        }
        Ok(cancelled)
    }

    /// Waits until a build may be waiting.
    pub(super) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Registers a running build; the token fires on cancel.
    pub(super) fn start(&self, id: i64) -> CancellationToken {
        let token = CancellationToken::new();
        self.running.lock().expect("not poisoned").insert(id, token.clone());
        token
    }

    /// Serialises work on one repository's mirror: two git fetches into the same bare
    /// repository at once fail on git's ref locks.
    pub(super) async fn lock_mirror(&self, repository: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self.mirrors.lock().expect("not poisoned").entry(repository.to_owned()).or_default().clone();
        lock.lock_owned().await
    }

    /// Unregisters a build.
    pub(super) fn end(&self, id: i64) {
        self.running.lock().expect("not poisoned").remove(&id);
    }
}
