//! Process metrics rendered in the Prometheus text format at `/metrics`: counters and
//! histograms held in atomics ([`Metrics`]), plus figures read from the index at scrape time
//! ([`Scrape`]).
//!
//! The renderer is our own (`family`), not `prometheus-client`: every label here is a small
//! enum ([`labels`]) or a validated host name, so fixed arrays of atomics indexed by the enum
//! cover every family without a registry, without locks on the request path, and without a
//! dependency whose encoder we would still have to feed per-scrape gauges by hand. What a
//! framework would guarantee is checked instead: label values are escaped (`family` tests)
//! and a real scrape passes Prometheus's own `promtool check metrics` (`tests/it/metrics.rs`).

pub mod family;
pub mod labels;
mod scrape;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use family::{header, sample, CounterBy, Histogram, HistogramBy, Kind, Label, REQUEST_BUCKETS, SECONDS_BUCKETS};
pub use labels::{classify, BuildOutcome, Class, DeployOutcome, Lookup, MemoryCache, Rejection};
pub use scrape::Scrape;

/// Status codes counted per class: 100 to 599.
const STATUSES: std::ops::Range<u16> = 100..600;

/// One of a class's byte counters.
type ByteCounter = fn(&ClassStats) -> &AtomicU64;

/// What one class of requests did.
#[derive(Debug)]
pub struct ClassStats {
    /// Seconds until the response's head (a streamed NAR's body is not included).
    latency: Histogram,
    /// Responses per status code (index: code − 100).
    statuses: Box<[AtomicU64]>,
    /// Request body bytes read.
    bytes_in: AtomicU64,
    /// Response body bytes sent.
    bytes_out: AtomicU64,
}

