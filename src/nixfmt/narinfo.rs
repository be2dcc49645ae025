//! `PathInfo`: one store path's narinfo, parsed from what a client uploads or built from what
//! `berth push` claims, and signed with the cache key. Wraps `nix-narinfo`, which writes the
//! canonical field order and computes the exact fingerprint Nix signs:
//! `1;<path>;<NarHash>;<NarSize>;<comma-separated references>`.

use nix_derivation::{CAHash, NixHash, StoreDir, StorePath};
use nix_narinfo::{Compression as NiCompression, NarInfo, NixSignature};

use super::{Compression, NarFileName, PublicKey, SecretKey, StorePathHash};

/// Why a narinfo (or a push claim) was refused.
#[derive(Debug, thiserror::Error)]
pub enum NarInfoError {
    /// The text is not a valid narinfo.
    #[error("malformed narinfo: {0}")]
    Parse(#[from] nix_narinfo::ParseError),
    /// A field holds a value that cannot be part of a valid narinfo.
    #[error("invalid {field}: {reason}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What was wrong with it.
        reason: String,
    },
}

fn field(field: &'static str, reason: impl ToString) -> NarInfoError {
    NarInfoError::Field { field, reason: reason.to_string() }
}

/// What `berth push` claims about a path before its NAR arrives; verified against the NAR.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathClaim {
    /// Absolute store path.
    pub path: String,
    /// `sha256:<nixbase32>` (or SRI) of the uncompressed NAR.
    pub nar_hash: String,
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
    /// Absolute store paths this path references.
    #[serde(default)]
    pub references: Vec<String>,
    /// The deriver, if known.
    #[serde(default)]
    pub deriver: Option<String>,
    /// Content address (`fixed:r:sha256:…`), if any.
    #[serde(default)]
    pub ca: Option<String>,
    /// Signatures the client already has (`name:base64`), kept beside berth's own.
    #[serde(default)]
    pub signatures: Vec<String>,
}

impl PathClaim {
    /// Checks every field that can be checked without the NAR (paths, hash algorithm, `ca`,
    /// signatures) and returns the NAR's claimed SHA-256 and size, which the NAR must then
    /// match: a claim is refused before a byte of its NAR is read whenever it can be.
    pub fn checked_nar(&self) -> Result<super::NarDigest, NarInfoError> {
        // Any stored file will do: only the claim's own fields are checked.
        let placeholder = NarFileInfo {
            name: NarFileName::for_file_hash(&[0; 32], Compression::Zstd),
            file_sha256: [0; 32],
            file_size: 0,
        };
        let info = PathInfo::from_claim(self, &placeholder)?;
        Ok(super::NarDigest { sha256: info.sha256_nar_hash()?, size: info.nar_size() })
    }
}

/// The stored NAR file a narinfo points at.
#[derive(Debug, Clone)]
pub struct NarFileInfo {
    /// File name under `nar/`.
    pub name: NarFileName,
    /// SHA-256 of the (compressed) file.
    pub file_sha256: [u8; 32],
    /// Size of the (compressed) file.
    pub file_size: u64,
}

/// A validated narinfo for one store path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    inner: NarInfo,
}

fn parse_path(name: &'static str, s: &str) -> Result<StorePath, NarInfoError> {
    let path = if s.starts_with('/') {
        StorePath::from_absolute_path(s.as_bytes())
    } else {
        StorePath::from_basename(s.as_bytes())
    };
    path.map_err(|e| field(name, e))
}

impl PathInfo {
    /// Parses a narinfo as a client uploads it (`PUT /<hash>.narinfo`).
    pub fn parse(bytes: &[u8]) -> Result<Self, NarInfoError> {
        let inner = NarInfo::parse_in(&StoreDir::default(), bytes)?;
        // A `Sig:` line that is not `name:base64` is a lie about who signed (the parser
        // keeps it as it comes, however the line is spaced): refused, as the push API
        // refuses it.
        for sig in inner.signatures() {
            NixSignature::parse(&format!("{}:{}", sig.key_name, sig.encoded)).map_err(|e| field("Sig", e))?;
        }
        let info = Self { inner };
        info.sha256_nar_hash()?;
        Ok(info)
    }

