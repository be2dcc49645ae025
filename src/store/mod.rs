//! Object storage for NARs and narinfos, through `object_store`. The only module that
//! imports `object_store`. Writes are atomic (staged, then renamed) and, on a local
//! directory, durable (fsynced) before they return: the publication order of `ingest`
//! depends on it.

#[cfg(test)]
mod contract;
mod key;

use std::{ops::Range, path::PathBuf, sync::Arc};

use bytes::Bytes;
use futures::{stream::BoxStream, StreamExt, TryStreamExt};
use object_store::{
    local::LocalFileSystem, memory::InMemory, path::Path, GetOptions, GetRange, ObjectStore, PutPayload, WriteMultipart,
};

pub use key::ObjectKey;

/// Multipart part size: S3's minimum. With two parts in flight, an upload holds at most
/// ~10 MiB, however large the NAR.
const PART_SIZE: usize = 5 << 20;

/// Storage failures. Display texts are for logs; clients see "internal error".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage URL is not one berth understands.
    #[error("unsupported storage URL {0:?}: use file:///absolute/dir or memory://")]
    BadUrl(String),
    /// The requested range lies outside the object.
    #[error("requested range not satisfiable")]
    Range,
    /// The backend failed.
    #[error("object store: {0}")]
    Backend(#[from] object_store::Error),
    /// Local filesystem work (creating the root, fsync) failed.
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The object store with berth's key discipline. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// Set for a local directory: lets writes be fsynced.
    local_root: Option<PathBuf>,
}

/// An object's bytes (possibly a range of them) as a stream.
pub struct ObjectBody {
    /// The bytes served.
    pub range: Range<u64>,
    /// The whole object's size.
    pub size: u64,
    /// The bytes.
    pub stream: BoxStream<'static, Result<Bytes, StoreError>>,
}

/// A range request, as parsed from an HTTP `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` (inclusive end, as HTTP writes it) or `bytes=a-`.
    From {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: Option<u64>,
    },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

fn path(key: &ObjectKey) -> Path {
    Path::from(key.as_path())
}