impl Default for ClassStats {
    fn default() -> Self {
        Self {
            latency: Histogram::new(REQUEST_BUCKETS),
            statuses: STATUSES.map(|_| AtomicU64::new(0)).collect(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }
}

/// Every counter berth exports.
#[derive(Debug)]
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
    /// Uploads refused (bad input) or failed, by reason.
    pub uploads_rejected: CounterBy<Rejection>,
    /// Requests refused for missing or wrong tokens.
    pub auth_refusals: AtomicU64,
    /// Completed garbage collections (dry runs not included).
    pub gc_runs: AtomicU64,
    /// Seconds each completed garbage collection took.
    pub gc_duration: Histogram,
    /// Paths deleted by garbage collection.
    pub gc_paths_deleted: AtomicU64,
    /// NAR bytes freed by garbage collection.
    pub gc_bytes_freed: AtomicU64,
    /// Seconds each host's NixOS evaluation took (`nix build` until it starts building or
    /// fetching: `build::capacity::evaluation_ended`).
    pub host_evaluation: Histogram,
    /// Seconds each host's whole `nix build` took (evaluation included).
    pub host_build: Histogram,
    /// Seconds each build took, from a worker claiming it to its end, by outcome.
    pub builds: HistogramBy<BuildOutcome>,
    /// Deploys ended by a host's report, by outcome.
    pub deploys: CounterBy<DeployOutcome>,
    /// Lookups of the narinfo cache and of the published-hash set.
    pub memory_caches: [CounterBy<Lookup>; 2],
    /// Requests per class (index: [`Label::index`] of [`Class`]).
    http: Box<[ClassStats]>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            narinfo_hits: AtomicU64::new(0),
            narinfo_misses: AtomicU64::new(0),
            nar_bytes_served: AtomicU64::new(0),
            nar_redirects: AtomicU64::new(0),
            nars_received: AtomicU64::new(0),
            nar_bytes_received: AtomicU64::new(0),
            paths_published: AtomicU64::new(0),
            uploads_rejected: CounterBy::default(),
            auth_refusals: AtomicU64::new(0),
            gc_runs: AtomicU64::new(0),
            gc_duration: Histogram::new(SECONDS_BUCKETS),
            gc_paths_deleted: AtomicU64::new(0),
            gc_bytes_freed: AtomicU64::new(0),
            host_evaluation: Histogram::default(),
            host_build: Histogram::default(),
            builds: HistogramBy::new(SECONDS_BUCKETS),
            deploys: CounterBy::default(),
            memory_caches: [CounterBy::default(), CounterBy::default()],
            http: Class::ALL.iter().map(|_| ClassStats::default()).collect(),
        }
    }
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Counts one upload refused for `reason`.
    pub fn reject(&self, reason: Rejection) {
        self.uploads_rejected.add(reason, 1);
    }

    /// Counts one lookup of an in-memory cache.
    pub fn lookup(&self, cache: MemoryCache, result: Lookup) {
        self.memory_caches[cache.index()].add(result, 1);
    }

    /// Records a response of `class` with `status`, `latency` after the request arrived.
    pub fn response(&self, class: Class, status: u16, latency: Duration) {
        let stats = &self.http[class.index()];
        stats.latency.observe(latency);
        let code = status.clamp(STATUSES.start, STATUSES.end - 1);
        stats.statuses[usize::from(code - STATUSES.start)].fetch_add(1, Relaxed);
    }

    /// Counts body bytes of a request (`In`) or a response (`Out`) of `class`.
    pub fn body_bytes(&self, class: Class, direction: Direction, n: u64) {
        let stats = &self.http[class.index()];
        match direction {
            Direction::In => stats.bytes_in.fetch_add(n, Relaxed),
            Direction::Out => stats.bytes_out.fetch_add(n, Relaxed),
        };
    }

    /// The exposition text of everything counted in this process.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_counters(&mut out);
        self.uploads_rejected.render(&mut out, "berth_uploads_rejected_total", "uploads refused or failed, by reason");
        self.deploys.render(&mut out, "berth_deploy_outcomes_total", "deploys ended by a host's report, by outcome");
        self.render_memory_caches(&mut out);
        self.host_evaluation.render(&mut out, "berth_host_evaluation_seconds", "NixOS evaluation time per host");
        self.host_build.render(&mut out, "berth_host_build_seconds", "nix build time per host, evaluation included");
        self.builds.render(
            &mut out,
            "berth_build_duration_seconds",
            "build time from its claim to its end, by outcome",
        );
        self.gc_duration.render(&mut out, "berth_gc_duration_seconds", "time each completed garbage collection took");
        self.render_http(&mut out);
        let (name, help) = ("berth_db_queries_total", "database statements or transactions run (scrapes excluded)");
        header(&mut out, name, help, Kind::Counter);
        sample(&mut out, name, &[], crate::db::queries());
        let (name, help) = ("berth_db_scrape_queries_total", "database statements run by /metrics scrapes");
        header(&mut out, name, help, Kind::Counter);
        sample(&mut out, name, &[], crate::db::scrape_queries());
        out
    }

    fn render_counters(&self, out: &mut String) {
        let counters = [
            ("berth_narinfo_hits_total", "narinfo lookups answered", &self.narinfo_hits),
            ("berth_narinfo_misses_total", "narinfo lookups for absent paths", &self.narinfo_misses),
            ("berth_nar_bytes_served_total", "NAR bytes sent to clients", &self.nar_bytes_served),
            ("berth_nar_redirects_total", "NAR downloads redirected to the bucket or a CDN", &self.nar_redirects),
            ("berth_nars_received_total", "NAR files received and verified", &self.nars_received),
            ("berth_nar_bytes_received_total", "compressed NAR bytes received", &self.nar_bytes_received),
            ("berth_paths_published_total", "store paths newly published", &self.paths_published),
            ("berth_auth_refusals_total", "requests refused for a missing or wrong token", &self.auth_refusals),
            ("berth_gc_runs_total", "completed garbage collections (dry runs not included)", &self.gc_runs),
            ("berth_gc_paths_deleted_total", "paths deleted by garbage collection", &self.gc_paths_deleted),
            ("berth_gc_bytes_freed_total", "NAR bytes freed by garbage collection", &self.gc_bytes_freed),
        ];
        for (name, help, value) in counters {
            header(out, name, help, Kind::Counter);
            sample(out, name, &[], value.load(Relaxed));
        }
    }

    fn render_memory_caches(&self, out: &mut String) {
        let name = "berth_memory_cache_lookups_total";
        header(out, name, "lookups of the in-memory narinfo cache and published-hash set", Kind::Counter);
        for cache in MemoryCache::ALL {
            for result in Lookup::ALL {
                let value = self.memory_caches[cache.index()].get(*result);
                sample(out, name, &[(MemoryCache::NAME, cache.as_str()), (Lookup::NAME, result.as_str())], value);
            }
        }
    }

    fn render_http(&self, out: &mut String) {
        let name = "berth_http_request_duration_seconds";
        header(out, name, "time until the response head, by endpoint class", Kind::Histogram);
        for class in Class::ALL {
            self.http[class.index()].latency.render_series(out, name, &[(Class::NAME, class.as_str())]);
        }
        let name = "berth_http_responses_total";
        header(out, name, "responses by endpoint class and status code", Kind::Counter);
        for class in Class::ALL {
            for (code, count) in STATUSES.zip(self.http[class.index()].statuses.iter()) {
                let count = count.load(Relaxed);
                if count > 0 {
                    sample(out, name, &[(Class::NAME, class.as_str()), ("code", &code.to_string())], count);
                }
            }
        }
        let bytes: [(&str, &str, ByteCounter); 2] = [
            ("berth_http_request_bytes_total", "request body bytes read, by endpoint class", |s| &s.bytes_in),
            ("berth_http_response_bytes_total", "response body bytes sent, by endpoint class", |s| &s.bytes_out),
        ];
        for (name, help, counter) in bytes {
            header(out, name, help, Kind::Counter);
            for class in Class::ALL {
                sample(out, name, &[(Class::NAME, class.as_str())], counter(&self.http[class.index()]).load(Relaxed));
            }
        }
    }

    /// One unlabelled gauge in the exposition text.
    pub fn render_gauge(out: &mut String, name: &str, help: &str, value: u64) {
        header(out, name, help, Kind::Gauge);
        sample(out, name, &[], value);
    }
}

