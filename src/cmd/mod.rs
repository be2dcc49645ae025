//! The client-side commands that talk to a server's API (`berth build …`, `berth hosts …`, `berth rollout …`):
//! requests through [`crate::client::Api`], output as plain text for people and scripts.

pub mod build;
pub mod cache;
pub mod enroll;
pub mod gc;
pub mod hosts;
pub mod keys;
pub mod rollout;

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC (no time-zone database needed).
pub fn timestamp(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps() {
        assert_eq!(super::timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(super::timestamp(1_795_887_131), "2026-11-28 17:32:11");
        assert_eq!(super::timestamp(951_782_400), "2000-02-29 00:00:00");
    }
}
