//! PURE `--expires` durations: `90s`, `30m`, `1h`, `2d` (a bare number is seconds), at
//! least a minute and at most [`super::MAX_EXPIRY_SECS`].

/// An `--expires` value that is not a duration in range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --expires {0:?}: give a duration such as 30m, 1h or 2d (1 minute to 7 days)")]
pub struct BadExpiry(String);

/// Seconds in `text`.
pub fn parse(text: &str) -> Result<i64, BadExpiry> {
    let bad = || BadExpiry(text.chars().take(40).collect());
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = number.parse::<i64>().ok().and_then(|n| n.checked_mul(scale)).ok_or_else(bad)?;
    if !(60..=super::MAX_EXPIRY_SECS).contains(&secs) {
        return Err(bad());
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn expiries() {
        for (text, secs) in [("1h", Some(3600)), ("30m", Some(1800)), ("90", Some(90)), ("2d", Some(172_800))] {
            assert_eq!(super::parse(text).ok(), secs, "{text}");
        }
        for text in ["", "h", "1w", "59s", "8d", "-1h", "1.5h", "99999999999999999999d", "1h "] {
            assert!(super::parse(text).is_err(), "{text}");
        }
    }
}
