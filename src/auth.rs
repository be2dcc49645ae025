//! PURE access rules: token scopes, what each scope allows, and how tokens are made and
//! hashed. Tokens are 256-bit random secrets, so a plain SHA-256 is a sufficient at-rest hash
//! (no password stretching needed); only the hash is ever stored.

use std::fmt;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Read a private cache.
    Read,
    /// Upload paths (and read).
    Push,
    /// Submit builds for allow-listed repositories.
    Ci,
    /// Read one host's manifest and report its status (and read the cache).
    Host(String),
    /// Scrape `/metrics` (when it is not public), nothing else: what a Prometheus server
    /// holds.
    Metrics,
    /// Everything.
    Admin,
}

/// A scope string that is not one of the known forms.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown scope {0:?}: expected read, push, ci, metrics, admin or host:<name>")]
pub struct ScopeError(String);

impl Scope {
    /// Parses `read`, `push`, `ci`, `metrics`, `admin` or `host:<name>`.
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        match s {
            "read" => Ok(Self::Read),
            "push" => Ok(Self::Push),
            "ci" => Ok(Self::Ci),
            "metrics" => Ok(Self::Metrics),
            "admin" => Ok(Self::Admin),
            _ => match s.strip_prefix("host:") {
                Some(name) if valid_host_name(name) => Ok(Self::Host(name.to_owned())),
                _ => Err(ScopeError(s.chars().take(80).collect())),
            },
        }
    }

    /// Whether a token of this scope may do what `needed` requires.
    pub fn allows(&self, needed: &Scope) -> bool {
        match (self, needed) {
            (Self::Admin, _) => true,
            (a, b) if a == b => true,
            (Self::Push | Self::Host(_), Self::Read) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read => f.write_str("read"),
            Self::Push => f.write_str("push"),
            Self::Ci => f.write_str("ci"),
            Self::Metrics => f.write_str("metrics"),
            Self::Admin => f.write_str("admin"),
            Self::Host(name) => write!(f, "host:{name}"),
        }
    }
}

/// Host names as NixOS allows them in `networking.hostName`.
pub fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A freshly made token: the secret (shown once) and what is stored.
pub struct NewToken {
    /// The bearer secret, printed once and never stored.
    pub secret: String,
    /// The stored hash of the secret.
    pub hash: String,
    /// A short public identifier for `token list` and `token revoke`.
    pub id: String,
}

/// Makes a new random token.
pub fn new_token() -> Result<NewToken, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    let secret = format!("berth_{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = hash_token(&secret);
    let id = hash[..12].to_owned();
    Ok(NewToken { secret, hash, id })
}

/// The at-rest form of a token.
pub fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(token: &str, needed: &str, allowed: bool) {
        let (t, n) = (Scope::parse(token).unwrap(), Scope::parse(needed).unwrap());
        assert_eq!(t.allows(&n), allowed, "{token} for {needed}");
    }

    #[test]
    fn scope_rules() {
        check("admin", "push", true);
        check("admin", "host:a", true);
        check("push", "read", true);
        check("push", "ci", false);
        check("ci", "push", false);
        check("ci", "read", false);
        check("read", "push", false);
        check("host:a", "host:a", true);
        check("host:a", "host:b", false);
        check("host:a", "read", true);
        check("host:a", "push", false);
        check("metrics", "metrics", true);
        check("admin", "metrics", true);
        check("metrics", "read", false);
        check("read", "metrics", false);
        check("push", "metrics", false);
    }

    #[test]
    fn scope_parsing() {
        assert!(Scope::parse("host:").is_err());
        assert!(Scope::parse("host:../x").is_err());
        assert!(Scope::parse("root").is_err());
        assert_eq!(Scope::parse("host:web-1").unwrap().to_string(), "host:web-1");
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a.secret, b.secret);
        assert_eq!(hash_token(&a.secret), a.hash);
        assert!(!a.hash.contains(&a.secret));
    }
}
