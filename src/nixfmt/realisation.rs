//! Realisations of content-addressed derivation outputs (`realisations/<id>.doi`): which
//! store path a derivation output (`sha256:<hex>!<output>`) was built as. Nix (2.4 and later,
//! with `ca-derivations`) uploads one beside each content-addressed path it copies and looks
//! them up before building; it trusts a realisation only when it carries a signature by a
//! trusted key, over the fingerprint Nix computes: the realisation's JSON without its
//! `signatures`, keys sorted, no whitespace (nlohmann's `dump()`), which is what serde
//! writes for the fields in the order declared below.

use std::collections::{BTreeMap, BTreeSet};

use nix_derivation::StorePath;

use super::{NameError, SecretKey, StorePathHash};

/// Longest output name accepted (Nix's store-path names are at most 211 bytes).
const MAX_OUTPUT_NAME: usize = 211;
/// Most dependent realisations one realisation may list.
const MAX_DEPENDENCIES: usize = 4096;
/// Most signatures kept on one realisation.
const MAX_SIGNATURES: usize = 64;

/// A derivation output id: `sha256:<64 hex digits>!<output name>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DrvOutputId(String);

impl DrvOutputId {
    /// Parses an id; refuses any other hash, upper-case hex, and output names outside Nix's
    /// store-path name alphabet.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let bad = || NameError::DrvOutput(s.chars().take(120).collect());
        let (hash, output) = s.split_once('!').ok_or_else(bad)?;
        let hex = hash.strip_prefix("sha256:").ok_or_else(bad)?;
        let hex_ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok || !is_output_name(output) {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as text (also the object's name, before `.doi`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DrvOutputId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An output name: what Nix allows in a store-path name, not starting with a dot.
fn is_output_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_OUTPUT_NAME
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
}

/// Why a realisation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RealisationError {
    /// Not the JSON Nix writes.
    #[error("malformed realisation: {0}")]
    Json(#[from] serde_json::Error),
    /// A field holds something no valid realisation has.
    #[error("invalid realisation {field}: {reason}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
}

fn field(field: &'static str, reason: impl ToString) -> RealisationError {
    RealisationError::Field { field, reason: reason.to_string() }
}

/// The JSON of a realisation, as Nix writes and reads it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Json {
    // Field order is the fingerprint's key order: alphabetical.
    #[serde(default)]
    dependent_realisations: BTreeMap<String, String>,
    id: String,
    out_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signatures: Option<BTreeSet<String>>,
}

/// A validated realisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Realisation {
    id: DrvOutputId,
    out_path: StorePath,
    dependencies: BTreeMap<DrvOutputId, StorePath>,
    signatures: BTreeSet<String>,
}

impl Realisation {
    /// Parses what a client uploads as `realisations/<id>.doi`.
    pub fn parse(bytes: &[u8]) -> Result<Self, RealisationError> {
        let json: Json = serde_json::from_slice(bytes)?;
        let id = DrvOutputId::parse(&json.id).map_err(|e| field("id", e))?;
        let out_path = StorePath::from_basename(json.out_path.as_bytes()).map_err(|e| field("outPath", e))?;
        if json.dependent_realisations.len() > MAX_DEPENDENCIES {
            return Err(field("dependentRealisations", format!("more than {MAX_DEPENDENCIES}")));
        }
        let dependencies = json
            .dependent_realisations
            .iter()
            .map(|(k, v)| {
                let k = DrvOutputId::parse(k).map_err(|e| field("dependentRealisations", e))?;
                let v = StorePath::from_basename(v.as_bytes()).map_err(|e| field("dependentRealisations", e))?;
                Ok((k, v))
            })
            .collect::<Result<_, RealisationError>>()?;
        let signatures = json.signatures.unwrap_or_default();
        if signatures.len() > MAX_SIGNATURES {
            return Err(field("signatures", format!("more than {MAX_SIGNATURES}")));
        }
        if let Some(bad) = signatures.iter().find(|s| !is_signature(s)) {
            return Err(field(
                "signatures",
                format!("{:?} is not name:base64", bad.chars().take(80).collect::<String>()),
            ));
        }
        Ok(Self { id, out_path, dependencies, signatures })
    }

    /// The derivation output this realises.
    pub fn id(&self) -> &DrvOutputId {
        &self.id
    }

    /// The hash part of the output path: the cache must hold that path.
    pub fn out_hash(&self) -> StorePathHash {
        StorePathHash::of(&self.out_path)
    }

