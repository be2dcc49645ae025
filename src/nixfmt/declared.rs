//! PURE: what a compressed NAR stream declares it needs to decode, read from its first
//! bytes before any decoder runs — the dictionary of an xz stream's first block, the
//! window of a zstd stream's first frame. Uploads are charged that much of the decoder
//! budget (and their decoder is held to it), so honest uploads take small shares and a
//! bomb is refused before anything is allocated.

use super::Compression;

/// The most bytes [`declared_memory`] looks at (the xz stream header and the largest block
/// header).
pub const PEEK_BYTES: usize = 12 + 1024;

/// What the decoders themselves need beside the dictionary or window (liblzma's state,
/// zstd's block buffers), generously.
const OVERHEAD: u64 = 1 << 20;

/// What the first bytes of a stream say about its decoder's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// Not enough bytes yet to tell.
    NeedMore,
    /// The decoder needs at most this many bytes for the first block or frame.
    Bytes(u64),
    /// The stream does not say (or is not what its name claims): charge the full limit and
    /// let the decoder judge.
    Unknown,
}

/// Reads the memory a stream declares from its first bytes.
pub fn declared_memory(compression: Compression, prefix: &[u8]) -> Declared {
    match compression {
        Compression::None => Declared::Bytes(0),
        Compression::Xz => xz(prefix),
        Compression::Zstd => zstd(prefix),
    }
}

/// An xz stream: a 12-byte stream header, then the first block header, whose LZMA2 filter
/// properties hold the dictionary size.
fn xz(p: &[u8]) -> Declared {
    const MAGIC: &[u8] = b"\xfd7zXZ\0";
    if p.len() < 13 {
        return if MAGIC.starts_with(&p[..p.len().min(6)]) { Declared::NeedMore } else { Declared::Unknown };
    }
    if !p.starts_with(MAGIC) || p[12] == 0 {
        // Not xz, or no block at all (the index follows): nothing to go by.
        return Declared::Unknown;
    }
    let size = (usize::from(p[12]) + 1) * 4;
    let Some(header) = p.get(12..12 + size) else { return Declared::NeedMore };
    match lzma2_dictionary(header) {
        Some(dict) => Declared::Bytes(dict + OVERHEAD),
        None => Declared::Unknown,
    }
}

/// The dictionary size of the LZMA2 filter in a block header, if it has one.
fn lzma2_dictionary(header: &[u8]) -> Option<u64> {
    let flags = *header.get(1)?;
    let mut pos = 2;
    let varint = |pos: &mut usize| varint(header, pos);
    if flags & 0x40 != 0 {
        varint(&mut pos)?;
    }
    if flags & 0x80 != 0 {
        varint(&mut pos)?;
    }
    for _ in 0..=(flags & 0x03) {
        let (id, props) = (varint(&mut pos)?, varint(&mut pos)?);
        if id == 0x21 && props == 1 {
            let d = *header.get(pos)?;
            return match d {
                40 => Some(u64::from(u32::MAX)),
                0..=39 => Some((2 | u64::from(d & 1)) << (d / 2 + 11)),
                _ => None,
            };
        }
        pos += usize::try_from(props).ok()?;
    }
    None
}

