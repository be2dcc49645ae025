//! What the agent tells the server: one report per phase of a deploy, each with the time since
//! the deploy started and the tail of what the commands printed. Reports wait in an outbox
//! while the server is away and go out in order when it is back.

use std::collections::VecDeque;
use std::time::Instant;

use serde::Serialize;

/// How many reports wait at most; the oldest go first (the last ones say where the host is).
const OUTBOX_LIMIT: usize = 100;
/// Lines kept in a log tail.
const TAIL_LINES: usize = 40;
/// Characters kept of one log line.
const LINE_CHARS: usize = 400;

pub use crate::deploy::status::Phase;

/// The body of `POST /api/v1/hosts/{host}/reports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The generation it is about.
    pub generation: u64,
    /// The phase reached.
    pub phase: Phase,
    /// One line.
    pub message: String,
    /// The last lines of output, if any.
    pub log_tail: Option<String>,
    /// Milliseconds since the deploy started.
    pub duration_ms: Option<u64>,
    /// The generation running now, when known.
    pub active_generation: Option<u64>,
    /// On `confirmed`: the number of the host's own profile generation it became
    /// (`system-5-link` is 5), when the deploy set the profile. Left out otherwise, so a
    /// server that predates it accepts the other reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_generation: Option<u64>,
}

impl Report {
    /// A report on `generation` with a message cut to one line.
    pub fn new(generation: u64, phase: Phase, message: &str, started: Option<Instant>) -> Self {
        Self {
            generation,
            phase,
            message: one_line(message),
            log_tail: None,
            duration_ms: started.map(|s| s.elapsed().as_millis().try_into().unwrap_or(u64::MAX)),
            active_generation: None,
            profile_generation: None,
        }
    }
}

/// The first line of `text`, at most 500 characters.
pub fn one_line(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    truncate(line, 500)
}

fn truncate(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// The last lines a deploy's commands printed.
#[derive(Debug, Clone, Default)]
pub struct LogTail(VecDeque<String>);

impl LogTail {
    /// Keeps `line` (cut to a sane length), dropping the oldest beyond the limit.
    pub fn push(&mut self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        if self.0.len() == TAIL_LINES {
            self.0.pop_front();
        }
        self.0.push_back(truncate(line, LINE_CHARS));
    }

    /// The lines joined, or `None` when there are none.
    pub fn text(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| Vec::from(self.0.clone()).join("\n"))
    }
}

/// Reports not yet accepted by the server, oldest first.
#[derive(Debug, Default)]
pub struct Outbox(VecDeque<Report>);

impl Outbox {
    /// Queues `report`; when full, the oldest report is dropped (and returned).
    pub fn push(&mut self, report: Report) -> Option<Report> {
        let dropped = (self.0.len() == OUTBOX_LIMIT).then(|| self.0.pop_front()).flatten();
        self.0.push_back(report);
        dropped
    }

    /// The oldest report.
    pub fn front(&self) -> Option<&Report> {
        self.0.front()
    }

    /// Removes the oldest report (it was delivered, or can never be).
    pub fn pop(&mut self) {
        self.0.pop_front();
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_serialise_as_the_api_documents() {
        let mut report = Report::new(7, Phase::RolledBack, "health check failed\nsecond line", None);
        report.log_tail = Some("a\nb".into());
        report.active_generation = Some(6);
        let json = serde_json::to_value(&report).unwrap();
        let expected = serde_json::json!({
            "generation": 7, "phase": "rolled_back", "message": "health check failed",
            "log_tail": "a\nb", "duration_ms": null, "active_generation": 6
        });
        assert_eq!(json, expected);
        let phase = |p: Phase| serde_json::to_value(p).unwrap();
        assert_eq!(phase(Phase::NeedsReboot), "needs_reboot");
        assert!(Report::new(1, Phase::Downloading, "x", Some(Instant::now())).duration_ms.is_some());
    }

    #[test]
    fn tails_and_outbox_are_bounded() {
        let mut tail = LogTail::default();
        assert_eq!(tail.text(), None);
        for i in 0..100 {
            tail.push(&format!("line {i}"));
        }
        tail.push("  ");
        tail.push(&"x".repeat(1000));
        let text = tail.text().unwrap();
        assert_eq!(text.lines().count(), TAIL_LINES);
        assert!(text.starts_with("line 61\n") && text.ends_with('…'), "{text}");

        let mut outbox = Outbox::default();
        for g in 0..OUTBOX_LIMIT as u64 {
            assert_eq!(outbox.push(Report::new(g, Phase::Downloading, "", None)), None);
        }
        let dropped = outbox.push(Report::new(999, Phase::Confirmed, "", None)).unwrap();
        assert_eq!((dropped.generation, outbox.front().unwrap().generation), (0, 1));
        assert_eq!(one_line(""), "");
        assert_eq!(one_line(&"é".repeat(600)).chars().count(), 501);
    }
}
