//! PURE: clipping text that clients send (host reports, their messages and log tails) to a
//! byte budget. Always at a character boundary: slicing a `String` inside a multi-byte
//! character panics, and the text agents send from `switch-to-configuration` and health
//! checks is often not ASCII. And sizes for people (`bytes`).

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn clip_head(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    s.get(..end).unwrap_or_default()
}

/// The longest suffix of `s` of at most `max` bytes that starts on a character boundary.
pub fn clip_tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let start = (s.len() - max..=s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
    s.get(start..).unwrap_or_default()
}

/// `s` without NUL characters, which PostgreSQL's `text` cannot hold.
pub fn without_nul(s: &str) -> String {
    s.replace('\0', "")
}

/// `n` bytes in binary units with one decimal: `512 B`, `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_bytes() {
        for (n, expected) in
            [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (12_897_484, "12.3 MiB"), (1 << 40, "1.0 TiB")]
        {
            assert_eq!(bytes(n), expected, "{n}");
        }
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
    }

    #[track_caller]
    fn check(input: &str, max: usize, head: &str, tail: &str) {
        assert_eq!(clip_head(input, max), head, "head of {input:?} in {max} bytes");
        assert_eq!(clip_tail(input, max), tail, "tail of {input:?} in {max} bytes");
    }

    #[test]
    fn clips_at_character_boundaries() {
        check("", 0, "", "");
        check("abc", 3, "abc", "abc");
        check("abc", 2, "ab", "bc");
        check("abc", 0, "", "");
        // "€" is 3 bytes, "😀" 4, "ü" 2.
        check("€€", 5, "€", "€");
        check("€€", 4, "€", "€");
        check("€€", 2, "", "");
        check("a€", 3, "a", "€");
        check("€a", 3, "€", "a");
        check("😀ü€", 5, "😀", "ü€");
        check("😀ü€", 6, "😀ü", "ü€");
        check("😀ü€", 8, "😀ü", "ü€");
        check("😀ü€", 9, "😀ü€", "😀ü€");
        let long = "€".repeat(400);
        assert_eq!(clip_head(&long, 1000).len(), 999);
        assert_eq!(clip_tail(&long, 1000).len(), 999);
    }

    #[test]
    fn removes_nul() {
        assert_eq!(without_nul("a\0b€\0"), "ab€");
    }
}
