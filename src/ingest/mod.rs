//! Ingest: the one way a store path enters the cache, used by `nix copy` uploads, `berth
//! push` and the builder alike.
//!
//! Publication order is the invariant every reader relies on:
//! 1. the NAR streams into a staging object while a blocking thread decompresses, hashes and
//!    parses it (`receive_nar`); only a complete, valid NAR is renamed to `nar/<file>` and
//!    fsynced, then recorded in `nar_files`;
//! 2. a narinfo is published (`publish`) only when its NAR is recorded with the same
//!    NarHash/NarSize and every reference is already published; it is signed, written
//!    durably to `<hash>.narinfo`, and only then inserted in the index that HTTP serves.
//!
//! A crash between any two steps leaves at worst an unreferenced staging object or NAR,
//! never a narinfo without its NAR.

pub mod attached;
mod budget;
mod channel;

pub use budget::DecoderBudget;

use std::collections::HashSet;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::crash::{self, Step};
use crate::db::{Db, DbError, NarFileRow, PathRow, PublishGate};
use crate::metrics::Rejection;
use crate::nixfmt::{
    self, declared_memory, sha256_nix_string, verify_nar, Compression, Declared, NarDigest, NarFileInfo, NarFileName,
    NarInfoError, PathInfo, SecretKey, StorePathHash, VerifyError,
};
use crate::published::PublishedSet;
use crate::store::{ObjectKey, Store, StoreError};

