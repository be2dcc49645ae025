//! Uploading one store path: the claim, then its compressed NAR streamed from
//! [`crate::dump`] into the request body, never held whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;

use super::client::{Client, UploadStatus};
use super::{frame, PushError};
pub use crate::dump::Counters;
use crate::dump::{compressed_nar, DumpFailure};
use crate::nixfmt::PathClaim;

/// One finished upload.
#[derive(Debug)]
pub struct Uploaded {
    /// The claim that was uploaded.
    pub claim: PathClaim,
    /// What the server did with it.
    pub status: UploadStatus,
    /// Compressed bytes sent (may be short of the whole NAR when the server answered early).
    pub compressed: u64,
}

/// Uploads `claim`, reading the path's files under `root` (`/` for the local store, or a
/// chroot store's directory).
pub async fn upload(
    client: &Client,
    claim: PathClaim,
    root: &Path,
    level: i32,
    counters: Arc<Counters>,
) -> Result<Uploaded, PushError> {
    let header = frame::header(&claim)?;
    let on_disk = root.join(claim.path.trim_start_matches('/'));
    if let Err(e) = tokio::fs::symlink_metadata(&on_disk).await {
        return Err(PushError::Dump {
            path: claim.path,
            reason: format!("{} is not readable: {e}", on_disk.display()),
        });
    }
    let (nar, dump) = compressed_nar(on_disk, level, counters);
    let body = futures::stream::once(async move { Ok(header) }).chain(nar);
    let response = client.upload(&claim.path, reqwest::Body::wrap_stream(body)).await;
    let dumped = dump.await.unwrap_or_else(|e| Err(DumpFailure::Failed(format!("NAR thread failed: {e}"))));
    match (response, dumped) {
        (_, Err(DumpFailure::Failed(reason))) => Err(PushError::Dump { path: claim.path, reason }),
        (Ok(status), Ok(compressed)) => Ok(Uploaded { claim, status, compressed }),
        // The server answered before reading the whole NAR; only `present` makes sense then.
        (Ok(status), Err(DumpFailure::Cancelled)) => Ok(Uploaded { claim, status, compressed: 0 }),
        (Err(e), _) => Err(e),
    }
}

/// The physical directory a store path's files are read from, for a `--store` argument:
/// the system store's names, or the directory of a local chroot store. Store URIs with
/// parameters, remote and binary-cache stores are refused: their files are not on this disk.
pub fn on_disk_root(store: Option<&str>) -> Result<PathBuf, PushError> {
    match store {
        None | Some("auto" | "daemon" | "local") => Ok(PathBuf::from("/")),
        Some(dir) if dir.starts_with('/') && !dir.contains('?') => Ok(PathBuf::from(dir)),
        Some(other) => Err(PushError::UnsupportedStore(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_roots() {
        assert_eq!(on_disk_root(None).unwrap(), PathBuf::from("/"));
        assert_eq!(on_disk_root(Some("/tmp/chroot")).unwrap(), PathBuf::from("/tmp/chroot"));
        assert!(matches!(on_disk_root(Some("s3://bucket")), Err(PushError::UnsupportedStore(_))));
    }
}
