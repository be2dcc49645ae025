//! NAR verification and dumping, synchronous and streaming: run on a blocking thread, fed by
//! a `Read` whose bytes arrive from the network. Memory is bounded by buffers, never by the
//! size of the archive.

use std::io::{self, BufReader, Read, Write};

use nix_archive::nar::{decode_events_reader, encode_path, CaseHack, ReadEvent};
use sha2::{Digest, Sha256};

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
    Malformed(String),
    /// Reading the stream failed (the client went away, the body was cut).
    #[error("upload stream failed: {0}")]
    Read(io::Error),
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
pub fn verify_nar(reader: impl Read, compression: Compression) -> Result<(NarDigest, NarDigest), VerifyError> {
    let mut file = Hashing::new(reader);
    let nar = {
        let decompress_err = |source| VerifyError::Decompress { compression: compression.as_str(), source };
        let decoder: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut file),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(&mut file).map_err(decompress_err)?),
            Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(&mut file)),
        };
        let mut nar = BufReader::with_capacity(256 * 1024, Hashing::new(decoder));
        decode_events_reader(&mut nar, |event| {
            if let ReadEvent::Regular { mut contents, .. } = event {
                contents.copy_to(&mut io::sink())?;
            }
            Ok(())
        })
        .map_err(|e| classify(e, compression))?;
        nar.into_inner().finish()
    };
    // Whatever follows the compressed frame still counts towards the file's hash and size.
    io::copy(&mut file, &mut io::sink()).map_err(VerifyError::Read)?;
    Ok((nar, file.finish()))
}

fn classify(e: nix_archive::nar::Error, compression: Compression) -> VerifyError {
    match e {
        nix_archive::nar::Error::Io(io)
            if io.kind() == io::ErrorKind::Other || io.kind() == io::ErrorKind::InvalidData =>
        {
            VerifyError::Decompress { compression: compression.as_str(), source: io }
        }
        nix_archive::nar::Error::Io(io) => VerifyError::Read(io),
        other => VerifyError::Malformed(other.to_string()),
    }
}

/// Writes the NAR serialisation of a filesystem path (as `nix-store --dump` does) into `w`.
pub fn dump_path(path: &std::path::Path, w: &mut impl Write) -> Result<(), VerifyError> {
    encode_path(w, path, CaseHack::native()).map_err(|e| VerifyError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix_archive::nar::{encode_tree, NamedNode, Node};

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
            let (n, f) = verify_nar(&file[..], compression).unwrap();
            assert_eq!(n, sha(&nar), "{compression:?}");
            assert_eq!(f, sha(file), "{compression:?}");
        }
    }

    #[test]
    fn refuses_truncated_and_corrupt_archives() {
        let nar = sample_nar();
        assert!(matches!(verify_nar(&nar[..nar.len() - 8], Compression::None), Err(VerifyError::Malformed(_))));
        let mut bad = nar.clone();
        bad[0] ^= 1;
        assert!(matches!(verify_nar(&bad[..], Compression::None), Err(VerifyError::Malformed(_))));
        let zst = zstd::encode_all(&nar[..], 3).unwrap();
        assert!(verify_nar(&zst[..zst.len() / 2], Compression::Zstd).is_err());
        assert!(verify_nar(&b"garbage"[..], Compression::Xz).is_err());
    }
}
