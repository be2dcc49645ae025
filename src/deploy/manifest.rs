//! PURE: deploy manifests. For every generation the server issues a manifest that only its
//! host needs: host, generation number, store path, commit, branch, build, time. It is signed
//! with the deploy key (ed25519, separate from the cache key). The signature covers the exact
//! bytes of the manifest's JSON text, which travels as a string, so no canonical form is
//! needed. An agent accepts a manifest only when the signature verifies with its configured
//! deploy public key, it names this host, and it is newer than what the host applied: a
//! replayed old manifest can never roll a host back (an admin rollback is a new generation).
//!
//! Version 2 adds `signer`, who signed the commit (the host logs who authorised what it
//! runs). An agent asks for it with the [`VERSION_HEADER`]; an agent that does not (berth
//! before version 2, which refuses unknown fields and versions) gets version 1, byte for
//! byte what it always got. A current agent accepts both.

use serde::{Deserialize, Serialize};

use crate::deploy::keyset::{self, Applied, KeySetError, SignedAnnouncement, TrustSet};
use crate::nixfmt::{PublicKey, SecretKey, StorePath};

/// Why an agent refuses a manifest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// No valid signature by the deploy key.
    #[error("manifest signature does not verify with the deploy public key {0}")]
    BadSignature(String),
    /// Signed, but not valid manifest JSON.
    #[error("malformed manifest: {0}")]
    Malformed(String),
    /// For another host.
    #[error("manifest is for host {got:?}, this is {expected:?}")]
    WrongHost {
        /// This host.
        expected: String,
        /// The manifest's host.
        got: String,
    },
    /// The envelope's key announcement was refused.
    #[error("{0}")]
    Keys(KeySetError),
    /// Not newer than what was applied (a replay).
    #[error("manifest generation {got} is not newer than the applied generation {applied}")]
    NotNewer {
        /// The manifest's generation.
        got: u64,
        /// The host's applied generation.
        applied: u64,
    },
}

/// The request header in which an agent names the newest manifest version it understands.
pub const VERSION_HEADER: &str = "x-berth-manifest-version";

/// The newest manifest version; [`VERSION_HEADER`] values below it get version 1.
pub const VERSION: u32 = 2;

/// What one generation of one host is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version, for future changes.
    pub version: u32,
    /// The host it is for.
    pub host: String,
    /// Its generation number (strictly increasing per host).
    pub generation: u64,
    /// The system toplevel to activate.
    pub store_path: String,
    /// The commit it was built from.
    pub commit: String,
    /// The branch that deployed it.
    pub branch: String,
    /// The build that made it (none for an admin rollback).
    pub build_id: Option<i64>,
    /// When the generation was made (Unix seconds).
    pub created_at: i64,
    /// (Version 2) The trusted signer of `commit`; absent when no signature was required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// A manifest as served: its JSON text and the deploy key's signature of that text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// The manifest's JSON text; the signed bytes.
    pub manifest: String,
    /// `keyname:base64(ed25519 signature)`: the current deploy key's.
    pub signature: String,
    /// Further signatures of the same text (the next key, during a rotation). Only for an agent
    /// that sent [`crate::deploy::keyset::KEYS_HEADER`]; absent otherwise, so an agent before
    /// rotation gets exactly what it always got.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cosignatures: Vec<String>,
    /// The server's key announcement, under the same condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<SignedAnnouncement>,
}

/// A manifest opened with a trust set, and the trust set it leaves (to persist when changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The manifest.
    pub manifest: Manifest,
    /// The trust set after the envelope's announcement, when it changed it.
    pub trust: Option<TrustSet>,
}

impl Manifest {
    /// Signs the manifest with the deploy key.
    pub fn sign(&self, key: &SecretKey) -> SignedManifest {
        let manifest = serde_json::to_string(self).expect("a manifest always serialises");
        let signature = key.sign(manifest.as_bytes());
        SignedManifest { manifest, signature, cosignatures: Vec::new(), keys: None }
    }

    /// Signs with `primary`, co-signs with `cosigners` and attaches `keys` (a rotation).
    pub fn sign_rotating(
        &self,
        primary: &SecretKey,
        cosigners: &[&SecretKey],
        keys: SignedAnnouncement,
    ) -> SignedManifest {
        let mut signed = self.sign(primary);
        signed.cosignatures = cosigners.iter().map(|k| k.sign(signed.manifest.as_bytes())).collect();
        signed.keys = Some(keys);
        signed
    }
}

impl SignedManifest {
    /// Verifies and parses, checking it is for `host` and newer than `applied`.
    pub fn open(&self, key: &PublicKey, host: &str, applied: Option<u64>) -> Result<Manifest, ManifestError> {
        if !key.verify(self.manifest.as_bytes(), &self.signature) {
            return Err(ManifestError::BadSignature(key.name().to_owned()));
        }
        self.check(host, applied)
    }

