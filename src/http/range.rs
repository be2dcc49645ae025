//! Parsing the HTTP `Range` header (single ranges only, as Nix and curl send them when they
//! resume a download). Anything else is ignored and the whole object served, as RFC 9110
//! allows.

use crate::store::ByteRange;

/// Parses `bytes=a-b`, `bytes=a-` or `bytes=-n`; `None` for anything else. `bytes=-0` is
/// a valid range that no object satisfies (RFC 9110 §14.1.1): it parses, and is 416.
pub fn parse(value: &str) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    if start.is_empty() {
        return end.parse().ok().map(ByteRange::Suffix);
    }
    let start: u64 = start.parse().ok()?;
    let end = if end.is_empty() { None } else { Some(end.parse::<u64>().ok().filter(|e| *e >= start)?) };
    Some(ByteRange::From { start, end })
}

/// Whether a parsed range can be served from an object of `size` bytes.
pub fn satisfiable(range: ByteRange, size: u64) -> bool {
    match range {
        ByteRange::From { start, .. } => start < size,
        ByteRange::Suffix(n) => n > 0 && size > 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: Option<ByteRange>) {
        assert_eq!(parse(input), expected, "{input:?}");
    }

    #[test]
    fn ranges() {
        check("bytes=0-99", Some(ByteRange::From { start: 0, end: Some(99) }));
        check("bytes=100-", Some(ByteRange::From { start: 100, end: None }));
        check("bytes=-5", Some(ByteRange::Suffix(5)));
        check("bytes=5-1", None);
        check("bytes=0-1,4-5", None);
        check("bytes=-0", Some(ByteRange::Suffix(0)));
        check("bytes=-", None);
        check("items=0-1", None);
        check("bytes=x-", None);
        assert!(!satisfiable(ByteRange::From { start: 10, end: None }, 10));
        assert!(satisfiable(ByteRange::Suffix(100), 10));
        assert!(!satisfiable(ByteRange::Suffix(0), 10), "the last zero bytes");
    }

    /// Fuzz target `range`: any header value; a range that parses prints back to a value
    /// that parses to the same range, and `satisfiable` answers for any size.
    #[test]
    fn fuzz_range() {
        crate::fuzz::run("range", |bytes| {
            let Some(range) = parse(&String::from_utf8_lossy(bytes)) else { return };
            let text = match range {
                ByteRange::From { start, end: Some(end) } => format!("bytes={start}-{end}"),
                ByteRange::From { start, end: None } => format!("bytes={start}-"),
                ByteRange::Suffix(n) => format!("bytes=-{n}"),
            };
            assert_eq!(parse(&text), Some(range), "{text}");
            for size in [0, 1, 100, u64::MAX] {
                let _ = satisfiable(range, size);
            }
        });
    }
}
