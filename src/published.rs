//! The set of published store-path hashes, in memory, so that a narinfo lookup for a path
//! the cache lacks — most of what a substituter asks a cache it is not the first in — is
//! answered without the database. Hits are still answered by `narinfo_cache` or the index:
//! the set only says "certainly absent".
//!
//! Exact, never a false "absent":
//! - loaded at start-up from the index, streamed (one hash at a time into the set; the set
//!   costs 21 bytes of key per path and at most 48 bytes with the table's spare room, so
//!   1,000,000 paths take 24–48 MiB, briefly twice that while a reload builds its new set);
//! - `ingest::publish` adds a path under the publish gate, right after indexing it; a
//!   collection (`gc::run`) removes its deleted paths after its commit. A publication that
//!   lands while the set loads is kept (`Inner::loading`);
//! - with replicas (PostgreSQL) every publication sends `NOTIFY` on [`CHANNEL`] in its
//!   indexing transaction, a collection sends [`COLLECTED`] after its commit (the others
//!   reload: a stale entry only costs a database lookup, never a wrong 404), and [`follow`]
//!   applies them. Its own pings ([`PING_EVERY`]) come back through the same channel after
//!   every notification committed before them, so the set is known to hold every
//!   publication up to the last ping heard; when that is more than [`STALENESS`] ago (the
//!   listener is behind, reconnecting or reloading) the set is not trusted and misses go to
//!   the database as before. Hence a replica never answers 404 from memory for a path
//!   another replica published more than `STALENESS` + `PING_EVERY` ago.
//!
//! The set's rules have no I/O; `load` and `follow` are the I/O around them.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering::SeqCst},
        RwLock,
    },
    time::{Duration, Instant},
};

use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;

use crate::{
    db::{Db, DbError},
    nixfmt::StorePathHash,
};

/// The PostgreSQL notification channel of publications (and pings, and collections).
pub const CHANNEL: &str = "berth_paths";
/// The payload a collection sends after its commit: every replica reloads its set.
pub const COLLECTED: &str = "collected";
/// How long after the last ping heard back a replica still trusts its set for misses.
pub const STALENESS: Duration = Duration::from_secs(2);
/// How often a replica pings itself through [`CHANNEL`].
pub const PING_EVERY: Duration = Duration::from_millis(500);

/// The set, shared by every request.
#[derive(Debug)]
pub struct PublishedSet {
    inner: RwLock<Inner>,
    /// Milliseconds since `origin` up to which every publication is known to be in the set
    /// (plus one, so that 0 means "unknown": not loaded yet, or the listener lost track).
    fresh_as_of: AtomicU64,
    /// Whether other processes publish too (PostgreSQL): freshness then lapses.
    shared: bool,
    origin: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    hashes: HashSet<[u8; 20]>,
    /// While a load runs: the paths published meanwhile, added to the loaded set.
    loading: Option<Vec<[u8; 20]>>,
}

/// What arrived on [`CHANNEL`].
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    /// A path was published (by any replica).
    Published(StorePathHash),
    /// A collection deleted paths.
    Collected,
    /// A replica's ping: its id and when it sent it (its own clock, ms).
    Ping(u64, u64),
    /// Something this version does not know.
    Other,
}

impl Notice {
    /// Parses a notification payload.
    pub fn parse(payload: &str) -> Notice {
        if let Some(hash) = payload.strip_prefix('+') {
            return StorePathHash::parse(hash).map_or(Notice::Other, Notice::Published);
        }
        if payload == COLLECTED {
            return Notice::Collected;
        }
        let ping = payload.strip_prefix('~').and_then(|p| p.split_once(':'));
        match ping.map(|(id, ms)| (id.parse(), ms.parse())) {
            Some((Ok(id), Ok(ms))) => Notice::Ping(id, ms),
            _ => Notice::Other,
        }
    }

    /// The payload announcing `hash`.
    pub fn published(hash: &str) -> String {
        format!("+{hash}")
    }
}

