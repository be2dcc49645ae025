//! PURE SSH host public keys as a host sends them at enrollment: exactly one
//! `ssh-ed25519 <base64>` key (an optional comment is dropped), whose decoded blob is the SSH
//! wire form (`string "ssh-ed25519"`, `string key`) of a 32-byte key. Anything else — other
//! key types, bad base64, a blob whose inner type disagrees, a second line, control
//! characters — is refused, so what is recorded can be pasted into an agenix `secrets.nix`
//! or given to `age -r` without smuggling a second recipient or a line of its own.

use std::fmt;

use base64::{engine::general_purpose::STANDARD, Engine as _};

const KEY_TYPE: &str = "ssh-ed25519";
/// Longest key line accepted (a real one with a long comment is ~120 bytes).
pub const MAX_LEN: usize = 1024;

/// A validated ed25519 SSH public key, stored and printed as `ssh-ed25519 <base64>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    key: [u8; 32],
}

/// Why a key line is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostKeyError {
    /// Longer than [`MAX_LEN`].
    #[error("the SSH host key is longer than {MAX_LEN} bytes")]
    TooLong,
    /// A newline or another control character.
    #[error("the SSH host key must be one line without control characters")]
    NotOneLine,
    /// Not `ssh-ed25519`.
    #[error("the SSH host key must be of type ssh-ed25519 (/etc/ssh/ssh_host_ed25519_key.pub)")]
    WrongType,
    /// Bad base64, or a blob that is not an ed25519 key.
    #[error("the SSH host key's base64 is not an ed25519 public key")]
    BadBlob,
}

impl HostKey {
    /// Parses one `ssh-ed25519 AAAA… [comment]` line (a trailing newline is allowed).
    pub fn parse(line: &str) -> Result<Self, HostKeyError> {
        if line.len() > MAX_LEN {
            return Err(HostKeyError::TooLong);
        }
        let line = line.strip_suffix('\n').unwrap_or(line);
        if line.chars().any(char::is_control) {
            return Err(HostKeyError::NotOneLine);
        }
        let mut fields = line.split(' ').filter(|f| !f.is_empty());
        if fields.next() != Some(KEY_TYPE) {
            return Err(HostKeyError::WrongType);
        }
        let blob = STANDARD.decode(fields.next().ok_or(HostKeyError::BadBlob)?).map_err(|_| HostKeyError::BadBlob)?;
        Self::from_blob(&blob).ok_or(HostKeyError::BadBlob)
    }

    fn from_blob(blob: &[u8]) -> Option<Self> {
        let (kind, rest) = read_string(blob)?;
        let (key, rest) = read_string(rest)?;
        if kind != KEY_TYPE.as_bytes() || !rest.is_empty() {
            return None;
        }
        Some(Self { key: key.try_into().ok()? })
    }

    fn blob(&self) -> Vec<u8> {
        let mut blob = Vec::with_capacity(51);
        for part in [KEY_TYPE.as_bytes(), &self.key] {
            blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
            blob.extend_from_slice(part);
        }
        blob
    }
}

/// An SSH wire `string`: a big-endian u32 length and that many bytes.
fn read_string(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let rest = &data[4..];
    (rest.len() >= len).then(|| rest.split_at(len))
}

impl fmt::Display for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_TYPE} {}", STANDARD.encode(self.blob()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real key from `ssh-keygen -t ed25519`.
    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn7MDb9JBGobzPBoiU4/gmrmYExASOzH7cfoOHrSheB";

    #[track_caller]
    fn check(line: &str, expected: Result<&str, HostKeyError>) {
        assert_eq!(HostKey::parse(line).map(|k| k.to_string()), expected.map(str::to_owned), "{line:?}");
    }

    #[test]
    fn host_keys() {
        check(KEY, Ok(KEY));
        check(&format!("{KEY} root@web-1\n"), Ok(KEY));
        check(&format!("{KEY}  "), Ok(KEY));
        check(&format!("{KEY}\nssh-ed25519 AAAA other"), Err(HostKeyError::NotOneLine));
        check(&format!("{KEY} root@web-1\r"), Err(HostKeyError::NotOneLine));
        check(&format!("{KEY}\n\n"), Err(HostKeyError::NotOneLine));
        check(&KEY.replace("ssh-ed25519 ", "ssh-rsa "), Err(HostKeyError::WrongType));
        check("", Err(HostKeyError::WrongType));
        check("ssh-ed25519", Err(HostKeyError::BadBlob));
        check("ssh-ed25519 !!!!", Err(HostKeyError::BadBlob));
        check(&format!("{} x", "A".repeat(MAX_LEN)), Err(HostKeyError::TooLong));
        // A 31-byte key, a trailing byte, and an RSA blob under the ed25519 name.
        let blob = |kind: &[u8], key: &[u8], extra: &[u8]| {
            let mut b = Vec::new();
            for part in [kind, key] {
                b.extend_from_slice(&(part.len() as u32).to_be_bytes());
                b.extend_from_slice(part);
            }
            b.extend_from_slice(extra);
            format!("ssh-ed25519 {}", STANDARD.encode(b))
        };
        check(&blob(b"ssh-ed25519", &[7; 31], b""), Err(HostKeyError::BadBlob));
        check(&blob(b"ssh-ed25519", &[7; 32], b"x"), Err(HostKeyError::BadBlob));
        check(&blob(b"ssh-rsa", &[7; 32], b""), Err(HostKeyError::BadBlob));
        assert!(HostKey::parse(&blob(b"ssh-ed25519", &[7; 32], b"")).is_ok());
        // A length field pointing past the end.
        check(&format!("ssh-ed25519 {}", STANDARD.encode([0, 0, 0, 99, 1])), Err(HostKeyError::BadBlob));
    }
}
