//! A store path's NAR, compressed with zstd on every core, as a stream of ~256 KiB chunks:
//! a blocking thread serialises and compresses, a bounded channel carries the chunks. At
//! most `DEPTH` chunks wait in between, so memory stays bounded however large the NAR. Used
//! by the `berth push` client (request bodies) and by the builder (ingest after a build).
//!
//! ```text
//! dump_path -> BufWriter -> count NAR bytes -> zstd -> ChannelWriter ==mpsc==> stream
//! ```

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::nixfmt::NarWriter;

/// Size of the chunks the stream yields.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the compressor and the consumer.
const DEPTH: usize = 8;

/// One chunk of the compressed NAR; an error item means the NAR is incomplete.
pub type Chunk = io::Result<Bytes>;

/// Bytes produced so far, across all uploads, for progress reports.
#[derive(Debug, Default)]
pub struct Counters {
    /// Uncompressed NAR bytes serialised.
    pub nar: AtomicU64,
    /// Compressed bytes handed to the HTTP client.
    pub compressed: AtomicU64,
}

/// How the NAR side of a stream ended badly.
#[derive(Debug)]
pub enum DumpFailure {
    /// The request side went away first (the server answered, or the request failed): the
    /// request's own outcome says why.
    Cancelled,
    /// Reading or compressing the path failed; the body was aborted.
    Failed(String),
}

/// Starts dumping and compressing `path` on a blocking thread. The stream yields the
/// compressed NAR; the handle says how it ended (the compressed size, or why not).
pub fn compressed_nar(
    path: PathBuf,
    level: i32,
    counters: Arc<Counters>,
) -> (impl Stream<Item = Chunk> + Send + Unpin + 'static, JoinHandle<Result<u64, DumpFailure>>) {
    let (tx, mut rx) = mpsc::channel::<Chunk>(DEPTH);
    let handle = tokio::task::spawn_blocking(move || stream_nar(&path, level, tx, &counters));
    (futures::stream::poll_fn(move |cx| rx.poll_recv(cx)), handle)
}

/// Runs on a blocking thread: writes the compressed NAR of `path` into `tx` and returns the
/// compressed size. On failure the body stream gets an error item, so the request is aborted
/// rather than ended cleanly with a truncated NAR.
pub(crate) fn stream_nar(
    path: &Path,
    level: i32,
    tx: mpsc::Sender<Chunk>,
    counters: &Counters,
) -> Result<u64, DumpFailure> {
    let abort = tx.clone();
    let fail = |reason: String| {
        if abort.is_closed() {
            return DumpFailure::Cancelled;
        }
        let _ = abort.blocking_send(Err(io::Error::other(reason.clone())));
        DumpFailure::Failed(reason)
    };
    let sink = ChannelWriter { tx, buf: BytesMut::with_capacity(CHUNK), sent: 0, counters };
    let mut encoder = zstd::stream::write::Encoder::new(sink, level).map_err(|e| fail(format!("zstd: {e}")))?;
    // Compress on every core: a large NAR otherwise leaves all but one idle.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    encoder.multithread(workers).map_err(|e| fail(format!("zstd workers: {e}")))?;
    let mut nar = BufWriter::with_capacity(CHUNK, Counting { inner: encoder, counters });
    dump_path(path, &mut nar).map_err(|e| fail(e.to_string()))?;
    let mut encoder = nar.into_inner().map_err(|e| fail(e.error().to_string()))?.inner;
    encoder.do_finish().map_err(|e| fail(format!("zstd: {e}")))?;
    let sink = encoder.get_mut();
    sink.send_buffered().map_err(|e| fail(e.to_string()))?;
    Ok(sink.sent)
}

/// Counts the uncompressed NAR bytes on their way to the compressor.
struct Counting<'a, W> {
    inner: W,
    counters: &'a Counters,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.counters.nar.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The blocking end of the body channel: collects compressed bytes into `CHUNK`-sized
/// `Bytes` and sends them, waiting while the channel is full.
struct ChannelWriter<'a> {
    tx: mpsc::Sender<Chunk>,
    buf: BytesMut,
    sent: u64,
    counters: &'a Counters,
}

impl ChannelWriter<'_> {
    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        let len = chunk.len() as u64;
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload request ended"))?;
        self.buf.reserve(CHUNK);
        self.sent += len;
        self.counters.compressed.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }
}

impl Write for ChannelWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() >= CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    /// Flushing does not send a short chunk: only [`ChannelWriter::send_buffered`] at the end
    /// does, so every chunk but the last is `CHUNK` bytes.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the NAR serialisation of a filesystem path into `w`, as `nix-store --dump` does:
