//! PURE: when to try a failed outbound request again.

use std::time::Duration;

/// Attempts in all, the first included.
pub const MAX_ATTEMPTS: u32 = 6;

/// The wait after failed attempt `attempt` (1 for the first) before the next one, or `None`
/// when it was the last: 1, 2, 4, 8, 16 s (about half a minute in all), each at most 60 s.
pub fn delay(attempt: u32) -> Option<Duration> {
    if attempt == 0 || attempt >= MAX_ATTEMPTS {
        return None;
    }
    Some(Duration::from_secs(1u64 << (attempt - 1).min(6)).min(Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(attempt: u32, expected: Option<u64>) {
        assert_eq!(delay(attempt), expected.map(Duration::from_secs), "after attempt {attempt}");
    }

    #[test]
    fn doubles_then_gives_up() {
        check(0, None);
        check(1, Some(1));
        check(2, Some(2));
        check(3, Some(4));
        check(5, Some(16));
        check(MAX_ATTEMPTS, None);
        check(u32::MAX, None);
    }
}
