//! Binary-cache signing keys in Nix's own format, `name:base64(bytes)`: a secret key is the
//! 32-byte seed followed by the 32-byte public key (as `nix-store --generate-binary-cache-key`
//! writes it), a public key is the 32 public bytes. Keys made by Nix load here and keys made
//! here load in Nix.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use nix_narinfo::{NixSignature, TrustedPublicKey};

/// Why a key was refused. Never contains key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// No `name:` prefix.
    #[error("key has no `name:` prefix")]
    MissingName,
    /// The name is empty or contains characters Nix would misread.
    #[error("key name must be non-empty and contain no ':' or whitespace")]
    BadName,
    /// Not base64.
    #[error("key material is not valid base64")]
    Base64,
    /// Wrong number of bytes.
    #[error("key material has {got} bytes, expected {expected}")]
    Length {
        /// Bytes found.
        got: usize,
        /// Bytes required.
        expected: usize,
    },
    /// The public half does not belong to the secret half, or is not a curve point.
    #[error("key material is not a valid ed25519 key")]
    Invalid,
    /// The operating system's random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
}

/// The name part of a key in Nix's `name:base64` format (all of it when there is no `:`),
/// for showing a key without its material.
pub fn key_name(text: &str) -> &str {
    text.split_once(':').map_or(text, |(name, _)| name)
}

fn split_name(s: &str) -> Result<(&str, &str), KeyError> {
    let (name, material) = s.trim().split_once(':').ok_or(KeyError::MissingName)?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(KeyError::BadName);
    }
    Ok((name, material))
}

fn decode(material: &str, expected: usize) -> Result<Vec<u8>, KeyError> {
    let bytes = STANDARD.decode(material).map_err(|_| KeyError::Base64)?;
    if bytes.len() != expected {
        return Err(KeyError::Length { got: bytes.len(), expected });
    }
    Ok(bytes)
}

/// A cache (or deploy) signing key. `Debug` does not print the secret.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({}:…)", self.name)
    }
}

impl SecretKey {
    /// Generates a new key from the operating system's random source.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        if name.is_empty() || name.contains(':') || name.contains(char::is_whitespace) {
            return Err(KeyError::BadName);
        }
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self { name: name.to_owned(), key: SigningKey::from_bytes(&seed) })
    }

    /// Parses Nix's secret-key format (`name:base64(seed ‖ public)`).
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, material) = split_name(s)?;
        let bytes = decode(material, 64)?;
        let seed: [u8; 32] = bytes[..32].try_into().expect("length checked");
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes()[..] != bytes[32..] {
            return Err(KeyError::Invalid);
        }
        Ok(Self { name: name.to_owned(), key })
    }

    /// The key's name, as it appears before the `:` of every signature.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The secret key in Nix's format. Write it to a file with mode 0600, never to a log.
    pub fn to_nix_string(&self) -> String {
        let mut bytes = self.key.to_bytes().to_vec();
        bytes.extend_from_slice(self.key.verifying_key().as_bytes());
        format!("{}:{}", self.name, STANDARD.encode(bytes))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey { name: self.name.clone(), key: self.key.verifying_key() }
    }

    /// Signs `message` and returns the signature as `name:base64`.
    pub fn sign(&self, message: &[u8]) -> String {
        let signature = self.key.sign(message);
        format!("{}:{}", self.name, STANDARD.encode(signature.to_bytes()))
    }

    pub(super) fn sign_nix(&self, message: &[u8]) -> NixSignature {
        let signature = self.key.sign(message);
        NixSignature::from_bytes(self.name.clone(), &signature.to_bytes())
            .expect("name validated at construction, signature non-empty")
    }
}

/// A public key that signatures are checked against (`trusted-public-keys` in nix.conf).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses Nix's public-key format (`name:base64(32 bytes)`).
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, material) = split_name(s)?;
        let bytes: [u8; 32] = decode(material, 32)?.try_into().expect("length checked");
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Invalid)?;
        Ok(Self { name: name.to_owned(), key })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public key in Nix's format, as written in `trusted-public-keys`.
    pub fn to_nix_string(&self) -> String {
        format!("{}:{}", self.name, STANDARD.encode(self.key.as_bytes()))
    }

    /// Whether `signature` (`name:base64`) is a valid signature of `message` by this key.
    pub fn verify(&self, message: &[u8], signature: &str) -> bool {
        NixSignature::parse(signature).ok().and_then(|sig| sig.verify(message, &[self.trusted()]).ok()).unwrap_or(false)
    }

    pub(super) fn trusted(&self) -> TrustedPublicKey {
        TrustedPublicKey { name: self.name.clone(), key: self.key }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_name_is_what_precedes_its_material() {
        assert_eq!(key_name("berth-deploy-2:Yf0fyBCP="), "berth-deploy-2");
        assert_eq!(key_name("no-material"), "no-material");
        assert_eq!(key_name("a:b:c"), "a");
        assert_eq!(key_name(""), "");
    }

    // Generated with `nix-store --generate-binary-cache-key test-1 sk pk` (Nix 2.8).
    const NIX_SECRET: &str =
        "test-1:oWDaGUCvaadgZRIHtKjoEOMQKS72oU7exBtfIwns2jukDXyugTe8sHXWR3WlYGxLqM1pPE2wsRgFre8V37tHzg==";
    const NIX_PUBLIC: &str = "test-1:pA18roE3vLB11kd1pWBsS6jNaTxNsLEYBa3vFd+7R84=";

    #[test]
    fn loads_keys_made_by_nix() {
        let secret = SecretKey::parse(NIX_SECRET).unwrap();
        assert_eq!(secret.public().to_nix_string(), NIX_PUBLIC);
        assert_eq!(secret.to_nix_string(), NIX_SECRET);
        let public = PublicKey::parse(NIX_PUBLIC).unwrap();
        let signature = secret.sign(b"1;/nix/store/x;sha256:y;1;");
        assert!(public.verify(b"1;/nix/store/x;sha256:y;1;", &signature));
        assert!(!public.verify(b"1;/nix/store/x;sha256:y;2;", &signature));
    }

    #[test]
    fn generated_keys_round_trip() {
        let secret = SecretKey::generate("cache.example-1").unwrap();
        let again = SecretKey::parse(&secret.to_nix_string()).unwrap();
        assert_eq!(again.public(), secret.public());
        assert!(format!("{secret:?}").len() < 40, "Debug must not print the secret");
    }

    #[track_caller]
    fn check_refused(input: &str, expected: KeyError) {
        assert_eq!(PublicKey::parse(input).unwrap_err(), expected);
    }

    #[test]
    fn refuses_bad_public_keys() {
        check_refused("nokey", KeyError::MissingName);
        check_refused(":AAAA", KeyError::BadName);
        check_refused("a:!!!", KeyError::Base64);
        check_refused("a:AAAA", KeyError::Length { got: 3, expected: 32 });
    }

    #[test]
    fn refuses_mismatched_secret_halves() {
        let a = SecretKey::generate("a").unwrap().to_nix_string();
        let b = SecretKey::generate("a").unwrap().to_nix_string();
        let bytes_a = STANDARD.decode(&a[2..]).unwrap();
        let bytes_b = STANDARD.decode(&b[2..]).unwrap();
        let mixed = [&bytes_a[..32], &bytes_b[32..]].concat();
        let input = format!("a:{}", STANDARD.encode(mixed));
        assert_eq!(SecretKey::parse(&input).unwrap_err(), KeyError::Invalid);
    }
}
