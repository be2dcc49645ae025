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
    /// Seconds each host's NixOS evaluation took (`nix build` until it starts building or
    /// fetching: `build::capacity::evaluation_ended`).
    pub host_evaluation: Histogram,
    /// Seconds each host's whole `nix build` took (evaluation included).
    pub host_build: Histogram,
}

/// Upper bounds (seconds) of the duration histograms' buckets.
const SECONDS_BUCKETS: [f64; 10] = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A Prometheus histogram of durations in seconds, over [`SECONDS_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative; the last is above every bound).
    buckets: [AtomicU64; SECONDS_BUCKETS.len() + 1],
    /// The sum of the observations, in microseconds.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: std::time::Duration) {
        let seconds = d.as_secs_f64();
        let bucket = SECONDS_BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(SECONDS_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            match SECONDS_BUCKETS.get(i) {
                Some(le) => writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}"),
                None => writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}"),
            }
            .expect("writing to a String");
        }
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {}", self.count.load(Relaxed));
    }
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
        self.host_evaluation.render(&mut out, "berth_host_evaluation_seconds", "NixOS evaluation time per host");
        self.host_build.render(&mut out, "berth_host_build_seconds", "nix build time per host, evaluation included");
        let (name, help) = ("berth_db_queries_total", "database statements or transactions run");
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", crate::db::queries());
        out
    }

    /// One gauge in the exposition text.
    pub fn render_gauge(out: &mut String, name: &str, help: &str, value: u64) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let h = Histogram::default();
        for ms in [300, 3_900, 4_000, 300_000] {
            h.observe(Duration::from_millis(ms));
        }
        let mut out = String::new();
        h.render(&mut out, "t_seconds", "help");
        insta::assert_snapshot!(out, @r###"
        # HELP t_seconds help
        # TYPE t_seconds histogram
        t_seconds_bucket{le="0.5"} 1
        t_seconds_bucket{le="1"} 1
        t_seconds_bucket{le="2"} 1
        t_seconds_bucket{le="4"} 3
        t_seconds_bucket{le="8"} 3
        t_seconds_bucket{le="16"} 3
        t_seconds_bucket{le="32"} 3
        t_seconds_bucket{le="64"} 3
        t_seconds_bucket{le="128"} 3
        t_seconds_bucket{le="256"} 3
        t_seconds_bucket{le="+Inf"} 4
        t_seconds_sum 308.2
        t_seconds_count 4
        "###);
    }
}
