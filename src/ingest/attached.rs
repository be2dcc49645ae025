//! Objects that belong to published paths: realisations of content-addressed derivation
//! outputs (signed with the cache key, as Nix requires of a substituted realisation) and
//! derivations' build logs. Each is accepted only for paths already in the cache, recorded
//! in the index before its object is written (a crash between the two leaves a row whose
//! object is missing: the object is simply absent, never orphaned), and deleted by
//! retention with the last path it belongs to.

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::{Cache, IngestError};
use crate::db::PathObjectKind;
use crate::nixfmt::{DrvName, Realisation};
use crate::store::ObjectKey;

/// Largest derivation build log accepted (`PUT /log/<drv>`) or copied by the builder.
pub const MAX_DRV_LOG: u64 = 16 << 20;

/// Signs and stores a realisation whose output path is in the cache.
pub async fn realisation(cache: Cache<'_>, realisation: Realisation) -> Result<Realisation, IngestError> {
    let Cache { store, db, key, gate, .. } = cache;
    let _gate = gate.read().await?;
    let out = realisation.out_hash().to_string();
    if db.present(std::slice::from_ref(&out)).await?.is_empty() {
        return Err(IngestError::NotInCache(format!("the output path {out} of {}", realisation.id())));
    }
    let signed = realisation.signed(key);
    db.attach_object(PathObjectKind::Realisation, signed.id().as_str(), &[out]).await?;
    store.put(&ObjectKey::Realisation(signed.id().clone()), Bytes::from(signed.to_json())).await?;
    Ok(signed)
}

/// Stores the build log of `drv`, which must have built a path in the cache, streaming it
/// (at most [`MAX_DRV_LOG`] bytes).
pub async fn drv_log<S, E>(cache: Cache<'_>, drv: &DrvName, mut body: S) -> Result<(), IngestError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let Cache { store, db, gate, .. } = cache;
    let key = ObjectKey::DrvLog(drv.clone());
    let mut upload = store.start_upload(Some(&key)).await?;
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                upload.abort().await;
                return Err(IngestError::Body(e.to_string()));
            }
        };
        size += chunk.len() as u64;
        if size > MAX_DRV_LOG {
            upload.abort().await;
            return Err(IngestError::TooLarge(format!("build log over {} MiB", MAX_DRV_LOG >> 20)));
        }
        upload.write(&chunk).await?;
    }
    let _gate = gate.read().await?;
    let outputs = db.built_by(drv.as_str()).await?;
    if outputs.is_empty() {
        upload.abort().await;
        return Err(IngestError::NotInCache(format!("no path built by {drv}")));
    }
    db.attach_object(PathObjectKind::DrvLog, drv.as_str(), &outputs).await?;
    upload.commit(&key).await?;
    Ok(())
}
