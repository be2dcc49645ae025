//! PURE Nix formats: store-path hashes, NAR file names, narinfo, cache signing keys and NAR
//! verification. No async, no I/O beyond `std::io::Read`/`Write` adapters handed in by callers.
//!
//! This is the only module that names the third-party Nix crates (`nix-archive`,
//! `nix-narinfo`, `nix-derivation`): everything else goes through the types defined or
//! re-exported here, so a crate swap touches one folder.

mod archive;
mod declared;
mod keys;
mod listing;
mod names;
mod nar;
mod narinfo;
mod realisation;
mod resign;

pub use archive::{
    read_nar, NarError, NarShape, NarWriter, MAX_NAME_BYTES, MAX_NAR_DEPTH, MAX_OPEN_NAME_BYTES, MAX_TARGET_BYTES,
};
pub use declared::{declared_memory, Declared, PEEK_BYTES};
pub use keys::{key_name, KeyError, PublicKey, SecretKey};
pub use listing::{check_listing, ListingError};
pub use names::{Compression, DrvName, NameError, NarFileName, StorePathHash};
pub use nar::{verify_nar, DecoderLimit, NarDigest, VerifyError};
pub use narinfo::{NarFileInfo, NarInfoError, PathClaim, PathInfo};
pub use realisation::{DrvOutputId, Realisation, RealisationError};
pub use resign::{resign_narinfo, OldSignatures};

/// A Nix hash (`sha256:<nixbase32>` etc.).
pub use nix_derivation::NixHash;
/// A store path (digest and name), validated by `nix-derivation`.
pub use nix_derivation::StorePath;

/// The logical store directory every narinfo of this cache lives in.
pub const STORE_DIR: &str = "/nix/store";

/// Nix base32 encoding of `bytes` (Nix's own alphabet and bit order).
pub fn nixbase32(bytes: &[u8]) -> String {
    nix_derivation::nixbase32::encode(bytes)
}

/// `sha256:<nixbase32>` for a raw SHA-256 digest, the spelling narinfo files use.
pub fn sha256_nix_string(digest: &[u8; 32]) -> String {
    format!("sha256:{}", nixbase32(digest))
}
