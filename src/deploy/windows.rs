//! PURE: activation windows — their grammar ([`ActivationWindow`], read by the agent's
//! `activation_windows` and the server's alike) — and the windows kept by the server, per
//! host or per group of hosts (the same
//! selectors as rollout waves: `tag:NAME`, name patterns). Outside its window a host is not
//! handed a newer generation — neither a pulled host's long-poll nor the push driver gets
//! it — until the window opens. Windows are read in their own time zone (IANA name, UTC by
//! default: the server cannot know each host's zone). A host's own `activation_windows` win
//! over every group; otherwise the first group that selects it applies.
//!
//! The agent's own `activation_windows` (docs/agent.md) still apply on the host as well.

use std::collections::BTreeMap;

use super::rollout::Selector;

/// Minutes in a day.
pub(crate) const DAY: u16 = 24 * 60;

/// `HH:MM` as minutes after midnight.
pub(crate) fn minute_of(hh_mm: &str) -> Option<u16> {
    let (h, m) = hh_mm.split_once(':')?;
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// When a new generation may be switched to: `[DAYS ]HH:MM-HH:MM` in the host's time zone,
/// start included, end excluded, `24:00` as an end; DAYS is a comma list of days (`Mon`…`Sun`)
/// or ranges (`Mon-Fri`, `Fri-Mon`), every day when left out. A window that wraps past
/// midnight belongs to the day it starts on (`Fri 22:00-02:00` is open early Saturday).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivationWindow {
    /// Monday first.
    days: [bool; 7],
    start: u16,
    end: u16,
}

/// Why an activation window was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivationWindowError {
    /// Not `[DAYS ]HH:MM-HH:MM`.
    #[error("{0:?}: expected [DAYS ]HH:MM-HH:MM, e.g. \"Mon-Fri 02:00-05:00\" or \"Sat,Sun 00:00-24:00\"")]
    Form(String),
    /// A day name that is not `Mon`…`Sun`.
    #[error("{0:?}: days are Mon, Tue, Wed, Thu, Fri, Sat, Sun")]
    Day(String),
    /// Start and end are the same minute.
    #[error("{0:?}: the window is empty")]
    Empty(String),
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_of(name: &str) -> Option<usize> {
    DAY_NAMES.iter().position(|d| d.eq_ignore_ascii_case(name))
}

impl std::str::FromStr for ActivationWindow {
    type Err = ActivationWindowError;

    fn from_str(s: &str) -> Result<Self, ActivationWindowError> {
        let form = || ActivationWindowError::Form(s.to_owned());
        let text = s.trim();
        let (days_text, times) = match text.rsplit_once(char::is_whitespace) {
            Some((days, times)) => (Some(days.trim()), times),
            None => (None, text),
        };
        let mut days = [days_text.is_none(); 7];
        for part in days_text.into_iter().flat_map(|d| d.split(',')) {
            let part = part.trim();
            let day = |name: &str| day_of(name.trim()).ok_or_else(|| ActivationWindowError::Day(s.to_owned()));
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (day(a)?, day(b)?),
                None => (day(part)?, day(part)?),
            };
            let mut d = first;
            loop {
                days[d] = true;
                if d == last {
                    break;
                }
                d = (d + 1) % 7;
            }
        }
        let (start, end) = times.split_once('-').ok_or_else(form)?;
        let start = minute_of(start).ok_or_else(form)?;
        let end = if end == "24:00" { Some(DAY) } else { minute_of(end) }.ok_or_else(form)?;
        if start == end {
            return Err(ActivationWindowError::Empty(s.to_owned()));
        }
        Ok(Self { days, start, end })
    }
}

impl ActivationWindow {
    /// Whether the window is open on `weekday` (0 = Monday) at `minute` after midnight,
    /// both in the host's time zone.
    pub fn is_open(&self, weekday: usize, minute: u16) -> bool {
        let today = self.days[weekday % 7];
        let yesterday = self.days[(weekday + 6) % 7];
        if self.start < self.end {
            today && (self.start..self.end).contains(&minute)
        } else {
            (today && minute >= self.start) || (yesterday && minute < self.end)
        }
    }
}

