//! PURE enrollment codes: how they are made, written, parsed and hashed. A code is
//! `berth_enroll_<id>.<secret>`: `id` (64 random bits, hex) is the public handle the server
//! looks the code up by, `secret` (192 random bits) is what proves it. Only the SHA-256 of the
//! whole code is stored; the presented code's hash is compared with it in constant time, so
//! the lookup by id leaks nothing about the secret.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "berth_enroll_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 24;
/// Longest text accepted as a code (the real ones are 62 characters).
pub const MAX_LEN: usize = 128;

/// A freshly made code: the text (shown once) and what is stored.
pub struct NewCode {
    /// The code, printed once by `berth hosts add` and never stored.
    pub secret: String,
    /// The public handle.
    pub id: String,
    /// The stored hash of the whole code.
    pub hash: String,
}

/// A code as presented: its id and the hash of the whole text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedCode {
    /// The public handle to look the stored hash up by.
    pub id: String,
    /// SHA-256 (hex) of the code.
    pub hash: String,
}

/// Text that is not an enrollment code at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an enrollment code: expected berth_enroll_<id>.<secret>, as `berth hosts add` printed it")]
pub struct MalformedCode;

/// Makes a new random code.
pub fn new_code() -> Result<NewCode, getrandom::Error> {
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::getrandom(&mut id)?;
    getrandom::getrandom(&mut secret)?;
    let id = hex::encode(id);
    let secret = format!("{PREFIX}{id}.{}", URL_SAFE_NO_PAD.encode(secret));
    Ok(NewCode { hash: hash_code(&secret), id, secret })
}

/// The at-rest form of a code.
pub fn hash_code(code: &str) -> String {
    hex::encode(Sha256::digest(code.as_bytes()))
}

/// Parses a presented code (surrounding whitespace, as a file's newline, is ignored).
pub fn parse(text: &str) -> Result<PresentedCode, MalformedCode> {
    let code = text.trim();
    if code.len() > MAX_LEN {
        return Err(MalformedCode);
    }
    let (id, secret) = code.strip_prefix(PREFIX).and_then(|rest| rest.split_once('.')).ok_or(MalformedCode)?;
    let id_ok = id.len() == ID_BYTES * 2 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let secret_ok = URL_SAFE_NO_PAD.decode(secret).is_ok_and(|s| s.len() == SECRET_BYTES);
    if !id_ok || !secret_ok {
        return Err(MalformedCode);
    }
    Ok(PresentedCode { id: id.to_owned(), hash: hash_code(code) })
}

/// Whether a presented code's hash is the stored one, in time independent of where they
/// differ.
pub fn hash_matches(presented: &str, stored: &str) -> bool {
    presented.as_bytes().ct_eq(stored.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_random_parse_back_and_are_stored_hashed() {
        let (a, b) = (new_code().unwrap(), new_code().unwrap());
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.id, b.id);
        let parsed = parse(&format!("  {}\n", a.secret)).unwrap();
        assert_eq!(parsed, PresentedCode { id: a.id.clone(), hash: a.hash.clone() });
        assert!(!a.hash.contains(&a.secret) && a.hash.len() == 64);
        assert!(a.secret.len() <= MAX_LEN);
    }

    #[track_caller]
    fn refused(text: &str) {
        assert_eq!(parse(text), Err(MalformedCode), "{text:?}");
    }

    #[test]
    fn malformed_codes_are_refused() {
        let good = new_code().unwrap().secret;
        let (id, secret) = good.strip_prefix(PREFIX).unwrap().split_once('.').unwrap();
        refused("");
        refused(&good.replace(PREFIX, "berth_"));
        refused(&format!("{PREFIX}{id}{secret}"));
        refused(&format!("{PREFIX}{}.{secret}", id.to_uppercase()));
        refused(&format!("{PREFIX}{}.{secret}", &id[1..]));
        refused(&format!("{PREFIX}{id}.{}", &secret[2..]));
        refused(&format!("{PREFIX}{id}.{secret}x"));
        refused(&format!("{PREFIX}{id}.{secret}\nsecond line"));
        refused(&format!("{good}{}", "A".repeat(200)));
        // A token is not a code.
        refused(&crate::auth::new_token().unwrap().secret);
    }

    #[test]
    fn hashes_compare_exactly() {
        let a = new_code().unwrap();
        assert!(hash_matches(&a.hash, &a.hash));
        assert!(!hash_matches(&a.hash, &new_code().unwrap().hash));
        assert!(!hash_matches(&a.hash, &a.hash[..63]));
    }
}
