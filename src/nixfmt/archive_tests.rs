//! The NAR reader against hand-made archives (one table of refusals) and against
//! `nix-archive`'s decoder, which it replaces, on every archive within that crate's depth.

use super::*;

/// A NAR built token by token.
fn nar(tokens: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in tokens {
        token(&mut out, t).unwrap();
    }
    out
}

/// A NAR of `levels` nested directories around one file.
fn nested(levels: usize) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new()).unwrap();
    for level in 0..levels {
        if level > 0 {
            w.entry(b"d").unwrap();
        }
        w.directory().unwrap();
    }
    w.entry(b"f").unwrap();
    w.regular(false, 1, &b"x"[..]).unwrap();
    w.close().unwrap();
    for level in 0..levels {
        w.close().unwrap();
        if level + 1 < levels {
            w.close().unwrap();
        }
    }
    w.into_inner()
}

fn read(bytes: &[u8]) -> Result<NarShape, NarError> {
    read_nar(bytes, &mut io::sink())
}

#[track_caller]
fn check(tokens: &[&[u8]], expected: &str) {
    let got = match read(&nar(tokens)) {
        Ok(shape) => format!("ok {} nodes", shape.nodes),
        Err(e) => e.to_string(),
    };
    assert_eq!(got, expected, "{tokens:?}");
}

const M: &[u8] = b"nix-archive-1";

