//! PURE: time arithmetic for the agent: the daily reboot window, the activation windows
//! (days of the week and times, read in the host's own time zone by the caller) and the
//! retry backoff.
//!
//! The window is read in UTC: the agent has no time-zone database, NixOS defaults to UTC,
//! and one clock for a fleet spread over zones is easier to reason about.

use std::time::Duration;

/// Minutes in a day.
const DAY: u16 = 24 * 60;
/// The longest wait between attempts to reach the server: short, so that a restarted server
/// sees its fleet again within a few seconds; the jitter of [`backoff`] spreads the fleet
/// over the second half of it (2 to 4 s), so it does not come back in one burst. A refused
/// connection costs the server next to nothing.
pub const BACKOFF_CAP: Duration = Duration::from_secs(4);
/// The least wait before a deploy that could not start (the cache lacks a path, the disk is
/// full) is tried again: time for the cause to heal.
pub const RETRY_WAIT: Duration = Duration::from_secs(30);

/// A daily window `HH:MM-HH:MM` (UTC), start included, end excluded; it may wrap past
/// midnight (`22:00-02:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebootWindow {
    start: u16,
    end: u16,
}

/// Why a reboot window was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Not `HH:MM-HH:MM`.
    #[error("{0:?}: expected HH:MM-HH:MM (UTC), e.g. 02:00-04:00")]
    Form(String),
    /// Start and end are the same minute.
    #[error("{0:?}: the window is empty")]
    Empty(String),
}

impl std::str::FromStr for RebootWindow {
    type Err = WindowError;

    fn from_str(s: &str) -> Result<Self, WindowError> {
        let err = || WindowError::Form(s.to_owned());
        let (start, end) = s.split_once('-').ok_or_else(err)?;
        let (start, end) = (minute_of(start.trim()).ok_or_else(err)?, minute_of(end.trim()).ok_or_else(err)?);
        if start == end {
            return Err(WindowError::Empty(s.to_owned()));
        }
        Ok(Self { start, end })
    }
}

/// `HH:MM` as minutes after midnight.
fn minute_of(hh_mm: &str) -> Option<u16> {
    let (h, m) = hh_mm.split_once(':')?;
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl RebootWindow {
    /// Whether the window is open at `unix_secs`.
    pub fn is_open(&self, unix_secs: u64) -> bool {
        let now = minute_of_day(unix_secs);
        if self.start < self.end {
            (self.start..self.end).contains(&now)
        } else {
            now >= self.start || now < self.end
        }
    }

    /// How long until the window next opens (zero when it is open).
    pub fn until_open(&self, unix_secs: u64) -> Duration {
        if self.is_open(unix_secs) {
            return Duration::ZERO;
        }
        let now = minute_of_day(unix_secs);
        let minutes = (self.start + DAY - now) % DAY;
        Duration::from_secs(u64::from(minutes) * 60 - unix_secs % 60)
    }
}

fn minute_of_day(unix_secs: u64) -> u16 {
    ((unix_secs / 60) % u64::from(DAY)) as u16
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

/// The wait before retry number `failures` (1 for the first failure): 1 s doubling up to
/// [`BACKOFF_CAP`], of which a random share (`jitter` in `0.0..1.0`) of the second half is
/// kept, so that a fleet whose server comes back does not return in lockstep.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let full = Duration::from_secs(1u64 << exponent).min(BACKOFF_CAP);
    full / 2 + full.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// A random number in `0.0..1.0` for [`backoff`] (0.5 if the system has no randomness).
pub fn jitter() -> f64 {
    let mut byte = [0u8; 2];
    match getrandom::getrandom(&mut byte) {
        Ok(()) => f64::from(u16::from_le_bytes(byte)) / 65536.0,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds for `HH:MM:SS` on 1 January 2026 (UTC).
    fn at(h: u64, m: u64, s: u64) -> u64 {
        1_767_225_600 + h * 3600 + m * 60 + s
    }

    #[track_caller]
    fn check(window: &str, time: (u64, u64, u64), open: bool, until_open: Duration) {
        let window: RebootWindow = window.parse().unwrap();
        let now = at(time.0, time.1, time.2);
        assert_eq!((window.is_open(now), window.until_open(now)), (open, until_open), "{window:?} at {time:?}");
    }

    #[test]
    fn windows() {
        let min = |m: u64| Duration::from_secs(m * 60);
        check("02:00-04:00", (2, 0, 0), true, Duration::ZERO);
        check("02:00-04:00", (3, 59, 59), true, Duration::ZERO);
        check("02:00-04:00", (4, 0, 0), false, min(22 * 60));
        check("02:00-04:00", (1, 59, 30), false, Duration::from_secs(30));
        check("02:00-04:00", (0, 0, 0), false, min(120));
        check("22:00-02:00", (23, 0, 0), true, Duration::ZERO);
        check("22:00-02:00", (1, 30, 0), true, Duration::ZERO);
        check("22:00-02:00", (2, 0, 0), false, min(20 * 60));
        check("00:00-00:01", (23, 59, 0), false, min(1));
    }

    #[test]
    fn window_syntax() {
        for bad in ["", "02:00", "2:00-4:00", "02:00-24:00", "02:60-03:00", "02:00-02:00", "0200-0400", "a:bc-de:fg"] {
            assert!(bad.parse::<RebootWindow>().is_err(), "{bad}");
        }
        assert!(" 02:00 - 04:00 ".trim().parse::<RebootWindow>().is_ok());
    }

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

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        let secs = |f: u32, j: f64| backoff(f, j).as_secs_f64();
        assert_eq!([secs(1, 1.0), secs(2, 1.0), secs(3, 1.0), secs(5, 1.0), secs(60, 1.0)], [1.0, 2.0, 4.0, 4.0, 4.0]);
        assert_eq!([secs(1, 0.0), secs(6, 0.0), secs(u32::MAX, 0.0)], [0.5, 2.0, 2.0]);
        assert_eq!(secs(0, 0.5), 0.75);
        let j = jitter();
        assert!((0.0..1.0).contains(&j), "{j}");
    }
}