    /// Like [`SignedManifest::open`], with a set of trusted keys: the envelope's announcement
    /// is applied first (refused unless signed by a key trusted before it, see
    /// [`crate::deploy::keyset`]), then any signature by a key of the resulting set verifies.
    pub fn open_trusted(&self, trust: &TrustSet, host: &str, applied: Option<u64>) -> Result<Opened, ManifestError> {
        let changed = match &self.keys {
            Some(keys) => match trust.apply(keys).map_err(ManifestError::Keys)? {
                Applied::Updated(set) => Some(set),
                Applied::Unchanged => None,
            },
            None => None,
        };
        let set = changed.as_ref().unwrap_or(trust);
        if self.cosignatures.len() >= keyset::MAX_KEYS {
            return Err(ManifestError::Malformed(format!("{} co-signatures", self.cosignatures.len())));
        }
        let signatures: Vec<&str> =
            std::iter::once(self.signature.as_str()).chain(self.cosignatures.iter().map(String::as_str)).collect();
        if set.verifies(self.manifest.as_bytes(), &signatures).is_none() {
            return Err(ManifestError::BadSignature(set.header()));
        }
        let manifest = self.check(host, applied)?;
        Ok(Opened { manifest, trust: changed })
    }

    fn check(&self, host: &str, applied: Option<u64>) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            serde_json::from_str(&self.manifest).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        match (manifest.version, &manifest.signer) {
            (1, None) | (2, _) => {}
            (1, Some(_)) => return Err(ManifestError::Malformed("a version 1 manifest names no signer".into())),
            (version, _) => return Err(ManifestError::Malformed(format!("unsupported version {version}"))),
        }
        if manifest.store_path.parse::<StorePath>().is_err() {
            return Err(ManifestError::Malformed(format!("{:?} is not a store path", manifest.store_path)));
        }
        if manifest.host != host {
            return Err(ManifestError::WrongHost { expected: host.to_owned(), got: manifest.host });
        }
        if let Some(applied) = applied.filter(|a| manifest.generation <= *a) {
            return Err(ManifestError::NotNewer { got: manifest.generation, applied });
        }
        Ok(manifest)
    }
}

#[cfg(test)]
#[path = "manifest_rotation_tests.rs"]
mod rotation_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(host: &str, generation: u64) -> Manifest {
        Manifest {
            version: 1,
            host: host.into(),
            generation,
            store_path: "/nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-nixos-system-web".into(),
            commit: "0".repeat(40),
            branch: "main".into(),
            build_id: Some(3),
            created_at: 1_795_887_131,
            signer: None,
        }
    }

    #[test]
    fn a_signed_manifest_opens_for_its_host_only_and_only_forward() {
        let key = SecretKey::generate("deploy-1").unwrap();
        let signed = manifest("web", 5).sign(&key);
        assert_eq!(signed.open(&key.public(), "web", Some(4)).unwrap(), manifest("web", 5));
        assert_eq!(signed.open(&key.public(), "web", None).unwrap().generation, 5);
        assert_eq!(
            signed.open(&key.public(), "db", None).unwrap_err(),
            ManifestError::WrongHost { expected: "db".into(), got: "web".into() }
        );
        assert_eq!(
            signed.open(&key.public(), "web", Some(5)).unwrap_err(),
            ManifestError::NotNewer { got: 5, applied: 5 }
        );
        let other = SecretKey::generate("deploy-1").unwrap();
        assert!(matches!(signed.open(&other.public(), "web", None), Err(ManifestError::BadSignature(_))));
    }

    #[test]
    fn version_2_names_the_signer_and_version_1_stays_as_it_was() {
        let key = SecretKey::generate("deploy-1").unwrap();
        let v1 = manifest("web", 5).sign(&key);
        assert!(!v1.manifest.contains("signer"), "{}", v1.manifest);
        let v2 = Manifest { version: 2, signer: Some("alice@example.org".into()), ..manifest("web", 5) };
        let opened = v2.sign(&key).open(&key.public(), "web", None).unwrap();
        assert_eq!(opened.signer.as_deref(), Some("alice@example.org"));
        let unsigned_commit = Manifest { version: 2, ..manifest("web", 5) };
        assert_eq!(unsigned_commit.sign(&key).open(&key.public(), "web", None).unwrap().signer, None);
        let mixed = Manifest { signer: Some("alice".into()), ..manifest("web", 5) };
        assert!(matches!(mixed.sign(&key).open(&key.public(), "web", None), Err(ManifestError::Malformed(_))));
        let future = Manifest { version: 3, ..manifest("web", 5) };
        assert!(matches!(future.sign(&key).open(&key.public(), "web", None), Err(ManifestError::Malformed(_))));
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let key = SecretKey::generate("deploy-1").unwrap();
        let mut signed = manifest("web", 5).sign(&key);
        signed.manifest = signed.manifest.replace("\"generation\":5", "\"generation\":6");
        assert!(matches!(signed.open(&key.public(), "web", None), Err(ManifestError::BadSignature(_))));
        let unsigned = SignedManifest { signature: String::new(), ..signed.clone() };
        assert!(matches!(unsigned.open(&key.public(), "web", None), Err(ManifestError::BadSignature(_))));
    }
}
