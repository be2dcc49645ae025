//! PURE: activation windows kept by the server, per host or per group of hosts (the same
//! selectors as rollout waves: `tag:NAME`, name patterns). Outside its window a host is not
//! handed a newer generation — neither a pulled host's long-poll nor the push driver gets
//! it — until the window opens. Windows are read in their own time zone (IANA name, UTC by
//! default: the server cannot know each host's zone). A host's own `activation_windows` win
//! over every group; otherwise the first group that selects it applies.
//!
//! The agent's own `activation_windows` (docs/agent.md) still apply on the host as well.

use std::collections::BTreeMap;

use super::agent::window::{activation_allowed, ActivationWindow};
use super::rollout::Selector;

/// One set of windows and the zone it is read in.
#[derive(Debug, Clone)]
pub struct Windows {
    /// The windows, as configured (for status and errors).
    pub text: Vec<String>,
    /// Parsed.
    pub windows: Vec<ActivationWindow>,
    /// Where the days and times are read.
    pub time_zone: jiff::tz::TimeZone,
}

impl Windows {
    /// Whether a switch is allowed at `now`.
    pub fn open(&self, now: jiff::Timestamp) -> bool {
        let local = now.to_zoned(self.time_zone.clone());
        let weekday = local.weekday().to_monday_zero_offset() as usize;
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        activation_allowed(&self.windows, weekday, minute)
    }
}

/// A `[[repositories.windows]]` entry: the hosts it selects and their windows.
#[derive(Debug, Clone)]
pub struct Group {
    /// Which hosts.
    pub hosts: Vec<Selector>,
    /// Their windows.
    pub windows: Windows,
}

/// A repository's windows.
#[derive(Debug, Clone, Default)]
pub struct WindowPolicy {
    /// Hosts' own windows, by name.
    pub hosts: BTreeMap<String, Windows>,
    /// Groups, in order.
    pub groups: Vec<Group>,
}

impl WindowPolicy {
    /// Whether any window is configured.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.groups.is_empty()
    }

    /// The windows of `host` (with `tags`, the repository's tags by host), if any.
    pub fn of(&self, host: &str, tags: &BTreeMap<String, Vec<String>>) -> Option<&Windows> {
        self.hosts
            .get(host)
            .or_else(|| self.groups.iter().find(|g| g.hosts.iter().any(|s| s.matches(host, tags))).map(|g| &g.windows))
    }

    /// Whether `host` may be handed a newer generation at `now` (no windows: always).
    pub fn open(&self, host: &str, tags: &BTreeMap<String, Vec<String>>, now: jiff::Timestamp) -> bool {
        self.of(host, tags).map_or(true, |w| w.open(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(text: &[&str], zone: &str) -> Windows {
        Windows {
            text: text.iter().map(|s| (*s).to_owned()).collect(),
            windows: text.iter().map(|s| s.parse().unwrap()).collect(),
            time_zone: jiff::tz::TimeZone::get(zone).unwrap(),
        }
    }

    #[test]
    fn a_host_window_wins_over_groups_and_the_first_group_applies() {
        let tags: BTreeMap<String, Vec<String>> =
            [("db-1".into(), vec!["db".into()]), ("db-2".into(), vec!["db".into()])].into();
        let policy = WindowPolicy {
            hosts: [("db-2".to_owned(), windows(&["Sun 03:00-04:00"], "UTC"))].into(),
            groups: vec![
                Group { hosts: vec![Selector::parse("tag:db")], windows: windows(&["Sat 02:00-05:00"], "UTC") },
                Group { hosts: vec![Selector::parse("*")], windows: windows(&["Mon-Fri 09:00-17:00"], "UTC") },
            ],
        };
        let at = |text: &str| text.parse::<jiff::Timestamp>().unwrap();
        // 2026-12-05 is a Saturday.
        let saturday_3 = at("2026-12-05T03:00:00Z");
        assert!(policy.open("db-1", &tags, saturday_3), "the db group's window");
        assert!(!policy.open("db-2", &tags, saturday_3), "its own window, not the group's");
        assert!(policy.open("db-2", &tags, at("2026-12-06T03:30:00Z")));
        assert!(!policy.open("web-1", &tags, saturday_3), "the catch-all group: weekdays only");
        assert!(policy.open("web-1", &tags, at("2026-12-07T10:00:00Z")));
        assert!(WindowPolicy::default().open("web-1", &tags, saturday_3), "no windows: always");
    }

    #[test]
    fn windows_are_read_in_their_time_zone() {
        let berlin = windows(&["02:00-03:00"], "Europe/Berlin");
        let at = |text: &str| text.parse::<jiff::Timestamp>().unwrap();
        assert!(berlin.open(at("2026-12-05T01:30:00Z")), "02:30 in Berlin (UTC+1 in winter)");
        assert!(!berlin.open(at("2026-12-05T02:30:00Z")), "03:30 in Berlin");
        assert!(berlin.open(at("2026-07-05T00:30:00Z")), "02:30 in Berlin (UTC+2 in summer)");
    }
}
