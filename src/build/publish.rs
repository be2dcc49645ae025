//! Publishing a built closure: every path of it that the cache lacks goes through the same
//! `ingest` as an upload (dump → zstd → verify → store → sign → index), dependencies first.
//! No second copy of the NAR code, no separate push step.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;

use crate::{
    app::AppState,
    dump::{compressed_nar, Counters, DumpFailure},
    ingest::{self, IngestError, Published},
    nix::{self, NixError},
    nixfmt::{Compression, DrvName, StorePathHash},
};

/// Why a closure could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Asking Nix for the closure failed.
    #[error("querying the closure: {0}")]
    Nix(#[from] NixError),
    /// Reading a path from the local store failed.
    #[error("reading {path}: {reason}")]
    Dump {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The cache refused or failed.
    #[error("publishing: {0}")]
    Ingest(#[from] IngestError),
}

/// How much of a closure was new.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClosureCounts {
    /// Paths added to the cache.
    pub new: usize,
    /// Paths already there.
    pub present: usize,
}

/// Publishes the closure of `path` (a path in the local Nix store) into the cache.
pub async fn closure(state: &AppState, path: &str) -> Result<ClosureCounts, PublishError> {
    let store = state.config.builder.store.as_deref();
    let claims = nix::path_info_closure(&[path.to_owned()], store.and_then(Path::to_str)).await?;
    // A chroot store keeps `/nix/store/…` under its own directory.
    let on_disk =
        |path: &str| store.map_or_else(|| PathBuf::from(path), |root| root.join(path.trim_start_matches('/')));
    let mut hashes = Vec::with_capacity(claims.len());
    for claim in &claims {
        let parsed =
            claim.path.parse().map_err(|e| PublishError::Dump { path: claim.path.clone(), reason: format!("{e}") })?;
        hashes.push(StorePathHash::of(&parsed).to_string());
    }
    let present = state.db.present(&hashes).await.map_err(IngestError::from)?;
    let mut counts = ClosureCounts { present: present.len(), ..Default::default() };
    for (claim, hash) in claims.iter().zip(&hashes) {
        if present.contains(hash) {
            continue;
        }
        let level = state.cache.compression_level;
        let (nar, dumping) = compressed_nar(on_disk(&claim.path), level, Arc::new(Counters::default()));
        let result = ingest::ingest_claimed(state.cache(), claim, nar, Compression::Zstd).await;
        if let Ok(Err(DumpFailure::Failed(reason))) = dumping.await {
            return Err(PublishError::Dump { path: claim.path.clone(), reason });
        }
        match result? {
            Published::New => {
                counts.new += 1;
                if let Some(drv) = claim.deriver.as_deref() {
                    copy_log(state, drv, store.and_then(Path::to_str)).await;
                }
            }
            Published::AlreadyPresent => counts.present += 1,
        }
    }
    Ok(counts)
}

/// Copies the build log of `drv` (the deriver of a path just published), when the build host
/// has one, so `nix log --store <cache> DRV` finds it. A log that cannot be copied is logged
/// and skipped: it never fails the build.
async fn copy_log(state: &AppState, drv: &str, store: Option<&str>) {
    let Ok(drv) = DrvName::parse(drv) else { return };
    let copied = async {
        let Some(log) = nix::store::build_log(&drv, store, ingest::attached::MAX_DRV_LOG).await? else {
            return Ok(false);
        };
        let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from(log))]);
        ingest::attached::drv_log(state.cache(), &drv, body).await?;
        Ok::<_, PublishError>(true)
    };
    match copied.await {
        Ok(true) => tracing::debug!(%drv, "build log copied"),
        Ok(false) => {}
        Err(e) => tracing::warn!(%drv, error = %e, "cannot copy the build log"),
    }
}