/// Why an upload was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The NAR stream is not a valid (compressed) NAR.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The narinfo or claim is malformed.
    #[error(transparent)]
    NarInfo(#[from] NarInfoError),
    /// A NAR listing upload is not one.
    #[error(transparent)]
    Listing(#[from] nixfmt::ListingError),
    /// A NAR's content does not match the name it was uploaded under.
    #[error("NAR file name {name} does not match its content (FileHash {actual})")]
    NameMismatch {
        /// The name used.
        name: String,
        /// The hash of what arrived.
        actual: String,
    },
    /// The narinfo points at a NAR that was never uploaded.
    #[error("NAR {0} has not been uploaded; upload the NAR before its narinfo")]
    NarMissing(String),
    /// The NAR does not hash to what the narinfo claims.
    #[error("{field} mismatch: narinfo claims {claimed}, the uploaded NAR has {actual}")]
    Mismatch {
        /// Which field.
        field: &'static str,
        /// What the client said.
        claimed: String,
        /// What the bytes are.
        actual: String,
    },
    /// References that are not in the cache yet.
    #[error("references not in the cache (push them first): {}", .0.join(", "))]
    MissingReferences(Vec<String>),
    /// What the object belongs to is not in the cache.
    #[error("{0} is not in this cache; publish it first")]
    NotInCache(String),
    /// A body over its limit.
    #[error("{0}")]
    TooLarge(String),
    /// The request body could not be read to its end.
    #[error("reading the body: {0}")]
    Body(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The index failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl IngestError {
    /// The reason `berth_uploads_rejected_total` counts this refusal under.
    pub fn rejection(&self) -> Rejection {
        match self {
            IngestError::Verify(VerifyError::DecoderMemory { .. }) | IngestError::TooLarge(_) => Rejection::TooLarge,
            IngestError::Verify(VerifyError::Read(_)) | IngestError::Body(_) => Rejection::Body,
            IngestError::Verify(_) | IngestError::Listing(_) => Rejection::InvalidNar,
            IngestError::NarInfo(_) => Rejection::Malformed,
            IngestError::NameMismatch { .. } | IngestError::Mismatch { .. } => Rejection::Mismatch,
            IngestError::NarMissing(_) | IngestError::MissingReferences(_) | IngestError::NotInCache(_) => {
                Rejection::Missing
            }
            IngestError::Store(_) | IngestError::Db(_) => Rejection::Internal,
        }
    }
}

/// What a received NAR must turn out to be, checked before it is committed (so a NAR that
/// is not what its uploader said is never kept).
#[derive(Debug, Clone, Copy, Default)]
pub struct Expected<'a> {
    /// The name a client chose (Nix's `PUT /nar/<file>`), which must match the content;
    /// `None` names it by content.
    pub name: Option<&'a NarFileName>,
    /// The NAR's SHA-256 and size, as a push claim states them.
    pub nar: Option<NarDigest>,
}

/// Streams a (compressed) NAR into the cache: staged, verified while it arrives, checked
/// against `expected`, then committed as `nar/<file hash>.nar<ext>`. The decompressor is
/// admitted by the decoder budget for what the stream's first bytes declare, and held to it.
pub async fn receive_nar<S, E>(
    cache: Cache<'_>,
    mut body: S,
    compression: Compression,
    expected: Expected<'_>,
) -> Result<NarFileRow, IngestError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let Cache { store, db, decoders, .. } = cache;
    let (head, declared) = peek(&mut body, compression).await?;
    let share = decoders.admit(compression, declared).await?;
    let limit = share.limit;
    let body = futures::stream::iter(head.into_iter().map(Ok)).chain(body);
    let mut upload = store.start_upload(expected.name.map(|n| ObjectKey::Nar(n.clone())).as_ref()).await?;
    let (tx, reader) = channel::pair();
    let verifier = tokio::task::spawn_blocking(move || {
        let verified = verify_nar(reader, compression, limit);
        drop(share);
        verified
    });
    let streamed = stream_into(body, &mut upload, tx).await;
    let verified = verifier.await.map_err(|e| VerifyError::Read(std::io::Error::other(e.to_string())));
    let (nar, file) = match (streamed, verified) {
        (Ok(()), Ok(Ok(digests))) => digests,
        (Err(e), _) => {
            upload.abort().await;
            return Err(e);
        }
        (Ok(()), Err(e) | Ok(Err(e))) => {
            upload.abort().await;
            return Err(e.into());
        }
    };
    let name = NarFileName::for_file_hash(&file.sha256, compression);
    if let Err(e) = check_received(&expected, &name, &nar, &file) {
        upload.abort().await;
        return Err(e);
    }
    crash::point(Step::NarStaged);
    upload.commit(&ObjectKey::Nar(name.clone())).await?;
    crash::point(Step::NarCommitted);
    let row = nar_file_row(name.as_str(), &nar, &file);
    db.insert_nar_file(&row).await?;
    crash::point(Step::NarRecorded);
    Ok(row)
}

/// Records a NAR object that storage has but the index does not (a crash between its commit
/// and its row): it is read back and verified like an upload, and recorded only when its
/// content matches its name. `None` when there is no such object.
pub async fn adopt_nar(cache: Cache<'_>, name: &NarFileName) -> Result<Option<NarFileRow>, IngestError> {
    let Cache { store, db, decoders, .. } = cache;
    let Some(body) = store.get(&ObjectKey::Nar(name.clone()), None).await? else { return Ok(None) };
    let compression = name.compression();
    let mut stream = body.stream;
    let (head, declared) = peek(&mut stream, compression).await?;
    let share = decoders.admit(compression, declared).await?;
    let limit = share.limit;
    let (tx, reader) = channel::pair();
    let verifier = tokio::task::spawn_blocking(move || {
        let verified = verify_nar(reader, compression, limit);
        drop(share);
        verified
    });
    let mut stream = futures::stream::iter(head.into_iter().map(Ok)).chain(stream);
    while let Some(chunk) = stream.next().await {
        if tx.send(chunk?).await.is_err() {
            break;
        }
    }
    drop(tx);
    let (nar, file) = verifier.await.map_err(|e| VerifyError::Read(std::io::Error::other(e.to_string())))??;
    check_received(
        &Expected { name: Some(name), nar: None },
        &NarFileName::for_file_hash(&file.sha256, compression),
        &nar,
        &file,
    )?;
    let row = nar_file_row(name.as_str(), &nar, &file);
    db.insert_nar_file(&row).await?;
    Ok(Some(row))
}

/// Reads the first chunks of `body` until they tell what the stream's decoder needs (a
/// few bytes; at most [`nixfmt::PEEK_BYTES`] and a chunk), returning them to be streamed
/// first.
async fn peek<S, E>(body: &mut S, compression: Compression) -> Result<(Vec<Bytes>, Declared), IngestError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let (mut chunks, mut head) = (Vec::new(), Vec::new());
    loop {
        let declared = declared_memory(compression, &head);
        if declared != Declared::NeedMore || head.len() >= nixfmt::PEEK_BYTES {
            return Ok((chunks, declared));
        }
        let Some(chunk) = body.next().await else { return Ok((chunks, declared)) };
        let chunk = chunk.map_err(|e| VerifyError::Read(std::io::Error::other(e.to_string())))?;
        head.extend_from_slice(&chunk[..chunk.len().min(nixfmt::PEEK_BYTES)]);
        chunks.push(chunk);
    }
}