impl Store {
    /// Opens `file:///dir` (created if missing) or `memory://` (tests).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        if url == "memory://" {
            return Ok(Self { inner: Arc::new(InMemory::new()), local_root: None });
        }
        let dir =
            url.strip_prefix("file://").filter(|d| d.starts_with('/')).ok_or_else(|| StoreError::BadUrl(url.into()))?;
        let root = PathBuf::from(dir);
        std::fs::create_dir_all(root.join("nar"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        let fs = LocalFileSystem::new_with_prefix(&root)?;
        Ok(Self { inner: Arc::new(fs), local_root: Some(root) })
    }

    /// Writes a small object atomically and durably.
    pub async fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<(), StoreError> {
        self.inner.put(&path(key), PutPayload::from_bytes(bytes)).await?;
        self.sync(key).await
    }

    /// Reads an object, or a range of it; `None` when it does not exist.
    pub async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<Option<ObjectBody>, StoreError> {
        if let Some(root) = &self.local_root {
            return get_local(root.join(key.as_path()), range).await;
        }
        let range = range.map(|r| match r {
            ByteRange::From { start, end: Some(end) } => GetRange::Bounded(start..end.saturating_add(1)),
            ByteRange::From { start, end: None } => GetRange::Offset(start),
            ByteRange::Suffix(n) => GetRange::Suffix(n),
        });
        let options = GetOptions { range, ..Default::default() };
        match self.inner.get_opts(&path(key), options).await {
            Ok(result) => Ok(Some(ObjectBody {
                range: result.range.clone(),
                size: result.meta.size,
                stream: result.into_stream().map_err(StoreError::from).boxed(),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(object_store::Error::Generic { source, .. }) if source.to_string().contains("range") => {
                Err(StoreError::Range)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a small object whole; `None` when it does not exist.
    pub async fn get_bytes(&self, key: &ObjectKey) -> Result<Option<Bytes>, StoreError> {
        match self.inner.get(&path(key)).await {
            Ok(result) => Ok(Some(result.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// An object's size; `None` when it does not exist.
    pub async fn head(&self, key: &ObjectKey) -> Result<Option<u64>, StoreError> {
        match self.inner.head(&path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes an object; deleting a missing object is not an error.
    pub async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        match self.inner.delete(&path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Starts receiving a large object under a staging key; nothing is visible under a real
    /// key until [`Upload::commit`].
    pub async fn start_upload(&self) -> Result<Upload, StoreError> {
        let staging = ObjectKey::Staging(uuid::Uuid::new_v4());
        let upload = self.inner.put_multipart(&path(&staging)).await?;
        Ok(Upload { store: self.clone(), staging, writer: WriteMultipart::new_with_chunk_size(upload, PART_SIZE) })
    }

    /// Deletes staging objects left behind by a crash. Run at start-up, before serving.
    pub async fn sweep_staging(&self) -> Result<usize, StoreError> {
        if let Some(root) = &self.local_root {
            // A local multipart upload stages as `tmp/<uuid>#<n>`, which object_store's
            // listing hides: sweep the directory itself.
            let dir = root.join("tmp");
            return tokio::task::spawn_blocking(move || {
                let mut removed = 0;
                for entry in std::fs::read_dir(&dir)? {
                    std::fs::remove_file(entry?.path())?;
                    removed += 1;
                }
                Ok(removed)
            })
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        let prefix = Path::from("tmp");
        let stale: Vec<_> = self.inner.list(Some(&prefix)).map_ok(|m| m.location).try_collect().await?;
        for location in &stale {
            self.inner.delete(location).await?;
        }
        Ok(stale.len())
    }

    /// Makes a written object durable on a local directory (file, then its directory).
    async fn sync(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = root.join(key.as_path());
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

/// Large sequential reads straight from the file on a blocking thread, each chunk read
/// directly into the buffer that is sent: object_store's local reader hands out 8 KiB chunks,
/// one blocking-pool trip each, and tokio's file reader copies every chunk once more.
async fn get_local(path: PathBuf, range: Option<ByteRange>) -> Result<Option<ObjectBody>, StoreError> {
    use std::io::{Read, Seek};
    const CHUNK: u64 = 1 << 20;
    let opened = tokio::task::spawn_blocking(move || match std::fs::File::open(&path) {
        Ok(file) => file.metadata().map(|m| Some((file, m.len()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))??;
    let Some((mut file, size)) = opened else { return Ok(None) };
    let range = resolve(range, size)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, StoreError>>(4);
    let (start, mut remaining) = (range.start, range.end - range.start);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = file.seek(std::io::SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(e.into()));
            return;
        }
        while remaining > 0 {
            let mut buf = bytes::BytesMut::zeroed(remaining.min(CHUNK) as usize);
            let chunk = match file.read(&mut buf) {
                Ok(0) => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => {
                    buf.truncate(n);
                    remaining -= n as u64;
                    Ok(buf.freeze())
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

/// A large object being received. Dropped without commit, it leaves only a staging object
/// that the next start-up sweeps.
pub struct Upload {
    store: Store,
    staging: ObjectKey,
    writer: WriteMultipart,
}

impl Upload {
    /// Appends bytes; waits while too many parts are in flight (bounded memory).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.writer.wait_for_capacity(2).await?;
        self.writer.write(bytes);
        Ok(())
    }

    /// Completes the upload and moves it to `key`, durably. If `key` already exists (the
    /// same content pushed twice), the existing object is kept and the staging copy dropped.
    pub async fn commit(self, key: &ObjectKey) -> Result<(), StoreError> {
        self.writer.finish().await?;
        let (from, to) = (path(&self.staging), path(key));
        match self.store.inner.rename_if_not_exists(&from, &to).await {
            Ok(()) => {}
            Err(object_store::Error::AlreadyExists { .. }) => self.store.inner.delete(&from).await?,
            Err(e) => return Err(e.into()),
        }
        self.store.sync(key).await
    }

    /// Abandons the upload and removes what was staged.
    pub async fn abort(self) {
        let staging = self.staging.clone();
        let store = self.store.clone();
        if self.writer.abort().await.is_err() {
            let _ = store.delete(&staging).await;
        }
        let _ = store.delete(&staging).await;
    }
}
