//! A JWS-signed ID token: the header checked before any key is looked up (size, `alg`
//! allow-list, `kid`), then the signature verified by `jsonwebtoken` with the issuer's key.
//! Claims are decided by [`super::policy`].

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use jsonwebtoken::{jwk::Jwk, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::policy::Claims;

/// The longest token accepted (GitHub's are about 1.2 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a token is refused before its claims are read (each a 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// Over [`MAX_TOKEN_BYTES`].
    #[error("the ID token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    /// Not three base64url parts with a JSON header.
    #[error("the ID token is not a JWS compact serialization")]
    Malformed,
    /// `alg: none`.
    #[error("unsigned ID tokens (alg none) are refused")]
    Unsigned,
    /// HS256 etc.: the issuer's public key would be the HMAC secret.
    #[error("symmetric algorithm {0} is refused: only the issuer's asymmetric keys sign ID tokens")]
    Symmetric(String),
    /// Neither of the asymmetric algorithms berth knows.
    #[error("unsupported algorithm {0:?}")]
    UnknownAlgorithm(String),
    /// No `kid` in the header.
    #[error("the ID token names no key (kid)")]
    NoKeyId,
    /// The key's own `alg` (or type) is not the token's.
    #[error("key {kid:?} is not for algorithm {alg}")]
    KeyAlgorithm {
        /// The key.
        kid: String,
        /// The token's algorithm.
        alg: String,
    },
    /// The signature does not verify (or the claims are not JSON of the expected types).
    #[error("the ID token's signature does not verify with the issuer's key {0:?}")]
    Signature(String),
}

/// The checked header: which key, which algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The key id.
    pub kid: String,
    /// The algorithm.
    pub alg: Algorithm,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
}

/// Whether a presented bearer token is a JWT rather than a berth token (berth tokens are
/// hex; a JWS starts with the base64url of `{"`).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

