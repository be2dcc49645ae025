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

use crate::nixfmt::dump_path;

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

    #[tokio::test]
    async fn a_failed_dump_aborts_the_body() {
        let (result, chunks) = stream(PathBuf::from("/nonexistent/berth-test")).await;
        assert!(matches!(result, Err(DumpFailure::Failed(_))));
        assert!(chunks.last().is_some_and(|c| c.is_err()));
    }
}