    fn json(&self, with_signatures: bool) -> Json {
        Json {
            dependent_realisations: self
                .dependencies
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_basename()))
                .collect(),
            id: self.id.as_str().to_owned(),
            out_path: self.out_path.to_basename(),
            signatures: with_signatures.then(|| self.signatures.clone()),
        }
    }

    /// The text Nix signs and verifies: the JSON without signatures.
    pub fn fingerprint(&self) -> String {
        serde_json::to_string(&self.json(false)).expect("strings and maps serialise")
    }

    /// Signs with `key`, replacing an older signature by a key of that name.
    pub fn signed(mut self, key: &SecretKey) -> Self {
        let prefix = format!("{}:", key.name());
        self.signatures.retain(|s| !s.starts_with(&prefix));
        self.signatures.insert(key.sign(self.fingerprint().as_bytes()));
        self
    }

    /// The JSON served to clients.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.json(true)).expect("strings and maps serialise")
    }
}

/// `name:base64`, as Nix writes signatures (checked loosely: Nix ignores ones it cannot use).
fn is_signature(s: &str) -> bool {
    s.len() <= 512
        && s.split_once(':').is_some_and(|(name, sig)| {
            !name.is_empty() && !sig.is_empty() && sig.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Nix 2.26.3 (`nix copy --to file://…` of a `__contentAddressed` derivation).
    const UPLOADED: &str = r#"{"dependentRealisations":{},"id":"sha256:6d161a696804eea3ae7c49c819ea25accc284ab3a0b16450d3feb62b8f5f7174!out","outPath":"m1d8r08i2fggybxfjnzpb9ql4dx0911d-berth-ca-test","signatures":[]}"#;

    #[test]
    fn parses_what_nix_uploads_and_signs_the_fingerprint_nix_checks() {
        let r = Realisation::parse(UPLOADED.as_bytes()).unwrap();
        assert_eq!(r.out_hash().as_str(), "m1d8r08i2fggybxfjnzpb9ql4dx0911d");
        assert_eq!(
            r.fingerprint(),
            r#"{"dependentRealisations":{},"id":"sha256:6d161a696804eea3ae7c49c819ea25accc284ab3a0b16450d3feb62b8f5f7174!out","outPath":"m1d8r08i2fggybxfjnzpb9ql4dx0911d-berth-ca-test"}"#
        );
        let key = SecretKey::generate("cache-1").unwrap();
        let signed = r.clone().signed(&key).signed(&key);
        assert_eq!(signed.signatures.len(), 1, "signing again replaces our signature");
        let sig = signed.signatures.iter().next().unwrap();
        assert!(key.public().verify(r.fingerprint().as_bytes(), sig));
        let served = Realisation::parse(signed.to_json().as_bytes()).unwrap();
        assert_eq!(served, signed);
    }

    #[test]
    fn refuses_what_no_valid_realisation_holds() {
        let cases = [
            ("not json", "malformed"),
            (r#"{"id":"sha256:6d16!out","outPath":"m1d8r08i2fggybxfjnzpb9ql4dx0911d-x"}"#, "id"),
            (&UPLOADED.replace("!out", "!../etc"), "id"),
            (&UPLOADED.replace("!out", "!"), "id"),
            (&UPLOADED.replace("sha256:6d", "md5:6d"), "id"),
            (&UPLOADED.replace("6d161a", "6D161A"), "id"),
            (&UPLOADED.replace("m1d8r08i2", "../../etc"), "outPath"),
            (&UPLOADED.replace("-berth-ca-test", "-€"), "outPath"),
            (&UPLOADED.replace(r#""signatures":[]"#, r#""signatures":["no colon"]"#), "signatures"),
            (&UPLOADED.replace(r#""signatures":[]"#, r#""extra":1"#), "unknown field"),
            (&UPLOADED.replace("{}", r#"{"x":"y"}"#), "dependentRealisations"),
        ];
        for (text, wanted) in cases {
            let err = Realisation::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }

    #[test]
    fn output_ids_are_names_safe_for_keys() {
        let hex = "6d161a696804eea3ae7c49c819ea25accc284ab3a0b16450d3feb62b8f5f7174";
        for good in ["out", "dev", "lib.so-1_2+x?=y"] {
            assert!(DrvOutputId::parse(&format!("sha256:{hex}!{good}")).is_ok(), "{good}");
        }
        for bad in [".hidden", "a/b", "a b", "", &"x".repeat(212)] {
            assert!(DrvOutputId::parse(&format!("sha256:{hex}!{bad}")).is_err(), "{bad}");
        }
        assert!(DrvOutputId::parse(&format!("sha256:{}!out", &hex[1..])).is_err());
    }

    /// Fuzz target `realisation`: any bytes; a realisation that parses renders to JSON that
    /// parses to the same realisation.
    #[test]
    fn fuzz_realisation() {
        crate::fuzz::run("realisation", |bytes| {
            if let Ok(id) = DrvOutputId::parse(&String::from_utf8_lossy(bytes)) {
                assert_eq!(DrvOutputId::parse(id.as_str()).as_ref(), Ok(&id));
            }
            let Ok(r) = Realisation::parse(bytes) else { return };
            let json = r.to_json();
            let again = Realisation::parse(json.as_bytes()).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(again, r);
            let _ = (r.fingerprint(), r.out_hash());
        });
    }
}
