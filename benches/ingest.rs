//! Micro-benchmark of the server's ingest hot path: `berth::nixfmt::verify_nar`, which every
//! upload (Nix's `PUT /nar/…` and `berth push`) runs over the whole NAR while it streams in:
//! decompress, SHA-256 of the compressed file and of the NAR, NAR grammar check.
//!
//! `cargo bench --bench ingest` (harness = false: plain `Instant` loops, no criterion).
//! Environment: `BENCH_NAR_MIB` (default 64) sets the NAR size, `BENCH_SECONDS` (default 2)
//! the minimum time spent on each case.
//!
//! Besides `verify_nar` for each compression it times the floors it cannot beat (SHA-256 of
//! the same bytes, zstd/xz decompression alone), so the overhead of the NAR parser and of
//! the glue shows as the gap between a `verify_nar` line and its floors. MB = 10^6 bytes;
//! throughput is of uncompressed NAR bytes unless the line says otherwise.

use std::hint::black_box;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use berth::dump::dump_path;
use berth::nixfmt::{verify_nar, Compression, DecoderLimit};

/// The server's default decoder limit.
const LIMIT: DecoderLimit = DecoderLimit::from_mib(32);
use nix_archive::nar::{encode_tree, NamedNode, Node};
use sha2::{Digest, Sha256};

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

/// File contents of a store-path-like tree: a mix of incompressible blobs (think compressed
/// assets, already-packed data) and repetitive text (scripts, headers, ELF string tables),
/// so that zstd and xz get about 2:1, as on typical NixOS closures.
fn contents(total: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x6265_7274_6862_656e);
    let mut files = Vec::new();
    let mut made = 0;
    let mut i = 0usize;
    while made < total {
        // Sizes from 1 KiB to 2 MiB, mostly small, like real store paths.
        let size = match i % 8 {
            0 => 2 << 20,
            1 | 2 => 256 << 10,
            3 | 4 => 16 << 10,
            _ => 1 << 10,
        }
        .min(total - made)
        .max(1);
        let mut buf = vec![0u8; size];
        // Alternate within each size class, so half the bytes are random and half text.
        if (i + i / 8) % 2 == 0 {
            rng.fill(&mut buf);
        } else {
            let words: [&[u8]; 8] = [
                b"export ",
                b"PATH=",
                b"/nix/store/",
                b"-glibc-2.37/lib ",
                b"if [ -e ",
                b"]; then\n",
                b"fi\n",
                b"  echo ",
            ];
            let mut pos = 0;
            while pos < size {
                let w = words[(rng.next() % 8) as usize];
                let n = w.len().min(size - pos);
                buf[pos..pos + n].copy_from_slice(&w[..n]);
                pos += n;
            }
        }
        made += size;
        files.push(buf);
        i += 1;
    }
    files
}

fn build_nar(files: &[Vec<u8>]) -> Vec<u8> {
    let names: Vec<String> = (0..files.len()).map(|i| format!("f{i:06}")).collect();
    let children: Vec<NamedNode<'_>> = files
        .iter()
        .zip(&names)
        .enumerate()
        .map(|(i, (c, name))| NamedNode {
            name: name.as_bytes(),
            node: Node::Regular { executable: i % 5 == 0, contents: c },
        })
        .collect();
    let lib = [NamedNode { name: b"lib", node: Node::Directory(&children) }];
    let mut nar = Vec::with_capacity(files.iter().map(Vec::len).sum::<usize>() + files.len() * 200);
    encode_tree(&mut nar, &Node::Directory(&lib)).expect("encode NAR");
    nar
}

/// Runs `f` until at least `min` has passed (and at least 3 times); returns the timings.
fn time(min: Duration, mut f: impl FnMut()) -> Vec<Duration> {
    f(); // warm-up: page faults, allocator, lazy tables
    let start = Instant::now();
    let mut runs = Vec::new();
    while runs.len() < 3 || start.elapsed() < min {
        let t = Instant::now();
        f();
        runs.push(t.elapsed());
    }
    runs
}

fn report(label: &str, bytes: usize, mut runs: Vec<Duration>) {
    runs.sort();
    let mbs = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    let median = runs[runs.len() / 2];
    println!(
        "{label:<44} {:>9.1} MB/s median {:>9.1} MB/s best  ({} runs, median {:.1} ms)",
        mbs(median),
        mbs(runs[0]),
        runs.len(),
        median.as_secs_f64() * 1e3
    );
}