/// Which way body bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Read from the client.
    In,
    /// Sent to the client.
    Out,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(text: &str, prefix: &str) -> Vec<String> {
        text.lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect()
    }

    #[test]
    fn responses_count_by_class_and_code_and_only_codes_seen() {
        let m = Metrics::default();
        m.response(Class::NarInfo, 200, Duration::from_micros(300));
        m.response(Class::NarInfo, 404, Duration::from_micros(200));
        m.response(Class::NarInfo, 404, Duration::from_millis(2));
        m.response(Class::Upload, 500, Duration::from_secs(3));
        m.body_bytes(Class::Upload, Direction::In, 1000);
        m.body_bytes(Class::Nar, Direction::Out, 77);
        let text = m.render();
        assert_eq!(
            lines_of(&text, "berth_http_responses_total{"),
            [
                "berth_http_responses_total{class=\"narinfo\",code=\"200\"} 1",
                "berth_http_responses_total{class=\"narinfo\",code=\"404\"} 2",
                "berth_http_responses_total{class=\"upload\",code=\"500\"} 1",
            ]
        );
        assert!(text.contains("berth_http_request_duration_seconds_bucket{class=\"narinfo\",le=\"0.0005\"} 2\n"));
        assert!(text.contains("berth_http_request_duration_seconds_count{class=\"narinfo\"} 3\n"));
        assert!(text.contains("berth_http_request_duration_seconds_bucket{class=\"upload\",le=\"2.5\"} 0\n"));
        assert!(text.contains("berth_http_request_duration_seconds_bucket{class=\"upload\",le=\"5\"} 1\n"));
        assert!(text.contains("berth_http_request_bytes_total{class=\"upload\"} 1000\n"));
        assert!(text.contains("berth_http_response_bytes_total{class=\"nar\"} 77\n"));
        assert!(text.contains("berth_http_response_bytes_total{class=\"upload\"} 0\n"));
    }

    #[test]
    fn labelled_counters_render_every_value() {
        let m = Metrics::default();
        m.reject(Rejection::InvalidNar);
        m.reject(Rejection::InvalidNar);
        m.deploys.add(DeployOutcome::RolledBack, 1);
        m.lookup(MemoryCache::Narinfo, Lookup::Hit);
        m.lookup(MemoryCache::Published, Lookup::Miss);
        m.builds.of(BuildOutcome::Failed).observe(Duration::from_secs(1));
        let text = m.render();
        assert_eq!(lines_of(&text, "berth_uploads_rejected_total{").len(), Rejection::ALL.len());
        assert!(text.contains("berth_uploads_rejected_total{reason=\"invalid_nar\"} 2\n"));
        assert!(text.contains("berth_uploads_rejected_total{reason=\"malformed\"} 0\n"));
        assert_eq!(
            lines_of(&text, "berth_deploy_outcomes_total{"),
            [
                "berth_deploy_outcomes_total{outcome=\"confirmed\"} 0",
                "berth_deploy_outcomes_total{outcome=\"rolled_back\"} 1",
                "berth_deploy_outcomes_total{outcome=\"failed\"} 0",
            ]
        );
        assert_eq!(
            lines_of(&text, "berth_memory_cache_lookups_total{"),
            [
                "berth_memory_cache_lookups_total{cache=\"narinfo\",result=\"hit\"} 1",
                "berth_memory_cache_lookups_total{cache=\"narinfo\",result=\"miss\"} 0",
                "berth_memory_cache_lookups_total{cache=\"published\",result=\"hit\"} 0",
                "berth_memory_cache_lookups_total{cache=\"published\",result=\"miss\"} 1",
            ]
        );
        assert!(text.contains("berth_build_duration_seconds_count{outcome=\"failed\"} 1\n"));
        assert!(text.contains("berth_build_duration_seconds_count{outcome=\"succeeded\"} 0\n"));
    }

    #[test]
    fn every_family_has_help_and_type_once() {
        let text = Metrics::default().render();
        let mut types: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(types.len(), helps);
        let n = types.len();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), n, "a family is declared twice");
        for t in &types {
            let kind = text.lines().find_map(|l| l.strip_prefix(&format!("# TYPE {t} "))).unwrap();
            if kind == "counter" {
                assert!(t.ends_with("_total"), "{t}");
            }
        }
    }
}