/// Whether what arrived is what the uploader said it would be.
fn check_received(
    expected: &Expected<'_>,
    name: &NarFileName,
    nar: &NarDigest,
    file: &NarDigest,
) -> Result<(), IngestError> {
    if let Some(chosen) = expected.name.filter(|e| e.as_str() != name.as_str()) {
        return Err(IngestError::NameMismatch { name: chosen.to_string(), actual: sha256_nix_string(&file.sha256) });
    }
    if let Some(claimed) = expected.nar {
        check("narHash", sha256_nix_string(&claimed.sha256), &sha256_nix_string(&nar.sha256))?;
        check("narSize", claimed.size.to_string(), &nar.size.to_string())?;
    }
    Ok(())
}

/// The index record of a verified NAR file called `name`.
fn nar_file_row(name: &str, nar: &NarDigest, file: &NarDigest) -> NarFileRow {
    NarFileRow {
        name: name.to_owned(),
        file_hash: sha256_nix_string(&file.sha256),
        file_size: file.size as i64,
        nar_hash: sha256_nix_string(&nar.sha256),
        nar_size: nar.size as i64,
    }
}

/// Copies the body into the staging upload and the verifier's channel at once.
async fn stream_into<S, E>(
    mut body: S,
    upload: &mut crate::store::Upload,
    tx: channel::Sender,
) -> Result<(), IngestError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| VerifyError::Read(std::io::Error::other(e.to_string())))?;
        // A storage failure (a full disk) stays one, so it is answered as such.
        upload.write(&chunk).await?;
        // The verifier stopping early (a malformed NAR) is reported by its own result.
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// What `publish` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The path is new in the cache.
    New,
    /// The path was already published; nothing changed.
    AlreadyPresent,
}

/// Where ingest publishes: storage, the index, the cache key, and the publish gate that
/// retention holds for writing while it decides and deletes (see `gc::run`).
#[derive(Clone, Copy)]
pub struct Cache<'a> {
    /// NARs and narinfos.
    pub store: &'a Store,
    /// The index.
    pub db: &'a Db,
    /// The cache signing key.
    pub key: &'a SecretKey,
    /// Held for reading while a path is checked and published (across replicas with
    /// PostgreSQL).
    pub gate: &'a PublishGate,
    /// What decompressing uploads may cost in memory.
    pub decoders: &'a DecoderBudget,
    /// The published-path set, which a publication joins.
    pub published: &'a PublishedSet,
}

/// Checks a narinfo against its received NAR and the index, signs it and publishes it.
pub async fn publish(cache: Cache<'_>, info: PathInfo) -> Result<Published, IngestError> {
    let Cache { store, db, key, gate, published, .. } = cache;
    // Retention cannot plan or delete while this publication checks and indexes.
    let _gate = gate.read().await?;
    let file = info.nar_file()?;
    let row = db.nar_file(file.as_str()).await?.ok_or_else(|| IngestError::NarMissing(file.url()))?;
    check("NarHash", sha256_nix_string(&info.sha256_nar_hash()?), &row.nar_hash)?;
    check("NarSize", info.nar_size().to_string(), &row.nar_size.to_string())?;
    if let Some(declared) = info.file_sha256() {
        check("FileHash", sha256_nix_string(&declared), &row.file_hash)?;
    }
    if let Some(declared) = info.file_size() {
        check("FileSize", declared.to_string(), &row.file_size.to_string())?;
    }
    // The record may outlive the object when retention deleted it under us: check the bytes.
    if store.head(&ObjectKey::Nar(file.clone())).await?.is_none() {
        return Err(IngestError::NarMissing(file.url()));
    }
    let hash = info.hash();
    if present(db, published, &[hash.to_string()]).await?.contains(hash.as_str()) {
        published.insert(&hash);
        return Ok(Published::AlreadyPresent);
    }
    missing_references(db, published, &info).await?;
    let signed = info.signed(key);
    let text = signed.to_text();
    store.put(&ObjectKey::NarInfo(hash.clone()), Bytes::from(text.clone())).await?;
    crash::point(Step::NarInfoWritten);
    let inserted = db
        .insert_path(&PathRow {
            hash: hash.to_string(),
            store_path: signed.store_path().to_basename(),
            nar_file: file.to_string(),
            nar_hash: row.nar_hash,
            nar_size: row.nar_size,
            file_size: row.file_size,
            deriver: signed.deriver_basename(),
            narinfo: text,
            references: signed.reference_basenames(),
        })
        .await?;
    // Still under the gate: a collection cannot remove it before it is added.
    published.insert(&hash);
    crash::point(Step::NarInfoIndexed);
    Ok(if inserted { Published::New } else { Published::AlreadyPresent })
}