/// Whether any of `windows` is open (no windows: always).
pub fn activation_allowed(windows: &[ActivationWindow], weekday: usize, minute: u16) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.is_open(weekday, minute))
}

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

    /// The windows of `host`, whose tags are its configured ones (`configured`, by host) and
    /// those it was enrolled with.
    pub fn of_host(
        &self,
        host: &str,
        configured: &BTreeMap<String, Vec<String>>,
        enrolled: Vec<String>,
    ) -> Option<&Windows> {
        if self.is_empty() {
            return None;
        }
        self.of(host, &super::rollout::tags_of(configured, host, enrolled))
    }

    /// Whether `host` (tags as for [`WindowPolicy::of_host`]) may be handed a newer
    /// generation at `now` (no windows: always).
    pub fn open(
        &self,
        host: &str,
        configured: &BTreeMap<String, Vec<String>>,
        enrolled: Vec<String>,
        now: jiff::Timestamp,
    ) -> bool {
        self.of_host(host, configured, enrolled).map_or(true, |w| w.open(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_windows_by_day_and_time() {
        let (mon, fri, sat, sun) = (0, 4, 5, 6);
        let at = |h: u16, m: u16| h * 60 + m;
        let w = |s: &str| s.parse::<ActivationWindow>().unwrap_or_else(|e| panic!("{e}"));
        for (window, day, minute, open) in [
            ("Mon-Fri 02:00-05:00", mon, at(2, 0), true),
            ("Mon-Fri 02:00-05:00", fri, at(4, 59), true),
            ("Mon-Fri 02:00-05:00", fri, at(5, 0), false),
            ("Mon-Fri 02:00-05:00", sat, at(3, 0), false),
            ("Sat,Sun 00:00-24:00", sun, at(23, 59), true),
            ("Sat,Sun 00:00-24:00", mon, at(0, 0), false),
            ("Fri 22:00-02:00", fri, at(23, 0), true),
            ("Fri 22:00-02:00", sat, at(1, 59), true),
            ("Fri 22:00-02:00", sat, at(22, 30), false),
            ("Fri 22:00-02:00", fri, at(1, 0), false),
            ("Fri-Mon 12:00-13:00", sun, at(12, 30), true),
            ("Fri-Mon 12:00-13:00", mon, at(12, 30), true),
            ("Fri-Mon 12:00-13:00", 1, at(12, 30), false),
            ("03:00-04:00", 2, at(3, 30), true),
            ("mon 03:00-04:00", mon, at(3, 30), true),
        ] {
            assert_eq!(w(window).is_open(day, minute), open, "{window} day {day} minute {minute}");
        }
        assert!(activation_allowed(&[], sat, 0), "no windows: always");
        let both = [w("Mon 01:00-02:00"), w("Tue 01:00-02:00")];
        assert!(activation_allowed(&both, 1, at(1, 30)) && !activation_allowed(&both, 2, at(1, 30)));
    }

    #[test]
    fn activation_window_syntax() {
        for bad in [
            "",
            "Mon",
            "Mon-Fri",
            "Mon-Fri 2:00-5:00",
            "Moon 02:00-03:00",
            "Mon,,Tue 02:00-03:00",
            "Mon 02:00-02:00",
            "Mon 24:00-02:00",
            "Mon 02:00-24:01",
            "Mon 02:00 - 03:00",
            "Lun 02:00-03:00",
        ] {
            assert!(bad.parse::<ActivationWindow>().is_err(), "{bad}");
        }
        let error = "Moon 02:00-03:00".parse::<ActivationWindow>().unwrap_err().to_string();
        assert!(error.contains("days are Mon"), "{error}");
    }

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
        assert!(policy.open("db-1", &tags, vec![], saturday_3), "the db group's window");
        assert!(!policy.open("db-2", &tags, vec![], saturday_3), "its own window, not the group's");
        assert!(policy.open("db-2", &tags, vec![], at("2026-12-06T03:30:00Z")));
        assert!(!policy.open("web-1", &tags, vec![], saturday_3), "the catch-all group: weekdays only");
        assert!(policy.open("web-1", &tags, vec![], at("2026-12-07T10:00:00Z")));
        assert!(WindowPolicy::default().open("web-1", &tags, vec![], saturday_3), "no windows: always");
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
