//! Object storage for NARs and narinfos, through `object_store`: a local directory, memory
//! (tests) or an S3-compatible bucket. The only module that imports `object_store`. Writes
//! are atomic (staged then renamed, or a multipart upload completed) and, on a local
//! directory, durable (fsynced) before they return: the publication order of `ingest`
//! depends on it. The layout is the standard binary-cache layout, under an optional prefix
//! on S3, so the directory or bucket is itself a Nix cache.

#[cfg(test)]
mod contract;
mod credentials;
mod key;
mod local;
mod s3;
mod upload;
mod url;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures::{stream::BoxStream, StreamExt, TryStreamExt};
use object_store::{
    local::LocalFileSystem, memory::InMemory, path::Path, GetOptions, GetRange, ObjectStore, PutMode, PutOptions,
    PutPayload,
};

use crate::nixfmt::{NarFileName, StorePathHash};

pub use self::credentials::CredentialsError;
pub use self::key::ObjectKey;
pub use self::upload::Upload;
pub use self::url::{StoreUrl, UrlError, ACCEPTED_FORMS};

/// Storage failures. Display texts are for logs; clients see "internal error".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage URL is not one berth understands.
    #[error("invalid storage URL: {0}; accepted forms: {forms}", forms = ACCEPTED_FORMS)]
    BadUrl(#[from] UrlError),
    /// The S3 credentials file cannot be used.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The requested range lies outside the object.
    #[error("requested range not satisfiable")]
    Range,
    /// An upload announced for one key was committed under another.
    #[error("upload started for {target} cannot be committed as {key}")]
    TargetMismatch {
        /// The key given to `start_upload`.
        target: String,
        /// The key given to `commit`.
        key: String,
    },
    /// The server refused the credentials or the request (HTTP 401/403).
    #[error("object store denied access (check the credentials, region and bucket policy): {0}")]
    Denied(object_store::Error),
    /// The backend failed.
    #[error("object store: {0}")]
    Backend(object_store::Error),
    /// Local filesystem work (creating the root, fsync) failed.
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Whether the storage is out of space (or quota): the operator's to fix, not a bug.
    /// object_store and `std::fs` bury the OS error in a chain of sources.
    pub fn is_storage_full(&self) -> bool {
        // ENOSPC and EDQUOT on Linux.
        const FULL: [i32; 2] = [28, 122];
        let mut source: Option<&(dyn std::error::Error + 'static)> = match self {
            Self::Backend(e) | Self::Denied(e) => Some(e),
            Self::Io(e) => Some(e),
            _ => None,
        };
        while let Some(e) = source {
            let os_error = e.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error);
            if os_error.is_some_and(|code| FULL.contains(&code)) {
                return true;
            }
            source = e.source();
        }
        false
    }
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                Self::Denied(e)
            }
            e if is_range_error(&e) => Self::Range,
            e => Self::Backend(e),
        }
    }
}

/// An unsatisfiable range: object_store's own check (memory), or S3's HTTP 416, which it
/// reports only as a generic error.
fn is_range_error(e: &object_store::Error) -> bool {
    let object_store::Error::Generic { source, .. } = e else { return false };
    let text = source.to_string();
    text.contains("416 Range Not Satisfiable") || text.contains("Wanted range starting at")
}

/// The object store with berth's key discipline. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    backend: Backend,
}

/// What kind of storage `inner` is, with what each kind needs besides it.
#[derive(Clone, Debug)]
enum Backend {
    Memory,
    /// A local directory: writes are fsynced, reads bypass object_store.
    Dir(PathBuf),
    S3(Arc<s3::S3>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the client itself: it holds the credentials.
        f.debug_struct("Store").field("backend", &self.backend).finish_non_exhaustive()
    }
}