impl PublishedSet {
    /// An empty set, not trusted until loaded; `shared` when replicas publish too.
    pub fn new(shared: bool) -> Self {
        Self { inner: Default::default(), fresh_as_of: AtomicU64::new(0), shared, origin: Instant::now() }
    }

    /// Whether `hash` is certainly not published: only when the set is known complete.
    pub fn certainly_absent(&self, hash: &StorePathHash) -> bool {
        self.is_complete() && !self.inner.read().expect("not poisoned").hashes.contains(&hash.to_bytes())
    }

    /// Which of `hashes` are published, when the set answers exactly both ways: one process
    /// (SQLite), loaded. With replicas a path another one deleted may linger in the set
    /// until it reloads, so there `None`: ask the index.
    pub fn present_exactly(&self, hashes: &[String]) -> Option<HashSet<String>> {
        if self.shared || !self.is_complete() {
            return None;
        }
        let inner = self.inner.read().expect("not poisoned");
        let present = |h: &String| StorePathHash::parse(h).is_ok_and(|h| inner.hashes.contains(&h.to_bytes()));
        Some(hashes.iter().filter(|h| present(h)).cloned().collect())
    }

    /// Whether every publication is known to be in the set.
    pub fn is_complete(&self) -> bool {
        let fresh = self.fresh_as_of.load(SeqCst);
        fresh != 0 && (!self.shared || self.now_ms() < fresh + STALENESS.as_millis() as u64)
    }

    /// Adds a path just published.
    pub fn insert(&self, hash: &StorePathHash) {
        let key = hash.to_bytes();
        let mut inner = self.inner.write().expect("not poisoned");
        inner.hashes.insert(key);
        if let Some(loading) = &mut inner.loading {
            loading.push(key);
        }
    }

