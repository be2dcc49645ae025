//! The pieces of the exposition text: HELP/TYPE headers, label sets (values escaped as the
//! text format requires), histograms over fixed bounds, and counters keyed by a small enum.
//! No I/O: everything writes into a `String`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (seconds) for builds, evaluations and collections: up to about 4.5 hours,
/// the length of a mass rebuild on a strong build host.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0];

/// Upper bounds (seconds) for HTTP requests: a narinfo hit takes well under a millisecond, a
/// long-poll up to its timeout.
pub const REQUEST_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The kind of a metric family, as its `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Any value, read at scrape time.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a family.
pub fn header(out: &mut String, name: &str, help: &str, kind: Kind) {
    writeln!(out, "# HELP {name} {}\n# TYPE {name} {}", escape_help(help), kind.as_str()).expect("writing to a String");
}

/// Writes one sample: `name{labels} value`.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    write_labels(out, labels);
    writeln!(out, " {value}").expect("writing to a String");
}

fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        escape_label_value(out, value);
        out.push('"');
    }
    out.push('}');
}

/// A label value as the text format wants it: backslash, double quote and line feed escaped
/// (a host name is validated, but the renderer must not rely on every caller's validation).
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escapes backslash and line feed (not quotes).
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A label whose values are a small fixed set: an enum.
pub trait Label: Copy + 'static {
    /// The label's name.
    const NAME: &'static str;
    /// Every value, in the order they are rendered.
    const ALL: &'static [Self];
    /// The value's text.
    fn as_str(self) -> &'static str;
    /// Its position in [`Label::ALL`].
    fn index(self) -> usize;
}

/// One counter per value of the label `L`; every value is rendered, zeros included, so that
/// a rate over a value that has not happened yet is 0 rather than absent.
#[derive(Debug)]
pub struct CounterBy<L: Label> {
    values: Box<[AtomicU64]>,
    label: std::marker::PhantomData<L>,
}

impl<L: Label> Default for CounterBy<L> {
    fn default() -> Self {
        Self { values: L::ALL.iter().map(|_| AtomicU64::new(0)).collect(), label: std::marker::PhantomData }
    }
}

impl<L: Label> CounterBy<L> {
    /// Adds `n` to `label`'s counter.
    pub fn add(&self, label: L, n: u64) {
        self.values[label.index()].fetch_add(n, Relaxed);
    }

    /// `label`'s count.
    pub fn get(&self, label: L) -> u64 {
        self.values[label.index()].load(Relaxed)
    }

    /// The sum over every value.
    pub fn total(&self) -> u64 {
        self.values.iter().map(|v| v.load(Relaxed)).sum()
    }

    /// The family: header and one sample per value.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, Kind::Counter);
        for l in L::ALL {
            sample(out, name, &[(L::NAME, l.as_str())], self.get(*l));
        }
    }
}

/// A Prometheus histogram of durations in seconds over fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative; the last is above every bound).
    buckets: Box<[AtomicU64]>,
    /// The sum of the observations, in microseconds.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(SECONDS_BUCKETS)
    }
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: std::time::Duration) {
        let seconds = d.as_secs_f64();
        let bucket = self.bounds.iter().position(|b| seconds <= *b).unwrap_or(self.bounds.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The whole family of an unlabelled histogram.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, Kind::Histogram);
        self.render_series(out, name, &[]);
    }

    /// The buckets, sum and count of one series, with `labels` (after the header).
    pub fn render_series(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let le = self.bounds.get(i).map_or_else(|| "+Inf".to_owned(), f64::to_string);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            sample(out, &bucket, &with_le, cumulative);
        }
        sample(out, &format!("{name}_sum"), labels, self.sum_micros.load(Relaxed) as f64 / 1e6);
        sample(out, &format!("{name}_count"), labels, self.count.load(Relaxed));
    }
}

/// One histogram per value of the label `L`.
#[derive(Debug)]
pub struct HistogramBy<L: Label> {
    series: Box<[Histogram]>,
    label: std::marker::PhantomData<L>,
}

impl<L: Label> HistogramBy<L> {
    /// Empty histograms over `bounds`.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { series: L::ALL.iter().map(|_| Histogram::new(bounds)).collect(), label: std::marker::PhantomData }
    }

    /// `label`'s histogram.
    pub fn of(&self, label: L) -> &Histogram {
        &self.series[label.index()]
    }

    /// The family: header and one series per value.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, Kind::Histogram);
        for l in L::ALL {
            self.of(*l).render_series(out, name, &[(L::NAME, l.as_str())]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[track_caller]
    fn check(labels: &[(&str, &str)], expected: &str) {
        let mut out = String::new();
        sample(&mut out, "m", labels, 1);
        assert_eq!(out, expected);
    }

    #[test]
    fn label_values_are_escaped() {
        check(&[], "m 1\n");
        check(&[("host", "a")], "m{host=\"a\"} 1\n");
        check(&[("host", "a\"b"), ("state", "x\\y\nz")], "m{host=\"a\\\"b\",state=\"x\\\\y\\nz\"} 1\n");
        let mut out = String::new();
        header(&mut out, "m", "a\\b\nc \"q\"", Kind::Gauge);
        assert_eq!(out, "# HELP m a\\\\b\\nc \"q\"\n# TYPE m gauge\n");
    }

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let h = Histogram::default();
        for ms in [300, 3_900, 4_000, 300_000, 20_000_000] {
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
        t_seconds_bucket{le="512"} 4
        t_seconds_bucket{le="1024"} 4
        t_seconds_bucket{le="2048"} 4
        t_seconds_bucket{le="4096"} 4
        t_seconds_bucket{le="8192"} 4
        t_seconds_bucket{le="16384"} 4
        t_seconds_bucket{le="+Inf"} 5
        t_seconds_sum 20308.2
        t_seconds_count 5
        "###);
    }
}