/// An xz variable-length integer (7 bits a byte, little end first) at `*pos`.
fn varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..63).step_by(7) {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// A zstd frame header: the window descriptor, or for a single-segment frame its content
/// size. The decoder's `window_log_max` is a power of two, so the charge is the window
/// rounded up to one.
fn zstd(p: &[u8]) -> Declared {
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    if p.len() < 6 {
        return if MAGIC.starts_with(&p[..p.len().min(4)]) { Declared::NeedMore } else { Declared::Unknown };
    }
    if p[..4] != MAGIC {
        // A skippable frame first, or not zstd.
        return Declared::Unknown;
    }
    let fhd = p[4];
    let window = if fhd & 0x20 == 0 {
        let wd = p[5];
        let base = 1u64 << (10 + (wd >> 3));
        base + base / 8 * u64::from(wd & 7)
    } else {
        let dict_id = [0, 1, 2, 4][usize::from(fhd & 3)];
        let fcs = [1, 2, 4, 8][usize::from(fhd >> 6)];
        let Some(field) = p.get(5 + dict_id..5 + dict_id + fcs) else { return Declared::NeedMore };
        let value = field.iter().rev().fold(0u64, |v, b| v << 8 | u64::from(*b));
        if fcs == 2 {
            value + 256
        } else {
            value
        }
    };
    // A declared content size past 2^63 has no next power of two: saturate, so the charge
    // is over any limit (found by the `declared` fuzz target; it overflowed before).
    let window = window.max(1 << 10).checked_next_power_of_two().unwrap_or(u64::MAX);
    Declared::Bytes(window.saturating_add(OVERHEAD))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn xz_with(options: xz2::stream::LzmaOptions, data: &[u8]) -> Vec<u8> {
        let mut filters = xz2::stream::Filters::new();
        filters.lzma2(&options);
        let stream = xz2::stream::Stream::new_stream_encoder(&filters, xz2::stream::Check::Crc64).unwrap();
        let mut enc = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[track_caller]
    fn check(compression: Compression, bytes: &[u8], expected: Declared) {
        assert_eq!(declared_memory(compression, bytes), expected);
        // Any shorter prefix says "more", never a wrong answer.
        for n in [0, 3, 5] {
            let got = declared_memory(compression, &bytes[..n.min(bytes.len())]);
            assert!(matches!(got, Declared::NeedMore | Declared::Unknown), "{n} bytes: {got:?}");
        }
    }

    #[test]
    fn xz_dictionaries() {
        let data = vec![7u8; 1000];
        for (preset, dict) in [(0, 256 << 10), (6, 8 << 20), (9, 64 << 20)] {
            let xz = xz_with(xz2::stream::LzmaOptions::new_preset(preset).unwrap(), &data);
            check(Compression::Xz, &xz, Declared::Bytes(dict + OVERHEAD));
        }
        let mut odd = xz2::stream::LzmaOptions::new_preset(6).unwrap();
        odd.dict_size(3 << 20);
        check(Compression::Xz, &xz_with(odd, &data), Declared::Bytes((3 << 20) + OVERHEAD));
        let mut huge = xz_with(xz2::stream::LzmaOptions::new_preset(0).unwrap(), &data);
        huge[16] = 40;
        check(Compression::Xz, &huge, Declared::Bytes(u64::from(u32::MAX) + OVERHEAD));
        assert_eq!(declared_memory(Compression::Xz, &huge[..14]), Declared::NeedMore);
        assert_eq!(declared_memory(Compression::Xz, b"garbage, not xz at all"), Declared::Unknown);
    }

    #[test]
    fn zstd_windows() {
        let data = vec![7u8; 100_000];
        // Streamed (no content size): the window descriptor.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.window_log(21).unwrap();
        enc.write_all(&data).unwrap();
        check(Compression::Zstd, &enc.finish().unwrap(), Declared::Bytes((2 << 20) + OVERHEAD));
        // One shot (content size known, single segment): the content size, rounded up.
        let one_shot = zstd::bulk::compress(&data, 3).unwrap();
        check(Compression::Zstd, &one_shot, Declared::Bytes((128 << 10) + OVERHEAD));
        let mut bomb = zstd::encode_all(&data[..], 1).unwrap();
        bomb[5] = (27 - 10) << 3;
        check(Compression::Zstd, &bomb, Declared::Bytes((128 << 20) + OVERHEAD));
        // Regression (fuzz target `declared`): a single-segment frame declaring a content
        // size past 2^63 overflowed; it is charged everything.
        let mut huge = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
        huge.extend_from_slice(&[0xff; 8]);
        check(Compression::Zstd, &huge, Declared::Bytes(u64::MAX));
        huge[12] = 0x80; // 2^63 + …: still no power of two above it
        check(Compression::Zstd, &huge, Declared::Bytes(u64::MAX));
        assert_eq!(declared_memory(Compression::Zstd, b"nope, not zstd"), Declared::Unknown);
    }

    /// Fuzz target `declared`: any prefix; the answer depends on the first `PEEK_BYTES`
    /// only, and "need more" only while fewer have arrived.
    #[test]
    fn fuzz_declared() {
        crate::fuzz::run("declared", |bytes| {
            for c in [Compression::None, Compression::Xz, Compression::Zstd] {
                let d = declared_memory(c, bytes);
                let peeked = bytes.get(..PEEK_BYTES).unwrap_or(bytes);
                assert_eq!(declared_memory(c, peeked), d, "{c:?}");
                if d == Declared::NeedMore {
                    assert!(bytes.len() < PEEK_BYTES, "{c:?}: need more after {} bytes", bytes.len());
                }
            }
        });
    }
}
