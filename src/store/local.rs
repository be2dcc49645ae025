//! Local-directory helpers: large reads straight from the file, and fsync of written
//! objects (a local directory is durable only once the file and its directory are synced).

use std::{ops::Range, path::PathBuf};

use bytes::Bytes;
use futures::StreamExt;

use super::{ByteRange, ObjectBody, StoreError};

/// Makes a written file durable (the file, then its directory).
pub(super) async fn sync(file: PathBuf) -> Result<(), StoreError> {
    tokio::task::spawn_blocking(move || {
        std::fs::File::open(&file)?.sync_all()?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok::<_, std::io::Error>(())
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))??;
    Ok(())
}

/// Deletes every file in the staging directory. A local multipart upload stages as
/// `tmp/<uuid>#<n>`, which object_store's listing hides: sweep the directory itself.
pub(super) async fn sweep(dir: PathBuf) -> Result<usize, StoreError> {
    let removed = tokio::task::spawn_blocking(move || {
        let mut removed = 0;
        for entry in std::fs::read_dir(&dir)? {
            std::fs::remove_file(entry?.path())?;
            removed += 1;
        }
        Ok::<_, std::io::Error>(removed)
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))??;
    Ok(removed)
}

/// The bytes `range` selects in an object of `size` bytes.
fn resolve(range: Option<ByteRange>, size: u64) -> Result<Range<u64>, StoreError> {
    let r = match range {
        None => 0..size,
        Some(ByteRange::From { start, end }) => start..end.map_or(size, |e| e.saturating_add(1).min(size)),
        Some(ByteRange::Suffix(n)) => size.saturating_sub(n)..size,
    };
    if range.is_some() && r.start >= size {
        return Err(StoreError::Range);
    }
    Ok(r)
}

/// Bytes read per chunk: below glibc's mmap threshold (1 MiB, set in `main.rs`), so a buffer
/// is never a mapping of its own (a page fault per page, every chunk), and small enough that
/// 16 concurrent downloads hold a few MiB.
const CHUNK: usize = 128 << 10;
/// Chunks queued between the reading thread and the socket.
const QUEUED: usize = 1;
/// Buffers a download keeps for reuse: one being read, one queued, about two in hyper's
/// write queue.
const POOLED: usize = 4;

/// A chunk on its way to the socket: its buffer goes back to the reading thread when hyper
/// has written it, so a download reuses a few buffers instead of allocating (and zeroing)
/// one per chunk.
struct Pooled {
    buf: Vec<u8>,
    len: usize,
    home: std::sync::mpsc::SyncSender<Vec<u8>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // A full pool or a finished download: the buffer is simply freed.
        let _ = self.home.try_send(std::mem::take(&mut self.buf));
    }
}

/// Large sequential reads straight from the file on a blocking thread, into a few reused
/// buffers that are sent as they are: object_store's local reader hands out 8 KiB chunks,
/// one blocking-pool trip each, and tokio's file reader copies every chunk once more.
pub(super) async fn get_local(path: PathBuf, range: Option<ByteRange>) -> Result<Option<ObjectBody>, StoreError> {
    use std::io::{Read, Seek};
    let opened = tokio::task::spawn_blocking(move || match std::fs::File::open(&path) {
        Ok(file) => file.metadata().map(|m| Some((file, m.len()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))??;
    let Some((mut file, size)) = opened else { return Ok(None) };
    let range = resolve(range, size)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, StoreError>>(QUEUED);
    let (start, mut remaining) = (range.start, range.end - range.start);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = file.seek(std::io::SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(e.into()));
            return;
        }
        let (home, pool) = std::sync::mpsc::sync_channel::<Vec<u8>>(POOLED);
        while remaining > 0 {
            // Zeroed once when made; a reused buffer is overwritten as it is.
            let mut buf = pool.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
            let want = remaining.min(CHUNK as u64) as usize;
            let chunk = match file.read(&mut buf[..want]) {
                Ok(0) => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => {
                    remaining -= n as u64;
                    Ok(Bytes::from_owner(Pooled { buf, len: n, home: home.clone() }))
                }
                Err(e) => Err(e.into()),
            };
            let failed = chunk.is_err();
            // The receiver is gone when the client went away: stop reading.
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
    Ok(Some(ObjectBody { range, size, stream }))
}