/// An object's bytes (possibly a range of them) as a stream.
pub struct ObjectBody {
    /// The bytes served.
    pub range: std::ops::Range<u64>,
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

#[cfg(test)]
impl Store {
    /// The same S3 store with another copy limit (tests of the streamed commit path).
    pub(crate) fn with_copy_limit(mut self, limit: u64) -> Self {
        if let Backend::S3(s3) = &mut self.backend {
            Arc::get_mut(s3).expect("a store fresh from open").copy_limit = limit;
        }
        self
    }
}

impl Store {
    /// Opens a storage URL (see [`ACCEPTED_FORMS`] and `docs/storage.md`): `file:///dir`
    /// (created if missing), `memory://` (tests) or `s3://bucket[/prefix][?…]`.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let (inner, backend): (Arc<dyn ObjectStore>, _) = match StoreUrl::parse(url)? {
            StoreUrl::Memory => (Arc::new(InMemory::new()), Backend::Memory),
            StoreUrl::Dir(root) => {
                std::fs::create_dir_all(root.join("nar"))?;
                std::fs::create_dir_all(root.join("tmp"))?;
                (Arc::new(LocalFileSystem::new_with_prefix(&root)?), Backend::Dir(root))
            }
            StoreUrl::S3(url) => {
                let (inner, s3) = s3::open(&url)?;
                (inner, Backend::S3(Arc::new(s3)))
            }
        };
        Ok(Self { inner, backend })
    }

    /// `"memory"`, `"dir"` or `"s3"`, for logs and metrics.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Memory => "memory",
            Backend::Dir(_) => "dir",
            Backend::S3(_) => "s3",
        }
    }

    /// Whether other replicas may share this storage (an S3 bucket): start-up must then
    /// leave their uploads in progress alone.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::S3(_))
    }

    /// Writes a small object atomically and durably.
    pub async fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<(), StoreError> {
        self.inner.put(&path(key), PutPayload::from_bytes(bytes)).await?;
        self.sync(key).await
    }

    /// Writes a small object unless `key` exists; `false` when it did (nothing written).
    /// Atomic on a local directory, in memory, and on S3 with `conditional_put=etag`. Without
    /// it (Garage ignores `If-None-Match`) it is a check then a put, which two writers racing
    /// can both pass: use it only where either write is acceptable.
    pub async fn put_new(&self, key: &ObjectKey, bytes: Bytes) -> Result<bool, StoreError> {
        if matches!(&self.backend, Backend::S3(s3) if !s3.conditional_put) {
            if self.head(key).await?.is_some() {
                return Ok(false);
            }
            self.put(key, bytes).await?;
            return Ok(true);
        }
        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.inner.put_opts(&path(key), PutPayload::from_bytes(bytes), options).await {
            Ok(_) => self.sync(key).await.map(|()| true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads an object, or a range of it; `None` when it does not exist.
    pub async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<Option<ObjectBody>, StoreError> {
        if let Backend::Dir(root) = &self.backend {
            return local::get_local(root.join(key.as_path()), range).await;
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

    /// A URL that fetches `key` without credentials for `expires`: `Some` on S3 (SigV4
    /// query-string signature), `None` where there is nothing to sign (local, memory).
    pub async fn presigned_get(&self, key: &ObjectKey, expires: Duration) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::S3(s3) => s3.presigned_get(&key.as_path(), expires).await.map(Some),
            Backend::Memory | Backend::Dir(_) => Ok(None),
        }
    }

    /// Deletes staging objects left behind by a crash; run at start-up, before serving. A
    /// local directory or memory belongs to this process: everything under `tmp/` goes. A
    /// bucket may be shared by replicas: only staging objects older than a day go (an
    /// interrupted multipart upload is not an object at all: a bucket lifecycle rule
    /// `AbortIncompleteMultipartUpload` collects its parts).
    pub async fn sweep_staging(&self) -> Result<usize, StoreError> {
        if let Backend::Dir(root) = &self.backend {
            return local::sweep(root.join("tmp")).await;
        }
        let now = std::time::SystemTime::now();
        let shared = self.is_shared();
        let stale: Vec<Path> = self
            .inner
            .list(Some(&Path::from("tmp")))
            .try_filter(|meta| futures::future::ready(!shared || s3::is_stale(meta.last_modified.into(), now)))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?;
        for location in &stale {
            self.inner.delete(location).await?;
        }
        Ok(stale.len())
    }

    /// Every `<hash>.narinfo` object with when it was written, as a stream (a listing of
    /// the whole storage, read page by page): what a client of the storage alone
    /// (`file://`, `s3://`) sees, for reconciling it with the index after a crash.
    pub fn list_narinfos(&self) -> BoxStream<'_, Result<(StorePathHash, SystemTime), StoreError>> {
        self.inner
            .list(None)
            .try_filter_map(|meta| {
                let hash = (meta.location.parts().count() == 1)
                    .then(|| meta.location.filename()?.strip_suffix(".narinfo").map(StorePathHash::parse))
                    .flatten()
                    .and_then(Result::ok);
                futures::future::ready(Ok(hash.map(|h| (h, meta.last_modified.into()))))
            })
            .map_err(StoreError::from)
            .boxed()
    }

    /// Every NAR object under `nar/` with when it was written, as a stream.
    pub fn list_nars(&self) -> BoxStream<'_, Result<(NarFileName, SystemTime), StoreError>> {
        self.inner
            .list(Some(&Path::from("nar")))
            .try_filter_map(|meta| {
                let name = meta.location.filename().and_then(|n| NarFileName::parse(n).ok());
                futures::future::ready(Ok(name.map(|n| (n, meta.last_modified.into()))))
            })
            .map_err(StoreError::from)
            .boxed()
    }

    /// Makes a written object durable on a local directory (file, then its directory).
    async fn sync(&self, key: &ObjectKey) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Dir(root) => local::sync(root.join(key.as_path())).await,
            Backend::Memory | Backend::S3(_) => Ok(()),
        }
    }
}