/// Stores a NAR listing for `hash`: served at once when the path is published, else set
/// aside until it is (Nix uploads the listing first), so nobody can make the cache serve
/// JSON for a path it does not have. Returns whether the listing is served now.
pub async fn receive_listing(store: &Store, db: &Db, hash: StorePathHash, listing: Bytes) -> Result<bool, IngestError> {
    nixfmt::check_listing(&listing)?;
    if db.narinfo(hash.as_str()).await?.is_some() {
        store.put(&ObjectKey::Listing(hash), listing).await?;
        return Ok(true);
    }
    store.put(&ObjectKey::PendingListing(hash), listing).await?;
    Ok(false)
}

/// After `hash` was published: serves the listing uploaded before it, if any.
pub async fn adopt_listing(store: &Store, hash: &StorePathHash) -> Result<(), IngestError> {
    let pending = ObjectKey::PendingListing(hash.clone());
    if let Some(listing) = store.get_bytes(&pending).await? {
        store.put(&ObjectKey::Listing(hash.clone()), listing).await?;
        store.delete(&pending).await?;
    }
    Ok(())
}

fn check(field: &'static str, claimed: String, actual: &str) -> Result<(), IngestError> {
    if claimed == actual {
        Ok(())
    } else {
        Err(IngestError::Mismatch { field, claimed, actual: actual.to_owned() })
    }
}

/// Which of `hashes` are published: from the set when it is exact, else from the index.
pub async fn present(db: &Db, published: &PublishedSet, hashes: &[String]) -> Result<HashSet<String>, IngestError> {
    match published.present_exactly(hashes) {
        Some(present) => Ok(present),
        None => Ok(db.present(hashes).await?),
    }
}

/// Fails with the list of references (other than the path itself) not yet published.
pub async fn missing_references(db: &Db, published: &PublishedSet, info: &PathInfo) -> Result<(), IngestError> {
    let wanted: Vec<String> = info.foreign_references().map(|h| h.to_string()).collect();
    let present = present(db, published, &wanted).await?;
    let missing: Vec<String> = wanted.into_iter().filter(|h| !present.contains(h)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(IngestError::MissingReferences(missing))
    }
}

/// Ingests a claimed path whose NAR arrives as `body` (berth's push API and the builder).
pub async fn ingest_claimed<S, E>(
    cache: Cache<'_>,
    claim: &nixfmt::PathClaim,
    body: S,
    compression: Compression,
) -> Result<Published, IngestError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    // Everything the claim says that can be checked without the NAR is, before reading it.
    let nar = claim.checked_nar()?;
    let row = receive_nar(cache, body, compression, Expected { name: None, nar: Some(nar) }).await?;
    let name = NarFileName::parse(&row.name).expect("names made by receive_nar are valid");
    let file_sha256 = parse_sha256(&row.file_hash);
    let file = NarFileInfo { name, file_sha256, file_size: row.file_size as u64 };
    let info = PathInfo::from_claim(claim, &file)?;
    publish(cache, info).await
}

fn parse_sha256(s: &str) -> [u8; 32] {
    let digest = s.parse::<nixfmt::NixHash>().expect("hashes written by receive_nar parse");
    digest.digest_as_bytes().try_into().expect("sha256 digests are 32 bytes")
}

#[cfg(test)]
mod tests;