#[test]
fn table() {
    let file: &[&[u8]] = &[b"(", b"type", b"regular", b"contents", b"hi", b")"];
    check(&[&[M], file].concat(), "ok 1 nodes");
    check(&[M, b"(", b"type", b"regular", b"executable", b"", b"contents", b"", b")"], "ok 1 nodes");
    check(&[M, b"(", b"type", b"symlink", b"target", b"../x", b")"], "ok 1 nodes");
    check(&[M, b"(", b"type", b"directory", b")"], "ok 1 nodes");
    let entry = |name: &'static [u8]| -> Vec<&'static [u8]> {
        vec![b"entry", b"(", b"name", name, b"node", b"(", b"type", b"regular", b"contents", b"", b")", b")"]
    };
    let dir = |names: &[&'static [u8]]| -> Vec<&'static [u8]> {
        let mut t: Vec<&[u8]> = vec![M, b"(", b"type", b"directory"];
        for n in names {
            t.extend(entry(n));
        }
        t.push(b")");
        t
    };
    check(&dir(&[b"a", b"b"]), "ok 3 nodes");
    check(&dir(&[b"b", b"a"]), "entry \"a\" does not sort after \"b\" (entries must be sorted and unique)");
    check(&dir(&[b"a", b"a"]), "entry \"a\" does not sort after \"a\" (entries must be sorted and unique)");
    for bad in [&b"."[..], b"..", b"", b"a/b", b"a\0"] {
        assert!(matches!(read(&nar(&dir(&[bad]))), Err(NarError::InvalidName(_))), "{bad:?}");
    }
    check(&[b"nix-archive-2"], "not a NAR (no nix-archive-1 magic)");
    check(&[M, b"(", b"type", b"fifo", b")"], "expected regular, symlink or directory, found fifo");
    check(&[M, b"(", b"type", b"regular", b"executable", b"x"], "expected , found x");
    check(&[M, b"(", b"type", b"regular", b"contents", b"hi"], "truncated archive");
    check(&[&[M], file, &[b"more"]].concat(), "trailing bytes after the archive");
    check(&[M, b"(", b"type", b"directory", b"entries"], "expected entry or ), found entries");
    // A declared size of 2^63 is a truncation, not an allocation.
    let mut huge = nar(&[M, b"(", b"type", b"regular", b"contents"]);
    huge.extend_from_slice(&(1u64 << 63).to_le_bytes());
    assert!(matches!(read(&huge), Err(NarError::Truncated)));
    let mut long_name = nar(&[M, b"(", b"type", b"directory", b"entry", b"(", b"name"]);
    long_name.extend_from_slice(&(1u64 << 63).to_le_bytes());
    assert!(matches!(read(&long_name), Err(NarError::TooLong { .. })));
    let mut padded = nar(&[&[M], file].concat());
    let at = padded.len() - 16 - 6; // the padding after "hi"
    padded[at] = 1;
    assert!(matches!(read(&padded), Err(NarError::BadPadding)));
}

#[test]
fn nesting_is_bounded_without_recursion() {
    let shape = read(&nested(MAX_NAR_DEPTH)).unwrap();
    assert_eq!(shape.depth, MAX_NAR_DEPTH);
    assert!(matches!(read(&nested(MAX_NAR_DEPTH + 1)), Err(NarError::TooDeep)));
    // Deeper still, on a small stack: nothing recurses.
    std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(|| assert!(matches!(read(&nested(100_000)), Err(NarError::TooDeep))))
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn open_names_are_bounded() {
    let name = vec![b'n'; MAX_NAME_BYTES];
    let mut w = NarWriter::new(Vec::new()).unwrap();
    let levels = MAX_OPEN_NAME_BYTES / MAX_NAME_BYTES + 1;
    for _ in 0..levels {
        w.directory().unwrap();
        w.entry(&name).unwrap();
    }
    let err = read(&w.into_inner()).unwrap_err();
    assert!(matches!(err, NarError::TooLong { limit: MAX_OPEN_NAME_BYTES, .. }), "{err}");
}

/// Whether `nix-archive` (the decoder this one replaces) accepts `bytes`, where its own
/// depth and size limits do not decide.
pub(crate) fn crate_accepts(bytes: &[u8]) -> Option<bool> {
    use nix_archive::nar::{decode_events_reader, Error, ReadEvent};
    let mut r = bytes;
    match decode_events_reader(&mut r, |event| {
        if let ReadEvent::Regular { mut contents, .. } = event {
            contents.copy_to(&mut io::sink())?;
        }
        Ok(())
    }) {
        Ok(()) => Some(true),
        Err(Error::MaxDepth(_) | Error::TokenTooLarge { .. }) => None,
        Err(_) => Some(false),
    }
}

#[test]
fn agrees_with_nix_archive() {
    let file: &[&[u8]] = &[b"(", b"type", b"regular", b"contents", b"hi", b")"];
    let good = nar(&[&[M], file].concat());
    let deep = nested(10);
    for bytes in [good.clone(), deep.clone(), good[..good.len() - 1].to_vec(), deep[..deep.len() / 2].to_vec()] {
        assert_eq!(crate_accepts(&bytes), Some(read(&bytes).is_ok()), "{bytes:?}");
    }
}

/// Fuzz target `nar`: any bytes; the reader never panics, agrees with `nix-archive`
/// wherever that crate's own limits do not decide, and `verify_nar` hashes exactly the
/// bytes it accepted.
#[test]
fn fuzz_nar() {
    use crate::nixfmt::{verify_nar, Compression, DecoderLimit};
    crate::fuzz::run("nar", |bytes| {
        let ours = read(bytes);
        let bounded = matches!(ours, Err(NarError::TooDeep | NarError::TooLong { .. }));
        if let (Some(theirs), false) = (crate_accepts(bytes), bounded) {
            assert_eq!(ours.is_ok(), theirs, "nix-archive disagrees: ours {ours:?}");
        }
        let verified = verify_nar(bytes, Compression::None, DecoderLimit::from_mib(32));
        assert_eq!(verified.is_ok(), ours.is_ok(), "{verified:?}");
        if let Ok((nar, file)) = verified {
            assert_eq!((nar.size, file.size), (bytes.len() as u64, bytes.len() as u64));
        }
        // Through the zstd decoder, as the push API and `berth push` send NARs: the same
        // verdict, the same NAR digest.
        let zst = zstd::encode_all(bytes, 1).unwrap();
        let through = verify_nar(&zst[..], Compression::Zstd, DecoderLimit::from_mib(32));
        assert_eq!(through.as_ref().map(|(n, _)| *n).ok(), verified.as_ref().map(|(n, _)| *n).ok());
    });
}

/// The NARs `nix-store --dump` wrote (the `dump-*` seeds) are valid, whatever their depth.
#[test]
fn nix_store_dumps_are_valid() {
    let dumps: Vec<_> = crate::fuzz::corpus("nar")
        .into_iter()
        .filter(|(p, _)| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("dump-")))
        .collect();
    assert!(dumps.len() >= 3);
    for (path, bytes) in dumps {
        read(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