fn main() {
    let mib: usize = std::env::var("BENCH_NAR_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let secs: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2.0);
    let min = Duration::from_secs_f64(secs);

    let files = contents(mib << 20);
    let nar = build_nar(&files);
    let zst = zstd::encode_all(&nar[..], 3).expect("zstd");
    let mut xz = Vec::new();
    {
        let mut enc = xz2::write::XzEncoder::new(&mut xz, 6);
        enc.write_all(&nar).expect("xz");
        enc.finish().expect("xz");
    }
    println!(
        "NAR: {} files, {:.1} MB; zstd -3: {:.1} MB; xz -6: {:.1} MB",
        files.len(),
        nar.len() as f64 / 1e6,
        zst.len() as f64 / 1e6,
        xz.len() as f64 / 1e6
    );

    // Sanity: every form verifies to the same NAR digest.
    let expect_nar: [u8; 32] = Sha256::digest(&nar).into();
    for (bytes, c) in [(&nar, Compression::None), (&zst, Compression::Zstd), (&xz, Compression::Xz)] {
        let (n, f) = verify_nar(&bytes[..], c, LIMIT).expect("verify");
        assert_eq!((n.sha256, n.size), (expect_nar, nar.len() as u64), "{c:?}");
        assert_eq!(f.size, bytes.len() as u64, "{c:?}");
    }

    // Floors.
    report(
        "floor: sha256 of the NAR",
        nar.len(),
        time(min, || {
            black_box(Sha256::digest(black_box(&nar[..])));
        }),
    );
    report(
        "floor: zstd decode to sink",
        nar.len(),
        time(min, || {
            zstd::stream::copy_decode(&zst[..], io::sink()).expect("zstd decode");
        }),
    );

    // The function under test.
    for (label, bytes, c) in
        [("verify_nar(none)", &nar, Compression::None), ("verify_nar(zstd)", &zst, Compression::Zstd)]
    {
        report(
            label,
            nar.len(),
            time(min, || {
                black_box(verify_nar(black_box(&bytes[..]), c, LIMIT).expect("verify"));
            }),
        );
    }
    report(
        "  same, as compressed input MB/s",
        zst.len(),
        time(min, || {
            black_box(verify_nar(black_box(&zst[..]), Compression::Zstd, LIMIT).expect("verify"));
        }),
    );

    // xz is an order of magnitude slower: fewer runs.
    let xz_min = min / 2;
    report(
        "floor: xz decode to sink",
        nar.len(),
        time(xz_min, || {
            let mut d = xz2::read::XzDecoder::new_multi_decoder(&xz[..]);
            io::copy(&mut d, &mut io::sink()).expect("xz decode");
        }),
    );
    report(
        "verify_nar(xz)",
        nar.len(),
        time(xz_min, || {
            black_box(verify_nar(black_box(&xz[..]), Compression::Xz, LIMIT).expect("verify"));
        }),
    );

    // The client side of `berth push` starts with dump_path: NAR serialisation of a
    // directory already in the page cache.
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, c) in files.iter().enumerate() {
        std::fs::write(dir.path().join(format!("f{i:06}")), c).expect("write");
    }
    let mut sink = CountingSink(0);
    dump_path(dir.path(), &mut sink).expect("dump");
    let dumped = sink.0 as usize;
    report(
        "dump_path of a directory (client side)",
        dumped,
        time(min, || {
            let mut sink = CountingSink(0);
            dump_path(dir.path(), &mut sink).expect("dump");
            black_box(sink.0);
        }),
    );
    let mut buf = Vec::new();
    report(
        "dump_path + zstd -3 (client side)",
        dumped,
        time(min, || {
            buf.clear();
            let mut enc = zstd::stream::write::Encoder::new(&mut buf, 3).expect("zstd");
            dump_path(dir.path(), &mut enc).expect("dump");
            enc.finish().expect("zstd");
        }),
    );
    let _ = io::stdout().flush();
    // Keep the compressed buffers alive to the end so no case measures a free.
    black_box((&zst, &xz));
}

/// A `Write` that only counts.
struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