    /// Removes paths a collection deleted (after its commit).
    pub fn remove<'a>(&self, hashes: impl IntoIterator<Item = &'a String>) {
        let mut inner = self.inner.write().expect("not poisoned");
        for hash in hashes.into_iter().filter_map(|h| StorePathHash::parse(h).ok()) {
            inner.hashes.remove(&hash.to_bytes());
        }
    }

    /// How many paths the set holds.
    pub fn len(&self) -> usize {
        self.inner.read().expect("not poisoned").hashes.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops trusting the set until the next load (a replica's listener lost notifications).
    pub fn invalidate(&self) {
        self.fresh_as_of.store(0, SeqCst);
    }

    /// Marks the start of a load; returns the time to hand to [`Self::finish_load`].
    fn begin_load(&self) -> u64 {
        self.inner.write().expect("not poisoned").loading = Some(Vec::new());
        self.now_ms()
    }

    /// Replaces the set with a loaded one (what the index held when the load began, plus
    /// what was published meanwhile).
    fn finish_load(&self, mut hashes: HashSet<[u8; 20]>, began_ms: u64) {
        let mut inner = self.inner.write().expect("not poisoned");
        hashes.extend(inner.loading.take().unwrap_or_default());
        inner.hashes = hashes;
        drop(inner);
        self.renew(began_ms);
    }

    /// Every publication committed before `sent_ms` (this process's clock) is in the set.
    fn renew(&self, sent_ms: u64) {
        self.fresh_as_of.fetch_max(sent_ms + 1, SeqCst);
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
}

/// Loads the set from the index, a row at a time.
pub async fn load(db: &Db, set: &PublishedSet) -> Result<usize, DbError> {
    let began = set.begin_load();
    let mut hashes = HashSet::with_capacity(db.count_paths().await? as usize);
    let mut rows = db.published_hashes();
    while let Some(hash) = rows.try_next().await? {
        if let Ok(hash) = StorePathHash::parse(&hash) {
            hashes.insert(hash.to_bytes());
        }
    }
    drop(rows);
    let n = hashes.len();
    set.finish_load(hashes, began);
    Ok(n)
}

/// Keeps `set` exact while other replicas publish and collect (PostgreSQL), until `stop`;
/// with SQLite, loads it once. Failures are logged and retried: meanwhile the set is not
/// trusted, which costs speed, never correctness.
pub async fn follow(db: Db, set: &PublishedSet, stop: CancellationToken) {
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = follow_once(&db, set) => outcome,
        };
        match outcome {
            Ok(()) => return,
            Err(e) => {
                set.invalidate();
                tracing::warn!(error = %e, "published-path set: lost the database; misses go to the index until it is back");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Listens, loads, then applies notifications; `Ok` only when there is nothing to follow.
async fn follow_once(db: &Db, set: &PublishedSet) -> Result<(), DbError> {
    let Some(mut listener) = db.listen_paths().await? else {
        let n = load(db, set).await?;
        tracing::info!(paths = n, "loaded the published-path set");
        return Ok(());
    };
    let n = load(db, set).await?;
    tracing::info!(paths = n, "loaded the published-path set; following other replicas");
    let me = uuid::Uuid::new_v4().as_u128() as u64;
    let pinger = tokio::spawn(ping(db.clone(), me, set.origin));
    let result = async {
        loop {
            let Some(payload) = listener.next().await? else {
                // Reconnected: what was sent meanwhile is lost.
                set.invalidate();
                load(db, set).await?;
                continue;
            };
            match Notice::parse(&payload) {
                Notice::Published(hash) => set.insert(&hash),
                Notice::Collected => drop(load(db, set).await?),
                Notice::Ping(id, sent) if id == me => set.renew(sent),
                Notice::Ping(..) | Notice::Other => {}
            }
        }
    }
    .await;
    pinger.abort();
    result
}

/// Sends this replica's pings until aborted.
async fn ping(db: Db, me: u64, origin: Instant) {
    let mut every = tokio::time::interval(PING_EVERY);
    loop {
        every.tick().await;
        let sent = origin.elapsed().as_millis() as u64;
        if let Err(e) = db.notify_paths(&format!("~{me}:{sent}")).await {
            tracing::warn!(error = %e, "published-path set: ping failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(c: char) -> StorePathHash {
        StorePathHash::parse(&c.to_string().repeat(32)).unwrap()
    }

    #[test]
    fn untrusted_until_loaded() {
        let set = PublishedSet::new(false);
        assert!(!set.certainly_absent(&hash('a')), "not loaded: ask the index");
        let began = set.begin_load();
        set.finish_load(HashSet::from([hash('b').to_bytes()]), began);
        assert!(set.certainly_absent(&hash('a')));
        assert!(!set.certainly_absent(&hash('b')));
    }

    #[test]
    fn publications_during_a_load_are_kept() {
        let set = PublishedSet::new(false);
        let began = set.begin_load();
        set.insert(&hash('c'));
        set.finish_load(HashSet::new(), began);
        assert!(!set.certainly_absent(&hash('c')));
        set.remove(&["c".repeat(32)]);
        assert!(set.certainly_absent(&hash('c')));
    }

    #[test]
    fn a_replica_trusts_its_set_only_while_its_pings_come_back() {
        let mut set = PublishedSet::new(true);
        set.origin -= STALENESS * 5;
        let began = set.begin_load();
        set.finish_load(HashSet::new(), began);
        assert!(set.is_complete());
        set.fresh_as_of.store(began - STALENESS.as_millis() as u64, SeqCst);
        assert!(!set.is_complete(), "no ping heard for longer than STALENESS");
        set.renew(set.now_ms());
        assert!(set.is_complete());
        set.invalidate();
        assert!(!set.is_complete());
    }

    #[test]
    fn notices() {
        let h = "0c6kzph7l0dcbqmjknjmggwd3ggi7mrl";
        assert_eq!(Notice::parse(&Notice::published(h)), Notice::Published(StorePathHash::parse(h).unwrap()));
        assert_eq!(Notice::parse(COLLECTED), Notice::Collected);
        assert_eq!(Notice::parse("~17:1234"), Notice::Ping(17, 1234));
        assert_eq!(Notice::parse("+nope"), Notice::Other);
        assert_eq!(Notice::parse("~x:1"), Notice::Other);
    }
}
