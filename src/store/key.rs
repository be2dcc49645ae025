//! `ObjectKey`: every object berth reads or writes, by kind. Keys are built only from
//! validated names, so no key can escape the cache root or collide across kinds. The layout
//! is the standard binary-cache layout, so the directory or bucket is itself a Nix cache.

use crate::nixfmt::{DrvName, DrvOutputId, NarFileName, StorePathHash};

/// One object in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectKey {
    /// `nix-cache-info`.
    CacheInfo,
    /// `<hash>.narinfo`.
    NarInfo(StorePathHash),
    /// `<hash>.ls`: a NAR listing uploaded by Nix (`write-nar-listing`), of a published path.
    Listing(StorePathHash),
    /// `tmp/listing-<hash>.ls`: a listing uploaded before its path was published (Nix writes
    /// it before the NAR and the narinfo); moved to `<hash>.ls` when the path is published,
    /// swept with the staging objects otherwise.
    PendingListing(StorePathHash),
    /// `nar/<file hash>.nar[.zst|.xz]`.
    Nar(NarFileName),
    /// `log/<hash>-<name>.drv`: a derivation's build log, as `nix log --store` reads it.
    DrvLog(DrvName),
    /// `realisations/<id>.doi`: a content-addressed derivation output's realisation.
    Realisation(DrvOutputId),
    /// `tmp/<uuid>`: an upload being received; never referenced by a narinfo.
    Staging(uuid::Uuid),
    /// `builds/<id>.log`: a finished build's log (outside Nix's `log/<drv>` namespace).
    BuildLog(i64),
}

impl ObjectKey {
    /// The key as a relative path in the store.
    pub fn as_path(&self) -> String {
        match self {
            Self::CacheInfo => "nix-cache-info".to_owned(),
            Self::NarInfo(h) => format!("{h}.narinfo"),
            Self::Listing(h) => format!("{h}.ls"),
            Self::PendingListing(h) => format!("tmp/listing-{h}.ls"),
            Self::Nar(n) => format!("nar/{n}"),
            Self::DrvLog(d) => format!("log/{d}"),
            Self::Realisation(id) => format!("realisations/{id}.doi"),
            Self::Staging(id) => format!("tmp/{id}"),
            Self::BuildLog(id) => format!("builds/{id}.log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nixfmt::Compression;

    #[test]
    fn layout_is_the_binary_cache_layout() {
        let h = StorePathHash::parse("0c6kzph7l0dcbqmjknjmggwd3ggi7mrl").unwrap();
        let n = NarFileName::for_file_hash(&[0; 32], Compression::Zstd);
        let d = DrvName::parse("4sfan64636shh5caxxfb4szrvnjccm4x-berth-ca-test.drv").unwrap();
        let r =
            DrvOutputId::parse("sha256:6d161a696804eea3ae7c49c819ea25accc284ab3a0b16450d3feb62b8f5f7174!out").unwrap();
        let keys = [
            ObjectKey::CacheInfo,
            ObjectKey::NarInfo(h.clone()),
            ObjectKey::Listing(h),
            ObjectKey::Nar(n),
            ObjectKey::DrvLog(d),
            ObjectKey::Realisation(r),
        ];
        let paths: Vec<_> = keys.iter().map(ObjectKey::as_path).collect();
        insta::assert_debug_snapshot!(paths, @r#"
        [
            "nix-cache-info",
            "0c6kzph7l0dcbqmjknjmggwd3ggi7mrl.narinfo",
            "0c6kzph7l0dcbqmjknjmggwd3ggi7mrl.ls",
            "nar/0000000000000000000000000000000000000000000000000000.nar.zst",
            "log/4sfan64636shh5caxxfb4szrvnjccm4x-berth-ca-test.drv",
            "realisations/sha256:6d161a696804eea3ae7c49c819ea25accc284ab3a0b16450d3feb62b8f5f7174!out.doi",
        ]
        "#);
    }
}
