//! NAR verification and dumping, synchronous and streaming: run on a blocking thread, fed by
//! a `Read` whose bytes arrive from the network. Memory is bounded by buffers, never by the
//! size of the archive.

use std::io::{self, BufReader, Read};

use sha2::{Digest, Sha256};

use super::archive::{read_nar, NarError};
use super::Compression;

/// The SHA-256 and length of a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarDigest {
    /// SHA-256 of every byte.
    pub sha256: [u8; 32],
    /// Number of bytes.
    pub size: u64,
}

/// Why a NAR stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The compressed stream could not be decompressed.
    #[error("cannot decompress the {compression} stream: {source}")]
    Decompress {
        /// The compression the client declared.
        compression: &'static str,
        /// What the decompressor said.
        source: io::Error,
    },
    /// The decompressed bytes are not a valid NAR.
    #[error("not a valid NAR: {0}")]
    Malformed(NarError),
    /// Reading the stream failed (the client went away, the body was cut).
    #[error("upload stream failed: {0}")]
    Read(io::Error),
    /// The stream declares a dictionary (xz) or window (zstd) that needs more memory than
    /// one decoder may use: a decompression bomb, or a client that compressed with
    /// settings the server does not accept.
    #[error(
        "the {compression} stream needs more decoder memory than allowed (at most {limit_mib} MiB, \
         [cache] max_decoder_memory_mib, and no more than its first block or frame declares); \
         compress with a smaller dictionary or window"
    )]
    DecoderMemory {
        /// The compression the client declared.
        compression: &'static str,
        /// The limit, in MiB.
        limit_mib: u64,
    },
}

/// The most memory one decompressor may use: liblzma's memlimit for xz (which covers the
/// dictionary every block header declares), and for zstd the largest power-of-two window
/// that leaves 1 MiB for the decoder's own buffers. Streams that ask for more are refused
/// before anything is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderLimit {
    /// What this decoder is held to.
    bytes: u64,
    /// The configured maximum, for messages.
    max_mib: u64,
}

impl DecoderLimit {
    /// A limit of `mib` MiB.
    pub const fn from_mib(mib: u64) -> Self {
        Self { bytes: mib << 20, max_mib: mib }
    }

    /// This limit lowered to `mib` MiB (the share of the budget a decoder was given); never
    /// raised.
    pub fn lowered_to(self, mib: u64) -> Self {
        Self { bytes: (mib << 20).min(self.bytes), max_mib: self.max_mib }
    }

    /// The configured maximum in MiB.
    pub fn mib(self) -> u64 {
        self.max_mib
    }

    /// The xz memlimit in bytes.
    fn xz_memlimit(self) -> u64 {
        self.bytes
    }

    /// zstd's `window_log_max`: the largest power-of-two window that leaves 1 MiB of the
    /// limit, within zstd's own bounds (2^10 to 2^31).
    fn zstd_window_log(self) -> u32 {
        let window = self.bytes.saturating_sub(1 << 20).max(1);
        (63 - window.leading_zeros()).clamp(10, 31)
    }
}

/// A reader that hashes and counts everything read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new(), size: 0 }
    }

    fn finish(self) -> NarDigest {
        NarDigest { sha256: self.hasher.finalize().into(), size: self.size }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Reads a compressed NAR to its end and returns `(nar digest, file digest)`: the SHA-256
/// and size of the decompressed NAR (what `NarHash`/`NarSize` claim) and of the bytes as
/// stored (`FileHash`/`FileSize`). The NAR grammar is checked on the way, so a hostile or
/// truncated archive is refused, never stored.
///
/// No decoder uses more memory than `limit`: a stream that asks for more is refused with
/// [`VerifyError::DecoderMemory`].
pub fn verify_nar(
    reader: impl Read,
    compression: Compression,
    limit: DecoderLimit,
) -> Result<(NarDigest, NarDigest), VerifyError> {
    let mut file = Hashing::new(reader);
    let nar = {
        let decoder = decoder(&mut file, compression, limit)?;
        let mut nar = BufReader::with_capacity(256 * 1024, Hashing::new(decoder));
        read_nar(&mut nar, &mut io::sink()).map_err(|e| classify(e, compression, limit))?;
        nar.into_inner().finish()
    };
    // Whatever follows the compressed frame still counts towards the file's hash and size.
    io::copy(&mut file, &mut io::sink()).map_err(VerifyError::Read)?;
    Ok((nar, file.finish()))
}

/// The decompressor for `compression`, limited to `limit`.
fn decoder<'a>(
    file: &'a mut impl Read,
    compression: Compression,
    limit: DecoderLimit,
) -> Result<Box<dyn Read + 'a>, VerifyError> {
    let decompress_err = |source| VerifyError::Decompress { compression: compression.as_str(), source };
    Ok(match compression {
        Compression::None => Box::new(file),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(file).map_err(decompress_err)?;
            d.window_log_max(limit.zstd_window_log()).map_err(decompress_err)?;
            Box::new(d)
        }
        Compression::Xz => {
            // What `new_multi_decoder` does (concatenated streams, as `xz -T` writes them),
            // with a memory limit instead of none.
            let stream = xz2::stream::Stream::new_auto_decoder(limit.xz_memlimit(), xz2::stream::CONCATENATED)
                .map_err(|e| decompress_err(e.into()))?;
            Box::new(xz2::read::XzDecoder::new_stream(file, stream))
        }
    })
}

