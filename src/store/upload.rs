//! `Upload`: a large object received in 5 MiB multipart parts, at most two in flight, so
//! memory stays bounded however large the NAR. Nothing is visible under a real key before
//! `commit`; `abort` (or dropping the upload) removes what was sent.
//!
//! Two destinations:
//! - **direct** (S3, target known up front, as with Nix's `PUT /nar/<name>`): the parts go to
//!   the final key and completing the multipart upload publishes it atomically; aborting
//!   leaves no parts behind. No copy.
//! - **staged** (local directory, memory, or S3 when the name is known only after hashing):
//!   the parts go to `tmp/<uuid>`, which `commit` then moves under the final key.

use object_store::{MultipartUpload, PutPayloadMut};
use tokio::task::JoinSet;

use super::{path, Backend, ObjectKey, Store, StoreError};

/// Multipart part size on S3: its minimum. With two parts in flight and one filling, an
/// upload holds at most ~15 MiB, however large the NAR.
const S3_PART_SIZE: usize = 5 << 20;
/// Part size elsewhere (a local directory writes each part at its offset in one file; no
/// minimum): an upload holds at most ~1.5 MiB, and each part is one allocation below
/// glibc's mmap threshold (1 MiB, `main.rs`), reused rather than mapped and unmapped.
const LOCAL_PART_SIZE: usize = 512 << 10;
/// Parts uploading at once.
const MAX_IN_FLIGHT: usize = 2;

/// A large object being received.
pub struct Upload {
    store: Store,
    /// The key the caller announced; `commit` refuses any other.
    target: Option<ObjectKey>,
    /// `Some(tmp/<uuid>)` when staged; `None` when writing to `target` directly.
    staging: Option<ObjectKey>,
    /// `None` once committed or aborted.
    parts: Option<Parts>,
    /// Bytes written so far (the object's size once committed).
    written: u64,
}

/// The multipart upload and the parts in flight.
struct Parts {
    upload: Box<dyn MultipartUpload>,
    buffer: PutPayloadMut,
    part_size: usize,
    in_flight: JoinSet<object_store::Result<()>>,
}

impl Store {
    /// Starts receiving a large object. With a `target` on S3 the parts go straight to it;
    /// otherwise (or without a target) they are staged under `tmp/`. Either way nothing is
    /// visible under a real key until [`Upload::commit`].
    pub async fn start_upload(&self, target: Option<&ObjectKey>) -> Result<Upload, StoreError> {
        let (location, staging) = match (&self.backend, target) {
            (Backend::S3(_), Some(target)) => (target.clone(), None),
            _ => {
                let staging = ObjectKey::Staging(uuid::Uuid::new_v4());
                (staging.clone(), Some(staging))
            }
        };
        let upload = self.inner.put_multipart(&path(&location)).await?;
        let part_size = if matches!(self.backend, Backend::S3(_)) { S3_PART_SIZE } else { LOCAL_PART_SIZE };
        let parts = Parts { upload, buffer: Parts::buffer(part_size), part_size, in_flight: JoinSet::new() };
        Ok(Upload { store: self.clone(), target: target.cloned(), staging, parts: Some(parts), written: 0 })
    }
}

impl Upload {
    /// Appends bytes; waits while too many parts are in flight (bounded memory).
    pub async fn write(&mut self, mut bytes: &[u8]) -> Result<(), StoreError> {
        let parts = self.parts.as_mut().expect("write after commit or abort");
        self.written += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = bytes.len().min(parts.part_size - parts.buffer.content_length());
            parts.buffer.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if parts.buffer.content_length() == parts.part_size {
                parts.send_part(MAX_IN_FLIGHT).await?;
            }
        }
        Ok(())
    }

    /// Completes the upload under `key`, durably, and consumes it; on failure nothing is
    /// left behind. `key` must be the target given to `start_upload`, if any. If `key`
    /// already exists (the same content pushed twice), the existing object is kept or
    /// replaced by the same bytes.
    pub async fn commit(mut self, key: &ObjectKey) -> Result<(), StoreError> {
        if let Some(target) = self.target.as_ref().filter(|t| *t != key) {
            let error = StoreError::TargetMismatch { target: target.as_path(), key: key.as_path() };
            self.discard().await;
            return Err(error);
        }
        // The parts stay in `self` while they complete: if this future is dropped meanwhile
        // (the client went away), `Drop` still aborts them.
        let parts = self.parts.as_mut().expect("an upload commits once");
        if let Err(e) = parts.finish().await {
            self.discard().await;
            return Err(e);
        }
        self.parts = None;
        let Some(staging) = self.staging.clone() else {
            // Direct: completing the multipart upload published it.
            return Ok(());
        };
        let promoted = self.store.promote(&staging, key, self.written).await;
        if promoted.is_err() {
            remove_staging(&self.store, Some(&staging)).await;
        }
        promoted
    }

    /// Abandons the upload and removes what was sent.
    pub async fn abort(mut self) {
        self.discard().await;
    }

    async fn discard(&mut self) {
        if let Some(mut parts) = self.parts.take() {
            parts.abort().await;
        }
        remove_staging(&self.store, self.staging.as_ref()).await;
    }
}

