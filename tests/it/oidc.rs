//! CI without long-lived secrets, end to end: a local OpenID Connect issuer on loopback (the
//! test's own HTTP server serving discovery and a JWKS with an ES256 key made here) and a
//! real berth that takes the issuer's ID tokens in place of a `ci` token for one repository's
//! builds, and for nothing else.

use std::sync::{Arc, Mutex};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use ring::{
    rand::SystemRandom,
    signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING},
};
use serde_json::{json, Value};

use crate::{builds::*, fleet::Signing, harness::*, receiver::Receiver};

const AUDIENCE: &str = "https://berth.test";

/// An ES256 key: its signing half and its public JWK.
fn es256(kid: &str) -> (EncodingKey, Value) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&public[1..33]), "y": URL_SAFE_NO_PAD.encode(&public[33..65])});
    (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
}

fn sign(key: &EncodingKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn a_ci_id_token_submits_its_own_build_and_nothing_else() {
    // The issuer: discovery names its own URL and its key set, which the test can rotate.
    let keys = Arc::new(Mutex::new(Vec::<Value>::new()));
    let issuer_url = Arc::new(Mutex::new(String::new()));
    let issuer = {
        let (keys, url) = (keys.clone(), issuer_url.clone());
        Receiver::start(move |r| match r.path.as_str() {
            "/.well-known/openid-configuration" => {
                let url = url.lock().unwrap().clone();
                (200, json!({"issuer": url, "jwks_uri": format!("{url}/jwks")}).to_string())
            }
            "/jwks" => (200, json!({"keys": *keys.lock().unwrap()}).to_string()),
            _ => (404, "{}".into()),
        })
    };
    *issuer_url.lock().unwrap() = issuer.url.clone();
    let (key, jwk) = es256("k1");
    keys.lock().unwrap().push(jwk);
    let oidc = format!(
        "[repositories.oidc]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\nrepository = \"acme/fleet\"\nrefs = [\"refs/heads/main\", \"refs/heads/test-*\"]\n",
        issuer.url
    );
    let b = build_host(&["alpha"], &oidc);
    let commit = b.fleet.commit("main", "deploy", Signing::Trusted);
    let claims = |git_ref: &str, sha: &str| {
        json!({"iss": issuer.url, "aud": AUDIENCE, "iat": now() - 5, "exp": now() + 300,
            "repository": "acme/fleet", "ref": git_ref, "sha": sha, "workflow": "deploy"})
    };
    let submit = |token: &str, branch: &str, commit: &str| {
        let body = json!({"repository": "fleet", "commit": commit, "branch": branch});
        let r = http().post(b.api("builds")).bearer_auth(token).json(&body).send().unwrap();
        let status = r.status();
        let text = r.text().unwrap();
        (status, text)
    };
    let refused = |(status, text): (StatusCode, String), want: StatusCode, what: &str| {
        assert_eq!(status, want, "{what}: {text}");
        let e: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
        assert!(e["code"].is_string() && e["message"].is_string() && !text.trim().contains('\n'), "{what}: {text}");
    };

    // A token of main's workflow for this commit submits the build, which runs.
    let good = sign(&key, "k1", &claims("refs/heads/main", &commit));
    let (status, text) = submit(&good, "main", &commit);
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"].as_i64().unwrap();
    let done = wait_until(|| {
        let v: Value = http().get(b.api(&format!("builds/{id}"))).bearer_auth(&b.admin).send().unwrap().json().unwrap();
        matches!(v["state"].as_str(), Some("succeeded" | "failed")).then_some(v)
    });
    assert_eq!(done["state"], "succeeded", "{done}");

    // The same token, for anything else: refused.
    for path in ["hosts", "builds", &format!("builds/{id}")] {
        let r = http().get(b.api(path)).bearer_auth(&good).send().unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "an ID token reads nothing: {path}");
    }
    let gc = http().post(b.api("gc")).bearer_auth(&good).json(&json!({"dry_run": true})).send().unwrap();
    assert_eq!(gc.status(), StatusCode::UNAUTHORIZED, "an ID token collects nothing");
    // A job on a test branch may not ask for main (that would deploy the whole fleet), nor
    // for another commit than its own.
    let test_branch = sign(&key, "k1", &claims("refs/heads/test-alpha", &commit));
    refused(submit(&test_branch, "main", &commit), StatusCode::FORBIDDEN, "another branch than the token's");
    refused(submit(&good, "main", &"b".repeat(40)), StatusCode::FORBIDDEN, "another commit than the token's");
    let mut other = claims("refs/heads/main", &commit);
    other["repository"] = json!("mallory/fleet");
    refused(submit(&sign(&key, "k1", &other), "main", &commit), StatusCode::FORBIDDEN, "another repository");
    refused(
        submit(&sign(&key, "k1", &claims("refs/heads/feature", &commit)), "feature", &commit),
        StatusCode::FORBIDDEN,
        "a ref the policy does not allow",
    );
    // Not a valid token of this issuer: 401.
    let mut expired = claims("refs/heads/main", &commit);
    (expired["iat"], expired["exp"]) = (json!(now() - 1000), json!(now() - 600));
    refused(submit(&sign(&key, "k1", &expired), "main", &commit), StatusCode::UNAUTHORIZED, "expired");
    let mut audience = claims("refs/heads/main", &commit);
    audience["aud"] = json!("https://elsewhere.test");
    refused(submit(&sign(&key, "k1", &audience), "main", &commit), StatusCode::UNAUTHORIZED, "another audience");
    let (stranger, _) = es256("k1");
    refused(
        submit(&sign(&stranger, "k1", &claims("refs/heads/main", &commit)), "main", &commit),
        StatusCode::UNAUTHORIZED,
        "a stranger's key under the issuer's kid",
    );
    let parts: Vec<&str> = good.split('.').collect();
    let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#), parts[1]);
    refused(submit(&none, "main", &commit), StatusCode::UNAUTHORIZED, "alg none");
    let hs = jsonwebtoken::encode(
        &Header { kid: Some("k1".into()), ..Header::new(Algorithm::HS256) },
        &claims("refs/heads/main", &commit),
        &EncodingKey::from_secret(keys.lock().unwrap()[0].to_string().as_bytes()),
    )
    .unwrap();
    refused(submit(&hs, "main", &commit), StatusCode::UNAUTHORIZED, "HS256 with the public key as secret");
    let huge = format!("eyJ{}.e30.AAAA", "A".repeat(16 * 1024));
    refused(submit(&huge, "main", &commit), StatusCode::UNAUTHORIZED, "an oversize token");

    // The issuer rotates its key: a token under the new kid is accepted once the set is
    // fetched again for the unknown kid (at most once per 30 s, docs/ci.md).
    let (next, next_jwk) = es256("k2");
    keys.lock().unwrap().push(next_jwk);
    b.fleet.set_host("alpha", "two");
    let second = b.fleet.commit("main", "two", Signing::Trusted);
    let rotated = sign(&next, "k2", &claims("refs/heads/main", &second));
    let started = std::time::Instant::now();
    let (status, text) = wait_until(|| {
        let (status, text) = submit(&rotated, "main", &second);
        (status != StatusCode::UNAUTHORIZED).then_some((status, text))
    });
    assert_eq!(status, StatusCode::ACCEPTED, "the rotated key: {text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(45), "picked up within the refetch interval");
}

/// Polls `f` (at most two minutes) until it returns something.
fn wait_until<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