/// entries sorted by their bytes, the owner's execute bit as `executable`, symlinks as they
/// are. Iterative: one frame per open directory (its sorted names, read at once so no
/// directory handle stays open), so a path thousands of levels deep costs no stack.
pub fn dump_path(path: &Path, w: impl Write) -> io::Result<()> {
    struct Frame {
        dir: PathBuf,
        names: std::vec::IntoIter<(Vec<u8>, std::ffi::OsString)>,
    }
    let mut nar = NarWriter::new(w)?;
    let mut stack: Vec<Frame> = Vec::new();
    let mut next = Some(path.to_owned());
    loop {
        if let Some(node) = next.take() {
            let meta = std::fs::symlink_metadata(&node).map_err(|e| at(&node, e))?;
            if meta.is_dir() {
                nar.directory()?;
                stack.push(Frame { names: sorted_names(&node)?.into_iter(), dir: node });
            } else {
                leaf(&mut nar, &node, &meta)?;
                if !stack.is_empty() {
                    nar.close()?; // the entry around it
                }
            }
        }
        let Some(top) = stack.last_mut() else { return Ok(()) };
        match top.names.next() {
            Some((name, on_disk)) => {
                nar.entry(&name)?;
                next = Some(top.dir.join(on_disk));
            }
            None => {
                stack.pop();
                nar.close()?; // the directory node
                if !stack.is_empty() {
                    nar.close()?; // the entry around it
                }
            }
        }
    }
}

/// A regular file or symlink.
fn leaf<W: Write>(nar: &mut NarWriter<W>, node: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    use std::os::unix::{ffi::OsStrExt, fs::PermissionsExt};
    if meta.is_symlink() {
        let target = std::fs::read_link(node).map_err(|e| at(node, e))?;
        nar.symlink(target.as_os_str().as_bytes())
    } else if meta.is_file() {
        let file = std::fs::File::open(node).map_err(|e| at(node, e))?;
        nar.regular(meta.permissions().mode() & 0o100 != 0, meta.len(), file).map_err(|e| at(node, e))
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidData, format!("{}: not a file, directory or symlink", node.display())))
    }
}

/// A directory's entries as (NAR name, name on disk), sorted by the NAR name's bytes. On
/// macOS, Nix's case hack (`name~nix~case~hack~N` on disk for names that differ only in
/// case) is undone, as Nix does by default there.
fn sorted_names(dir: &Path) -> io::Result<Vec<(Vec<u8>, std::ffi::OsString)>> {
    use std::os::unix::ffi::OsStrExt;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| at(dir, e))? {
        let on_disk = entry.map_err(|e| at(dir, e))?.file_name();
        let mut name = on_disk.as_bytes().to_vec();
        if cfg!(target_os = "macos") {
            const SUFFIX: &[u8] = b"~nix~case~hack~";
            if let Some(at) = name.windows(SUFFIX.len()).position(|w| w == SUFFIX) {
                name.truncate(at);
            }
        }
        names.push((name, on_disk));
    }
    names.sort();
    if names.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{}: file name collision", dir.display())));
    }
    Ok(names)
}

/// `e` with the path it happened at.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `stream_nar` on a blocking thread and collects what reaches the body.
    async fn stream(path: PathBuf) -> (Result<u64, DumpFailure>, Vec<Chunk>) {
        let (tx, mut rx) = mpsc::channel(DEPTH);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let handle = tokio::task::spawn_blocking(move || stream_nar(&path, 3, tx, &c));
        let mut chunks = Vec::new();
        while let Some(chunk) = rx.recv().await {
            chunks.push(chunk);
        }
        (handle.await.unwrap(), chunks)
    }

    #[tokio::test]
    async fn streams_the_compressed_nar_of_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big");
        // Incompressible-ish content spanning several chunks.
        let content: Vec<u8> = (0..3 * CHUNK as u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        std::fs::write(&file, &content).unwrap();
        let (result, chunks) = stream(file.clone()).await;
        let compressed: Vec<u8> = chunks.into_iter().flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(result.ok(), Some(compressed.len() as u64));
        let mut expected = Vec::new();
        dump_path(&file, &mut expected).unwrap();
        assert_eq!(zstd::decode_all(&compressed[..]).unwrap(), expected);
    }

    /// The dump of a tree 300 directories deep, with executables, symlinks, an empty
    /// directory and names that sort by bytes, is byte for byte what `nix-store --dump`
    /// writes, and the reader accepts it.
    #[test]
    fn dumps_as_nix_store_does_at_any_depth() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let mut deep = root.clone();
        for _ in 0..300 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::create_dir(root.join("empty")).unwrap();
        for (name, mode) in [("B", 0o644), ("a", 0o755), ("é", 0o744), ("z", 0o600)] {
            std::fs::write(deep.join(name), name).unwrap();
            std::fs::set_permissions(deep.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::os::unix::fs::symlink("../../d/a", deep.join("link")).unwrap();
        let mut ours = Vec::new();
        dump_path(&root, &mut ours).unwrap();
        let nix = std::process::Command::new("nix-store").arg("--dump").arg(&root).output().expect("nix-store on PATH");
        assert!(nix.status.success(), "{}", String::from_utf8_lossy(&nix.stderr));
        assert!(ours == nix.stdout, "our dump differs from nix-store --dump");
        let shape = crate::nixfmt::read_nar(&ours[..], &mut io::sink()).unwrap();
        assert_eq!(shape.depth, 301);
    }

    #[tokio::test]
    async fn a_failed_dump_aborts_the_body() {
        let (result, chunks) = stream(PathBuf::from("/nonexistent/berth-test")).await;
        assert!(matches!(result, Err(DumpFailure::Failed(_))));
        assert!(chunks.last().is_some_and(|c| c.is_err()));
    }
}
