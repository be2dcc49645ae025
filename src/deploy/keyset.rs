//! PURE: the set of deploy keys an agent trusts, and the only way it changes: a key
//! announcement signed by a key the agent already trusts.
//!
//! An announcement is its own signed JSON text (like a manifest, the signature covers the
//! exact bytes, so no canonical form is needed), carried beside a manifest in its envelope,
//! never inside the manifest body: a manifest's `version` (and an old agent, which asks for no
//! announcement) is untouched by rotation. It says, at an `epoch` that only grows, which keys
//! sign manifests from now on and which keys are retired. An agent applies it only when
//! - one of its signatures verifies with a key the agent trusts *before* applying it (an
//!   announcement signed only by the key it introduces, or by nobody the agent knows, is
//!   refused),
//! - its epoch is newer than the agent's (a replayed older announcement is ignored, so it can
//!   never bring back a retired key), and
//! - it brings back no key the agent has retired.
//!
//! A key the agent trusted and the announcement no longer lists is retired on the agent, for
//! good: even the key in the agent's own configuration stops being trusted once retired.

use serde::{Deserialize, Serialize};

use crate::nixfmt::PublicKey;

/// The request header in which an agent lists the deploy keys it trusts, comma-separated in
/// Nix's public-key format. Sending it asks for the key announcement, and is the host's
/// acknowledgement of those keys.
pub const KEYS_HEADER: &str = "x-berth-deploy-keys";

/// The most keys an announcement, an acknowledgement or an agent's trust set holds.
pub const MAX_KEYS: usize = 8;

/// The most retired keys an agent remembers (the oldest are forgotten first).
pub const MAX_RETIRED: usize = 64;

/// The largest announcement text accepted (bytes).
pub const MAX_ANNOUNCEMENT_BYTES: usize = 4096;

/// The largest [`KEYS_HEADER`] value accepted (bytes).
pub const MAX_HEADER_BYTES: usize = 1024;

/// Why an announcement or an acknowledgement is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeySetError {
    /// No signature verifies with a key the agent trusts.
    #[error("key announcement is not signed by a trusted deploy key")]
    Untrusted,
    /// Too large, or too many keys or signatures.
    #[error("key announcement or key list too large: {0}")]
    TooLarge(String),
    /// Signed, but not a valid announcement.
    #[error("malformed key announcement: {0}")]
    Malformed(String),
    /// Lists a key this agent has retired.
    #[error("key announcement brings back the retired key {0}")]
    Revived(String),
}

/// What the server announces: the keys that sign manifests, and the keys retired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announcement {
    /// Grows with every change of the server's key set.
    pub epoch: u64,
    /// Public keys (Nix format) that may sign manifests.
    pub keys: Vec<String>,
    /// Public keys (Nix format) that never may again.
    #[serde(default)]
    pub retired: Vec<String>,
}

/// An announcement as served: its JSON text and one signature per signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedAnnouncement {
    /// The announcement's JSON text; the signed bytes.
    pub announcement: String,
    /// `keyname:base64(ed25519 signature)`, one per key.
    pub signatures: Vec<String>,
}

impl Announcement {
    /// Signs the announcement with every key in `keys`.
    pub fn sign(&self, keys: &[&crate::nixfmt::SecretKey]) -> SignedAnnouncement {
        let announcement = serde_json::to_string(self).expect("an announcement always serialises");
        let signatures = keys.iter().map(|k| k.sign(announcement.as_bytes())).collect();
        SignedAnnouncement { announcement, signatures }
    }
}

/// The trust set as the agent persists it (in its state directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustFile {
    /// The epoch of the last announcement applied (0: none).
    pub epoch: u64,
    /// Announced keys (Nix format).
    pub keys: Vec<String>,
    /// Retired keys (Nix format).
    pub retired: Vec<String>,
}

/// The deploy keys an agent trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustSet {
    epoch: u64,
    keys: Vec<PublicKey>,
    retired: Vec<String>,
}

/// What applying an announcement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Not newer than what the agent holds: ignored (every manifest carries the current one).
    Unchanged,
    /// The new set, to persist.
    Updated(TrustSet),
}

fn parse_keys(keys: &[String]) -> Result<Vec<PublicKey>, KeySetError> {
    if keys.len() > MAX_KEYS {
        return Err(KeySetError::TooLarge(format!("{} keys, at most {MAX_KEYS}", keys.len())));
    }
    keys.iter().map(|k| PublicKey::parse(k).map_err(|e| KeySetError::Malformed(format!("key {k:?}: {e}")))).collect()
}