/// PURE: the header of `token`, refused unless it names a key and an asymmetric algorithm.
pub fn header(token: &str) -> Result<Header, VerifyError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(VerifyError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(VerifyError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD.decode(head).map_err(|_| VerifyError::Malformed)?;
    let raw: RawHeader = serde_json::from_slice(&bytes).map_err(|_| VerifyError::Malformed)?;
    let alg = match raw.alg.as_str() {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        a if a.eq_ignore_ascii_case("none") => return Err(VerifyError::Unsigned),
        a if a.to_ascii_uppercase().starts_with("HS") => return Err(VerifyError::Symmetric(clip(a))),
        a => return Err(VerifyError::UnknownAlgorithm(clip(a))),
    };
    let kid = raw.kid.filter(|k| !k.is_empty()).ok_or(VerifyError::NoKeyId)?;
    if kid.len() > 256 {
        return Err(VerifyError::Malformed);
    }
    Ok(Header { kid, alg })
}

fn clip(s: &str) -> String {
    s.chars().take(16).collect()
}

/// Verifies the signature of `token` (whose [`header`] is `header`) with `key`, and returns
/// its claims. Times, issuer and audience are left to [`super::policy::check`].
pub fn verify(token: &str, header: &Header, key: &Jwk) -> Result<Claims, VerifyError> {
    let mismatch = || VerifyError::KeyAlgorithm { kid: header.kid.clone(), alg: format!("{:?}", header.alg) };
    if let Some(declared) = key.common.key_algorithm {
        if format!("{declared:?}") != format!("{:?}", header.alg) {
            return Err(mismatch());
        }
    }
    let decoding = DecodingKey::from_jwk(key).map_err(|_| mismatch())?;
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    match jsonwebtoken::decode::<Claims>(token, &decoding, &validation) {
        Ok(data) => Ok(data.claims),
        Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidAlgorithm) => Err(mismatch()),
        Err(_) => Err(VerifyError::Signature(header.kid.clone())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{jwk::JwkSet, EncodingKey};
    use ring::{
        rand::SystemRandom,
        signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING},
    };

    /// An ES256 key made in the test: its encoding key and its public JWK.
    pub(crate) fn es256_key(kid: &str) -> (EncodingKey, Jwk) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let public = pair.public_key().as_ref();
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&public[1..33]), "y": URL_SAFE_NO_PAD.encode(&public[33..65]),
        });
        (EncodingKey::from_ec_der(pkcs8.as_ref()), serde_json::from_value(jwk).unwrap())
    }

    pub(crate) fn sign(key: &EncodingKey, kid: &str, claims: &serde_json::Value) -> String {
        let mut h = jsonwebtoken::Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, key).unwrap()
    }

    fn forge_header(header: serde_json::Value, rest: &str) -> String {
        format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()))
    }

    #[test]
    fn headers() {
        let body = URL_SAFE_NO_PAD.encode(r#"{"repository":"o/r"}"#);
        let rest = format!("{body}.AAAA");
        for (header, want) in [
            (serde_json::json!({"alg":"none","kid":"k"}), Err(VerifyError::Unsigned)),
            (serde_json::json!({"alg":"NONE","kid":"k"}), Err(VerifyError::Unsigned)),
            (serde_json::json!({"alg":"HS256","kid":"k"}), Err(VerifyError::Symmetric("HS256".into()))),
            (serde_json::json!({"alg":"hs512","kid":"k"}), Err(VerifyError::Symmetric("hs512".into()))),
            (serde_json::json!({"alg":"RS1","kid":"k"}), Err(VerifyError::UnknownAlgorithm("RS1".into()))),
            (serde_json::json!({"alg":"ES256"}), Err(VerifyError::NoKeyId)),
            (serde_json::json!({"alg":"ES256","kid":""}), Err(VerifyError::NoKeyId)),
            (serde_json::json!({"alg":"ES256","kid":"k".repeat(300)}), Err(VerifyError::Malformed)),
            (serde_json::json!({"alg":5,"kid":"k"}), Err(VerifyError::Malformed)),
            (serde_json::json!({"alg":"ES256","kid":"clé"}), Ok(Header { kid: "clé".into(), alg: Algorithm::ES256 })),
        ] {
            assert_eq!(self::header(&forge_header(header.clone(), &rest)), want, "{header}");
        }
        assert_eq!(self::header(&"a".repeat(MAX_TOKEN_BYTES + 1)), Err(VerifyError::TooLong));
        assert_eq!(self::header("a.b"), Err(VerifyError::Malformed));
        assert_eq!(self::header("a.b.c.d"), Err(VerifyError::Malformed));
        assert_eq!(self::header("%%%.b.c"), Err(VerifyError::Malformed));
        assert_eq!(self::header(&format!("{}.b.c", URL_SAFE_NO_PAD.encode([0xff, 0xfe]))), Err(VerifyError::Malformed));
        assert!(looks_like_jwt("eyJh.b.c"));
        assert!(!looks_like_jwt("0123abcd"));
    }

    #[test]
    fn signatures() {
        let (key, jwk) = es256_key("k1");
        let (other, other_jwk) = es256_key("k1");
        let claims = serde_json::json!({"iss":"i","repository":"o/r","exp":2,"iat":1});
        let token = sign(&key, "k1", &claims);
        let h = header(&token).unwrap();
        assert_eq!(verify(&token, &h, &jwk).unwrap().repository.as_deref(), Some("o/r"));
        // Signed by another key under the same kid: refused.
        let forged = sign(&other, "k1", &claims);
        assert_eq!(verify(&forged, &header(&forged).unwrap(), &jwk), Err(VerifyError::Signature("k1".into())));
        assert!(verify(&forged, &header(&forged).unwrap(), &other_jwk).is_ok());
        // A changed payload under the original signature: refused.
        let mut parts: Vec<&str> = token.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(r#"{"iss":"i","repository":"o/evil","exp":2,"iat":1}"#);
        parts[1] = &evil;
        let tampered = parts.join(".");
        assert_eq!(verify(&tampered, &h, &jwk), Err(VerifyError::Signature("k1".into())));
        // An RS256 header against the EC key: the key's declared alg refuses it.
        let rs = Header { kid: "k1".into(), alg: Algorithm::RS256 };
        assert!(matches!(verify(&token, &rs, &jwk), Err(VerifyError::KeyAlgorithm { .. })));
        // Algorithm confusion: an HS256 token with the public key's bytes as secret never
        // gets past the header.
        let secret = serde_json::to_vec(&jwk).unwrap();
        let mut hh = jsonwebtoken::Header::new(Algorithm::HS256);
        hh.kid = Some("k1".into());
        let hs = jsonwebtoken::encode(&hh, &claims, &EncodingKey::from_secret(&secret)).unwrap();
        assert_eq!(header(&hs), Err(VerifyError::Symmetric("HS256".into())));
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys":[jwk]})).unwrap();
        assert!(set.find("k1").is_some());
    }
}
