//! Published narinfos in memory. A narinfo never changes once published, so lookups (the
//! hottest request a cache serves) are answered without a database round trip. Bounded in
//! bytes (cleared when full: simpler than an LRU, and the hot set refills in one pass); an
//! entry is dropped by garbage collection when its path is deleted, and trusted for at most
//! `TTL` so a deletion made by another replica is seen soon. Misses are not cached: a path
//! published a moment later must be found.

use std::{
    collections::HashMap,
    sync::RwLock,
    time::{Duration, Instant},
};

use bytes::Bytes;

/// How long an entry is served without asking the index again. Retention counts on it: with
/// replicas, a deleted path's NAR outlives this (see `gc::run`).
pub const TTL: Duration = Duration::from_secs(30);
/// The most narinfo bytes held (about 100,000 typical narinfos).
const LIMIT: usize = 64 << 20;

/// The cache. Shared by every request.
#[derive(Debug, Default)]
pub struct NarinfoCache {
    inner: RwLock<Inner>,
    /// Bumped by every deletion: a lookup that read the index before a deletion must not
    /// put what it read into the cache after it.
    epoch: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, (Bytes, Instant)>,
    bytes: usize,
}

impl NarinfoCache {
    /// The cached narinfo of `hash`, if fresh.
    pub fn get(&self, hash: &str) -> Option<Bytes> {
        let inner = self.inner.read().expect("not poisoned");
        inner.entries.get(hash).filter(|(_, at)| at.elapsed() < TTL).map(|(text, _)| text.clone())
    }

    /// The current epoch: take it before reading the index, hand it to [`Self::insert`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Remembers a published narinfo read from the index in `epoch`, unless a deletion
    /// happened since.
    pub fn insert(&self, epoch: u64, hash: &str, text: Bytes) {
        let mut inner = self.inner.write().expect("not poisoned");
        if self.epoch() != epoch {
            return;
        }
        if inner.bytes + text.len() > LIMIT {
            inner.entries.clear();
            inner.bytes = 0;
        }
        inner.bytes += text.len();
        if let Some((old, _)) = inner.entries.insert(hash.to_owned(), (text, Instant::now())) {
            inner.bytes -= old.len();
        }
    }

    /// Forgets deleted paths (after their index rows are gone).
    pub fn forget<'a>(&self, hashes: impl IntoIterator<Item = &'a String>) {
        let mut inner = self.inner.write().expect("not poisoned");
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        for hash in hashes {
            if let Some((old, _)) = inner.entries.remove(hash.as_str()) {
                inner.bytes -= old.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_removed() {
        let cache = NarinfoCache::default();
        assert_eq!(cache.get("a"), None);
        cache.insert(cache.epoch(), "a", Bytes::from_static(b"StorePath: a"));
        assert_eq!(cache.get("a").unwrap(), &b"StorePath: a"[..]);
        cache.forget(&["a".to_string()]);
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.inner.read().unwrap().bytes, 0);
    }

    #[test]
    fn a_lookup_that_raced_a_deletion_is_not_cached() {
        let cache = NarinfoCache::default();
        let before = cache.epoch();
        cache.forget(&["a".to_string()]);
        cache.insert(before, "a", Bytes::from_static(b"stale"));
        assert_eq!(cache.get("a"), None);
    }

    #[test]
    fn stays_within_its_bound() {
        let cache = NarinfoCache::default();
        let big = Bytes::from(vec![b'x'; LIMIT / 2 + 1]);
        cache.insert(cache.epoch(), "a", big.clone());
        cache.insert(cache.epoch(), "b", big);
        assert!(cache.inner.read().unwrap().bytes <= LIMIT);
        assert_eq!(cache.get("a"), None, "cleared to make room");
        assert!(cache.get("b").is_some());
    }
}
