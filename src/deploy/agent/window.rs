//! PURE: time arithmetic for the agent: the daily reboot window and the retry backoff (the
//! activation windows' grammar is `deploy::windows`, shared with the server).
//!
//! The window is read in UTC: the agent has no time-zone database, NixOS defaults to UTC,
//! and one clock for a fleet spread over zones is easier to reason about.

use std::time::Duration;

use crate::deploy::windows::{minute_of, DAY};

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
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        let secs = |f: u32, j: f64| backoff(f, j).as_secs_f64();
        assert_eq!([secs(1, 1.0), secs(2, 1.0), secs(3, 1.0), secs(5, 1.0), secs(60, 1.0)], [1.0, 2.0, 4.0, 4.0, 4.0]);
        assert_eq!([secs(1, 0.0), secs(6, 0.0), secs(u32::MAX, 0.0)], [0.5, 2.0, 2.0]);
        assert_eq!(secs(0, 0.5), 0.75);
        let j = jitter();
        assert!((0.0..1.0).contains(&j), "{j}");
    }
}