/// Whether a decompressor's error says the stream needs more memory than it may use.
fn over_memory_limit(e: &io::Error, compression: Compression) -> bool {
    match compression {
        Compression::None => false,
        Compression::Xz => {
            matches!(
                e.get_ref().and_then(|i| i.downcast_ref::<xz2::stream::Error>()),
                Some(xz2::stream::Error::MemLimit)
            )
        }
        Compression::Zstd => {
            // The zstd crate reports errors by their zstd names only.
            let code = zstd::zstd_safe::zstd_sys::ZSTD_ErrorCode::ZSTD_error_frameParameter_windowTooLarge as usize;
            e.to_string() == zstd::zstd_safe::get_error_name(0usize.wrapping_sub(code))
        }
    }
}

fn classify(e: NarError, compression: Compression, limit: DecoderLimit) -> VerifyError {
    match e {
        NarError::Io(io) if over_memory_limit(&io, compression) => {
            VerifyError::DecoderMemory { compression: compression.as_str(), limit_mib: limit.mib() }
        }
        NarError::Io(io) if io.kind() == io::ErrorKind::Other || io.kind() == io::ErrorKind::InvalidData => {
            VerifyError::Decompress { compression: compression.as_str(), source: io }
        }
        NarError::Io(io) => VerifyError::Read(io),
        other => VerifyError::Malformed(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix_archive::nar::{encode_tree, NamedNode, Node};
    use std::io::Write;

    const LIMIT: DecoderLimit = DecoderLimit::from_mib(32);

    fn sample_nar() -> Vec<u8> {
        let children = [
            NamedNode { name: b"bin", node: Node::Regular { executable: true, contents: b"#!/bin/sh\n" } },
            NamedNode { name: b"link", node: Node::Symlink { target: b"bin" } },
        ];
        let mut nar = Vec::new();
        encode_tree(&mut nar, &Node::Directory(&children)).unwrap();
        nar
    }

    fn sha(bytes: &[u8]) -> NarDigest {
        NarDigest { sha256: Sha256::digest(bytes).into(), size: bytes.len() as u64 }
    }

    #[test]
    fn verifies_each_compression() {
        let nar = sample_nar();
        let zst = zstd::encode_all(&nar[..], 3).unwrap();
        let mut xz = Vec::new();
        xz2::write::XzEncoder::new(&mut xz, 6).write_all(&nar).unwrap();
        for (file, compression) in [(&nar, Compression::None), (&zst, Compression::Zstd), (&xz, Compression::Xz)] {
            let (n, f) = verify_nar(&file[..], compression, LIMIT).unwrap();
            assert_eq!(n, sha(&nar), "{compression:?}");
            assert_eq!(f, sha(file), "{compression:?}");
        }
    }

    #[test]
    fn refuses_truncated_and_corrupt_archives() {
        let nar = sample_nar();
        assert!(matches!(verify_nar(&nar[..nar.len() - 8], Compression::None, LIMIT), Err(VerifyError::Malformed(_))));
        let mut bad = nar.clone();
        bad[0] ^= 1;
        assert!(matches!(verify_nar(&bad[..], Compression::None, LIMIT), Err(VerifyError::Malformed(_))));
        let zst = zstd::encode_all(&nar[..], 3).unwrap();
        assert!(verify_nar(&zst[..zst.len() / 2], Compression::Zstd, LIMIT).is_err());
        assert!(verify_nar(&b"garbage"[..], Compression::Xz, LIMIT).is_err());
    }

    #[test]
    fn zstd_windows_leave_a_mib() {
        for (mib, log) in [(32, 24), (16, 23), (33, 25), (64, 25), (3, 21), (9, 23), (0, 10), (1 << 20, 31)] {
            assert_eq!(DecoderLimit::from_mib(mib).zstd_window_log(), log, "{mib} MiB");
        }
        let share = DecoderLimit::from_mib(32).lowered_to(3);
        assert_eq!((share.zstd_window_log(), share.mib()), (21, 32), "a share is smaller, messages name the maximum");
        assert_eq!(DecoderLimit::from_mib(32).lowered_to(64), DecoderLimit::from_mib(32), "never raised");
    }

    #[test]
    fn streams_that_need_more_than_the_limit_are_refused() {
        let nar = sample_nar();
        // xz preset 9 declares a 64 MiB dictionary; zstd window 2^25 is 32 MiB.
        let mut xz = Vec::new();
        xz2::write::XzEncoder::new(&mut xz, 9).write_all(&nar).unwrap();
        let mut zst = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        zst.window_log(25).unwrap();
        zst.write_all(&nar).unwrap();
        let zst = zst.finish().unwrap();
        for (file, compression) in [(&xz, Compression::Xz), (&zst, Compression::Zstd)] {
            let err = verify_nar(&file[..], compression, LIMIT).unwrap_err();
            assert!(matches!(err, VerifyError::DecoderMemory { limit_mib: 32, .. }), "{compression:?}: {err}");
            assert!(verify_nar(&file[..], compression, DecoderLimit::from_mib(128)).is_ok(), "{compression:?}");
        }
    }
}
