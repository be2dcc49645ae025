//! Process counters rendered in the Prometheus text format at `/metrics`. Plain atomics: a
//! handful of counters do not justify a metrics framework.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Every counter berth exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// narinfo lookups answered from the index.
    pub narinfo_hits: AtomicU64,
    /// narinfo lookups for paths not in the cache.
    pub narinfo_misses: AtomicU64,
    /// NAR bytes sent to clients.
    pub nar_bytes_served: AtomicU64,
    /// NAR downloads answered with a redirect to the bucket or a CDN.
    pub nar_redirects: AtomicU64,
    /// NAR files received and verified.
    pub nars_received: AtomicU64,
    /// Compressed bytes received in verified NARs.
    pub nar_bytes_received: AtomicU64,
    /// Paths newly published.
    pub paths_published: AtomicU64,
    /// Uploads refused (bad input) or failed.
    pub uploads_rejected: AtomicU64,
    /// Requests refused for missing or wrong tokens.
    pub auth_refusals: AtomicU64,
    /// Paths deleted by garbage collection.
    pub gc_paths_deleted: AtomicU64,
    /// NAR bytes freed by garbage collection.
    pub gc_bytes_freed: AtomicU64,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// The Prometheus exposition text.
    pub fn render(&self) -> String {
        let counters = [
            ("berth_narinfo_hits_total", "narinfo lookups answered", &self.narinfo_hits),
            ("berth_narinfo_misses_total", "narinfo lookups for absent paths", &self.narinfo_misses),
            ("berth_nar_bytes_served_total", "NAR bytes sent to clients", &self.nar_bytes_served),
            ("berth_nar_redirects_total", "NAR downloads redirected to the bucket or a CDN", &self.nar_redirects),
            ("berth_nars_received_total", "NAR files received and verified", &self.nars_received),
            ("berth_nar_bytes_received_total", "compressed NAR bytes received", &self.nar_bytes_received),
            ("berth_paths_published_total", "store paths newly published", &self.paths_published),
            ("berth_uploads_rejected_total", "uploads refused or failed", &self.uploads_rejected),
            ("berth_auth_refusals_total", "requests refused for a missing or wrong token", &self.auth_refusals),
            ("berth_gc_paths_deleted_total", "paths deleted by garbage collection", &self.gc_paths_deleted),
            ("berth_gc_bytes_freed_total", "NAR bytes freed by garbage collection", &self.gc_bytes_freed),
        ];
        let mut out = String::new();
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Relaxed));
        }
        let (name, help) = ("berth_db_queries_total", "database statements or transactions run");
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", crate::db::queries());
        out
    }

    /// One gauge in the exposition text.
    pub fn render_gauge(out: &mut String, name: &str, help: &str, value: u64) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    }
}