impl TrustSet {
    /// The agent's configured keys, before any announcement.
    pub fn configured(keys: &[PublicKey]) -> Self {
        let mut set = Self { epoch: 0, keys: Vec::new(), retired: Vec::new() };
        for k in keys {
            set.add(k.clone());
        }
        set
    }

    /// The configured keys plus what the agent persisted.
    pub fn restore(configured: &[PublicKey], file: &TrustFile) -> Result<Self, KeySetError> {
        let mut set = Self::configured(configured);
        set.epoch = file.epoch;
        for k in parse_keys(&file.keys)? {
            set.add(k);
        }
        set.retired = file.retired.iter().rev().take(MAX_RETIRED).rev().cloned().collect();
        Ok(set)
    }

    /// The persisted form.
    pub fn to_file(&self) -> TrustFile {
        TrustFile {
            epoch: self.epoch,
            keys: self.keys.iter().map(PublicKey::to_nix_string).collect(),
            retired: self.retired.clone(),
        }
    }

    fn add(&mut self, key: PublicKey) {
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
    }

    fn is_retired(&self, key: &PublicKey) -> bool {
        self.retired.contains(&key.to_nix_string())
    }

    /// The keys that may sign a manifest now: every known key not retired.
    pub fn trusted(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.iter().filter(|k| !self.is_retired(k))
    }

    /// The epoch of the last announcement applied.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The trusted key one of `signatures` of `message` verifies with, if any.
    pub fn verifies<'a>(&'a self, message: &[u8], signatures: &[&str]) -> Option<&'a PublicKey> {
        self.trusted().find(|k| signatures.iter().take(MAX_KEYS).any(|s| k.verify(message, s)))
    }

    /// The [`KEYS_HEADER`] value: the trusted keys, comma-separated.
    pub fn header(&self) -> String {
        self.trusted().map(PublicKey::to_nix_string).collect::<Vec<_>>().join(",")
    }

    /// Applies an announcement (see the module comment for the rules).
    pub fn apply(&self, signed: &SignedAnnouncement) -> Result<Applied, KeySetError> {
        if signed.announcement.len() > MAX_ANNOUNCEMENT_BYTES {
            return Err(KeySetError::TooLarge(format!("{} bytes", signed.announcement.len())));
        }
        if signed.signatures.len() > MAX_KEYS {
            return Err(KeySetError::TooLarge(format!("{} signatures", signed.signatures.len())));
        }
        let signatures: Vec<&str> = signed.signatures.iter().map(String::as_str).collect();
        if self.verifies(signed.announcement.as_bytes(), &signatures).is_none() {
            return Err(KeySetError::Untrusted);
        }
        let announced: Announcement =
            serde_json::from_str(&signed.announcement).map_err(|e| KeySetError::Malformed(e.to_string()))?;
        if announced.epoch <= self.epoch {
            return Ok(Applied::Unchanged);
        }
        let keys = parse_keys(&announced.keys)?;
        if keys.is_empty() {
            return Err(KeySetError::Malformed("announces no key".into()));
        }
        if announced.retired.len() > MAX_RETIRED {
            return Err(KeySetError::TooLarge(format!("{} retired keys", announced.retired.len())));
        }
        parse_keys(&announced.retired.iter().take(MAX_KEYS).cloned().collect::<Vec<_>>())?;
        let mut retired = self.retired.clone();
        let newly: Vec<String> = self
            .keys
            .iter()
            .filter(|k| !keys.contains(k))
            .map(PublicKey::to_nix_string)
            .chain(announced.retired.iter().cloned())
            .collect();
        for r in newly {
            if !retired.contains(&r) {
                retired.push(r);
            }
        }
        if let Some(back) = keys.iter().map(PublicKey::to_nix_string).find(|k| retired.contains(k)) {
            return Err(KeySetError::Revived(back));
        }
        let excess = retired.len().saturating_sub(MAX_RETIRED);
        retired.drain(..excess);
        Ok(Applied::Updated(Self { epoch: announced.epoch, keys, retired }))
    }
}

/// Parses an agent's [`KEYS_HEADER`] (its acknowledgement) into the keys it trusts.
pub fn parse_header(value: &str) -> Result<Vec<PublicKey>, KeySetError> {
    if value.len() > MAX_HEADER_BYTES {
        return Err(KeySetError::TooLarge(format!("{} bytes", value.len())));
    }
    let keys: Vec<String> = value.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect();
    parse_keys(&keys)
}

#[cfg(test)]
#[path = "keyset_tests.rs"]
mod tests;