/// Best effort: a staging object left behind is swept at the next start-up.
async fn remove_staging(store: &Store, staging: Option<&ObjectKey>) {
    if let Some(staging) = staging {
        let _ = store.delete(staging).await;
    }
}

/// A dropped upload (its request future cancelled when the client went away) is aborted in
/// the background, so no multipart parts or staging object outlive it.
impl Drop for Upload {
    fn drop(&mut self) {
        let Some(mut parts) = self.parts.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (store, staging) = (self.store.clone(), self.staging.take());
        runtime.spawn(async move {
            parts.abort().await;
            if let Some(staging) = staging {
                let _ = store.delete(&staging).await;
            }
        });
    }
}

impl Parts {
    /// An empty part buffer that fills one block of `part_size` (8 KiB blocks by default).
    fn buffer(part_size: usize) -> PutPayloadMut {
        PutPayloadMut::new().with_block_size(part_size)
    }

    /// Sends the buffer as a part once fewer than `limit` parts are in flight.
    async fn send_part(&mut self, limit: usize) -> Result<(), StoreError> {
        while self.in_flight.len() >= limit {
            self.join_one().await?;
        }
        let payload = std::mem::replace(&mut self.buffer, Self::buffer(self.part_size)).freeze();
        self.in_flight.spawn(self.upload.put_part(payload));
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), StoreError> {
        match self.in_flight.join_next().await {
            Some(Ok(result)) => Ok(result?),
            Some(Err(e)) => Err(std::io::Error::other(e.to_string()).into()),
            None => Ok(()),
        }
    }

    /// Sends the last part, waits for every part, completes the upload.
    async fn finish(&mut self) -> Result<(), StoreError> {
        if self.buffer.content_length() > 0 {
            self.send_part(MAX_IN_FLIGHT).await?;
        }
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        self.upload.complete().await?;
        Ok(())
    }

    /// Stops the parts in flight and aborts the multipart upload (S3 drops its parts).
    async fn abort(&mut self) {
        self.in_flight.shutdown().await;
        if let Err(e) = self.upload.abort().await {
            tracing::warn!(error = %e, "could not abort a multipart upload; a lifecycle rule will collect its parts");
        }
    }
}

impl Store {
    /// Moves a completed staging object under `key`; keeps `key` when it already exists.
    async fn promote(&self, staging: &ObjectKey, key: &ObjectKey, size: u64) -> Result<(), StoreError> {
        let (from, to) = (path(staging), path(key));
        let Backend::S3(s3) = &self.backend else {
            match self.inner.rename_if_not_exists(&from, &to).await {
                Ok(()) => {}
                Err(object_store::Error::AlreadyExists { .. }) => self.inner.delete(&from).await?,
                Err(e) => return Err(e.into()),
            }
            return self.sync(key).await;
        };
        // S3 has no rename: copy, then delete. Keys are content-addressed, so a plain copy
        // over an existing key writes the same bytes; copy_if_not_exists merely saves the
        // work. AWS CopyObject copies at most 5 GiB in one request: a larger staged object
        // is streamed into a direct multipart upload instead (bounded memory, as any upload).
        // A NAR whose name is known up front (Nix's `PUT /nar/<name>`) is never staged.
        if size > s3.copy_limit {
            self.stream_copy(staging, key).await?;
        } else {
            let copied = if s3.copy_if_not_exists {
                self.inner.copy_if_not_exists(&from, &to).await
            } else {
                self.inner.copy(&from, &to).await
            };
            match copied {
                Ok(()) | Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.inner.delete(&from).await?;
        Ok(())
    }

    /// Copies `from` to `key` through this process: read as a stream, written as a direct
    /// upload (completed only when every byte arrived).
    async fn stream_copy(&self, from: &ObjectKey, key: &ObjectKey) -> Result<(), StoreError> {
        use futures::TryStreamExt;
        let mut body = self.get(from, None).await?.ok_or_else(|| std::io::Error::other("staged object vanished"))?;
        let mut upload = self.start_upload(Some(key)).await?;
        while let Some(chunk) = body.stream.try_next().await? {
            upload.write(&chunk).await?;
        }
        // Boxed: `commit` of a staged upload is what called this (a direct upload's
        // commit does not come back here).
        Box::pin(upload.commit(key)).await
    }
}