    /// Builds the narinfo for a claimed path whose NAR is stored as `file`.
    pub fn from_claim(claim: &PathClaim, file: &NarFileInfo) -> Result<Self, NarInfoError> {
        let path = parse_path("path", &claim.path)?;
        let nar_hash = NixHash::parse(&claim.nar_hash).map_err(|e| field("narHash", e))?;
        let references = claim.references.iter().map(|r| parse_path("references", r)).collect::<Result<Vec<_>, _>>()?;
        let deriver = claim.deriver.as_deref().map(|d| parse_path("deriver", d)).transpose()?;
        let ca = claim.ca.as_deref().map(|c| CAHash::parse(c).map_err(|e| field("ca", e))).transpose()?;
        let signatures = claim
            .signatures
            .iter()
            .map(|s| NixSignature::parse(s).map_err(|e| field("signatures", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let inner = NarInfo::builder(path, file.name.url(), nar_hash, claim.nar_size)
            .compression(to_ni(file.name.compression()))
            .file_hash(Some(NixHash::Sha256(file.file_sha256)))
            .file_size(Some(file.file_size))
            .references(references)
            .deriver(deriver)
            .content_address(ca)
            .signatures(signatures)
            .build()
            .map_err(|e| field("narinfo", e))?;
        let info = Self { inner };
        info.sha256_nar_hash()?;
        Ok(info)
    }

    /// The store path.
    pub fn store_path(&self) -> &StorePath {
        self.inner.store_path()
    }

    /// The hash part of the store path: the narinfo's key.
    pub fn hash(&self) -> StorePathHash {
        StorePathHash::of(self.inner.store_path())
    }

    /// The NAR's SHA-256 (berth only accepts SHA-256 NAR hashes, as Nix writes them).
    pub fn sha256_nar_hash(&self) -> Result<[u8; 32], NarInfoError> {
        match self.inner.nar_hash() {
            NixHash::Sha256(d) => Ok(*d),
            other => Err(field("NarHash", format!("{} is not sha256", other.algorithm()))),
        }
    }

    /// Size of the uncompressed NAR.
    pub fn nar_size(&self) -> u64 {
        self.inner.nar_size()
    }

    /// The NAR file this narinfo points at, which must be `nar/<file>` in this cache.
    pub fn nar_file(&self) -> Result<NarFileName, NarInfoError> {
        let name = self.inner.url().strip_prefix("nar/").ok_or_else(|| field("URL", "must be nar/<file>"))?;
        let file = NarFileName::parse(name).map_err(|e| field("URL", e))?;
        let declared = Compression::parse(self.inner.compression().as_str()).map_err(|e| field("Compression", e))?;
        if declared != file.compression() {
            return Err(field("Compression", "does not match the URL's suffix"));
        }
        Ok(file)
    }

    /// The declared file hash and size, when present.
    pub fn file_sha256(&self) -> Option<[u8; 32]> {
        match self.inner.file_hash() {
            Some(NixHash::Sha256(d)) => Some(*d),
            _ => None,
        }
    }

    /// The declared compressed file size, when present.
    pub fn file_size(&self) -> Option<u64> {
        self.inner.file_size()
    }

    /// References other than the path itself (which a path may reference freely).
    pub fn foreign_references(&self) -> impl Iterator<Item = StorePathHash> + '_ {
        let own = self.store_path();
        self.inner.references().iter().filter(move |r| *r != own).map(StorePathHash::of)
    }

    /// All references as basenames (`hash-name`), as the index stores them.
    pub fn reference_basenames(&self) -> Vec<String> {
        self.inner.references().iter().map(StorePath::to_basename).collect()
    }

    /// The deriver's basename, if any.
    pub fn deriver_basename(&self) -> Option<String> {
        self.inner.deriver().map(StorePath::to_basename)
    }

    /// The exact text Nix verifies signatures against.
    pub fn fingerprint(&self) -> String {
        self.inner.fingerprint(&StoreDir::default())
    }

    /// Whether any signature verifies against one of `keys`.
    pub fn has_valid_signature(&self, keys: &[PublicKey]) -> bool {
        let trusted: Vec<_> = keys.iter().map(PublicKey::trusted).collect();
        self.inner.has_valid_signature(&StoreDir::default(), &trusted)
    }

    /// Signs with `key`, replacing an older signature by a key of the same name and keeping
    /// everyone else's (a client's own signatures stay valid: the fingerprint is the same).
    pub fn signed(self, key: &SecretKey) -> Self {
        self.signed_with(key, super::OldSignatures::Keep)
    }

    /// Signs with `key`; `old` says whether the other signatures stay (`Keep`, as
    /// [`Self::signed`]) or go (`Drop`: the narinfo is left with `key`'s signature alone).
    pub fn signed_with(self, key: &SecretKey, old: super::OldSignatures) -> Self {
        let signature = key.sign_nix(self.fingerprint().as_bytes());
        let mut signatures: Vec<_> = match old {
            super::OldSignatures::Keep => {
                self.inner.signatures().iter().filter(|s| s.key_name != key.name()).cloned().collect()
            }
            super::OldSignatures::Drop => Vec::new(),
        };
        signatures.push(signature);
        let old = &self.inner;
        let inner = NarInfo::builder(old.store_path().clone(), old.url(), old.nar_hash().clone(), old.nar_size())
            .compression(old.compression().clone())
            .file_hash(old.file_hash().cloned())
            .file_size(old.file_size())
            .references(old.references().iter().cloned())
            .deriver(old.deriver().cloned())
            .content_address(old.content_address().cloned())
            .signatures(signatures)
            .extensions(old.extensions().iter().cloned())
            .build()
            .expect("rebuilding a valid narinfo with one more valid signature cannot fail");
        Self { inner }
    }

    /// The narinfo text as served to clients.
    pub fn to_text(&self) -> String {
        String::from_utf8(self.inner.to_canonical_bytes()).expect("narinfo fields are UTF-8")
    }
}

fn to_ni(c: Compression) -> NiCompression {
    match c {
        Compression::None => NiCompression::None,
        Compression::Xz => NiCompression::Xz,
        Compression::Zstd => NiCompression::Zstd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPLOADED: &str = "StorePath: /nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-hello
URL: nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz
Compression: xz
FileHash: sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3
FileSize: 4029
NarHash: sha256:1impfw8zdgisxkghq9a3q7cn7jb9zyzgxdydiamp8z2nlyyl0h5h
NarSize: 18488
References: 0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-hello 3n58xw4373jp0ljirf06d8077j15pc4j-glibc-2.37-8
Deriver: ydmbj8cmmyn2nfgxlbx9lb7w8zpbywzz-hello.drv
";

    #[test]
    fn parses_and_signs_an_upload() {
        let info = PathInfo::parse(UPLOADED.as_bytes()).unwrap();
        assert_eq!(info.hash().as_str(), "0c6kzph7l0dcbqmjknjmggwd3ggi7mrl");
        assert_eq!(info.nar_file().unwrap().compression(), Compression::Xz);
        let refs: Vec<_> = info.foreign_references().map(|h| h.to_string()).collect();
        assert_eq!(refs, ["3n58xw4373jp0ljirf06d8077j15pc4j"]);
        let key = SecretKey::generate("cache-1").unwrap();
        let signed = info.signed(&key);
        assert!(signed.has_valid_signature(&[key.public()]));
        assert!(!signed.has_valid_signature(&[SecretKey::generate("cache-1").unwrap().public()]));
        // Signing twice replaces, never duplicates, our signature.
        let twice = signed.clone().signed(&key);
        assert_eq!(twice.to_text().matches("Sig: cache-1:").count(), 1);
        insta::assert_snapshot!(signed.fingerprint(), @"1;/nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-hello;sha256:1impfw8zdgisxkghq9a3q7cn7jb9zyzgxdydiamp8z2nlyyl0h5h;18488;/nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-hello,/nix/store/3n58xw4373jp0ljirf06d8077j15pc4j-glibc-2.37-8");
    }

    #[test]
    fn refuses_a_malformed_signature() {
        // Found by the fuzzer: `Sig:` without its space, empty, or a tab.
        for sig in ["Sig: no-colon-here", "Sig:", "Sig:2u+fM0C2x8t8u9w0f3fC6o0VZl5y3Xb8nBw==", "Sig:\tx", "Sig: k:"] {
            let text = format!("{UPLOADED}{sig}\n");
            assert!(PathInfo::parse(text.as_bytes()).unwrap_err().to_string().contains("Sig"), "{sig:?}");
        }
    }

    #[test]
    fn refuses_a_url_outside_the_cache() {
        let text = UPLOADED.replace("URL: nar/", "URL: ../");
        let info = PathInfo::parse(text.as_bytes()).unwrap();
        assert!(info.nar_file().is_err());
        let text = UPLOADED.replace("Compression: xz", "Compression: zstd");
        assert!(PathInfo::parse(text.as_bytes()).unwrap().nar_file().is_err());
    }

    #[test]
    fn builds_from_a_claim() {
        let claim = PathClaim {
            path: "/nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-hello".into(),
            nar_hash: "sha256:1impfw8zdgisxkghq9a3q7cn7jb9zyzgxdydiamp8z2nlyyl0h5h".into(),
            nar_size: 18488,
            references: vec!["/nix/store/3n58xw4373jp0ljirf06d8077j15pc4j-glibc-2.37-8".into()],
            deriver: None,
            ca: None,
            signatures: vec![],
        };
        let file = NarFileInfo {
            name: NarFileName::for_file_hash(&[1; 32], Compression::Zstd),
            file_sha256: [1; 32],
            file_size: 10,
        };
        let info = PathInfo::from_claim(&claim, &file).unwrap();
        insta::assert_snapshot!(info.to_text(), @r"
        StorePath: /nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-hello
        URL: nar/0081040h2081040h2081040h2081040h2081040h2081040h2081.nar.zst
        Compression: zstd
        FileHash: sha256:0081040h2081040h2081040h2081040h2081040h2081040h2081
        FileSize: 10
        NarHash: sha256:1impfw8zdgisxkghq9a3q7cn7jb9zyzgxdydiamp8z2nlyyl0h5h
        NarSize: 18488
        References: 3n58xw4373jp0ljirf06d8077j15pc4j-glibc-2.37-8
        ");
        let bad = PathClaim { path: "/nix/store/../etc".into(), ..claim };
        assert!(PathInfo::from_claim(&bad, &file).is_err());
    }

    /// Fuzz target `narinfo`: any bytes; a narinfo that parses renders to text that parses
    /// to the same narinfo and renders the same again, and its accessors never panic.
    #[test]
    fn fuzz_narinfo() {
        crate::fuzz::run("narinfo", |bytes| {
            let Ok(info) = PathInfo::parse(bytes) else { return };
            let text = info.to_text();
            let again = PathInfo::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(again, info, "{text:?}");
            assert_eq!(again.to_text(), text);
            let _ = (info.nar_file(), info.sha256_nar_hash(), info.file_sha256(), info.fingerprint());
            let _ = (info.reference_basenames(), info.deriver_basename(), info.foreign_references().count());
        });
    }

    /// Fuzz target `claim`: any push-API claim (JSON); a claim whose checks pass becomes a
    /// narinfo whose text parses back with the claim's path, NAR hash, size, references
    /// and deriver.
    #[test]
    fn fuzz_claim() {
        crate::fuzz::run("claim", |bytes| {
            let Ok(claim) = serde_json::from_slice::<PathClaim>(bytes) else { return };
            let Ok(digest) = claim.checked_nar() else { return };
            let file = NarFileInfo {
                name: NarFileName::for_file_hash(&[7; 32], Compression::Zstd),
                file_sha256: [7; 32],
                file_size: 1,
            };
            let base = |p: &str| p.strip_prefix("/nix/store/").unwrap_or(p).to_owned();
            let info = PathInfo::from_claim(&claim, &file).unwrap_or_else(|e| panic!("checked, then refused: {e}"));
            let text = info.to_text();
            let parsed = PathInfo::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(parsed.store_path().to_basename(), base(&claim.path));
            assert_eq!((parsed.sha256_nar_hash().unwrap(), parsed.nar_size()), (digest.sha256, digest.size));
            let mut refs: Vec<String> = claim.references.iter().map(|r| base(r)).collect();
            refs.sort();
            refs.dedup();
            let mut got = parsed.reference_basenames();
            got.sort();
            assert_eq!(got, refs);
            assert_eq!(parsed.deriver_basename(), claim.deriver.as_deref().map(base));
        });
    }
}
