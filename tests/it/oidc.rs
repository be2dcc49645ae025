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

pub const AUDIENCE: &str = "https://berth.test";

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

/// The bearer token a job is given for the issuer's token endpoint.
pub const REQUEST_TOKEN: &str = "request-token-7f3a";

/// A local OpenID Connect issuer: discovery, a key set the test can rotate, and the token
/// endpoint a GitHub or Forgejo Actions job asks (`ACTIONS_ID_TOKEN_REQUEST_URL`), which
/// mints a token with the claims of [`Issuer::job`] for the audience asked for.
pub struct Issuer {
    pub server: Receiver,
    pub keys: Arc<Mutex<Vec<Value>>>,
    key: Arc<EncodingKey>,
    /// The claims the token endpoint puts in the next tokens (besides iss, aud, iat, exp).
    pub job: Arc<Mutex<Value>>,
    /// How long the endpoint's tokens live, seconds.
    pub lifetime: Arc<Mutex<i64>>,
}

impl Issuer {
    pub fn start() -> Self {
        let keys = Arc::new(Mutex::new(Vec::<Value>::new()));
        let url = Arc::new(Mutex::new(String::new()));
        let (key, jwk) = es256("k1");
        keys.lock().unwrap().push(jwk);
        let key = Arc::new(key);
        let job = Arc::new(Mutex::new(json!({})));
        let lifetime = Arc::new(Mutex::new(300));
        let server = {
            let (keys, url, key, job, lifetime) =
                (keys.clone(), url.clone(), key.clone(), job.clone(), lifetime.clone());
            Receiver::start(move |r| {
                let url = url.lock().unwrap().clone();
                let (path, query) = r.path.split_once('?').unwrap_or((&r.path, ""));
                match path {
                    "/.well-known/openid-configuration" => {
                        (200, json!({"issuer": url, "jwks_uri": format!("{url}/jwks")}).to_string())
                    }
                    "/jwks" => (200, json!({"keys": *keys.lock().unwrap()}).to_string()),
                    "/idtoken" => {
                        if r.header("authorization") != Some(&format!("Bearer {REQUEST_TOKEN}")) {
                            return (401, json!({"message": "bad request token"}).to_string());
                        }
                        let query: std::collections::BTreeMap<String, String> =
                            url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
                        assert_eq!(
                            query.get("api-version").map(String::as_str),
                            Some("2.0"),
                            "the forge's own query is kept"
                        );
                        let Some(audience) = query.get("audience") else { return (400, "{}".into()) };
                        let mut claims = job.lock().unwrap().clone();
                        let t = now();
                        claims["iss"] = json!(url);
                        claims["aud"] = json!(audience);
                        claims["iat"] = json!(t - 5);
                        claims["exp"] = json!(t + *lifetime.lock().unwrap());
                        (200, json!({"count": 1, "value": sign(&key, "k1", &claims)}).to_string())
                    }
                    _ => (404, "{}".into()),
                }
            })
        };
        *url.lock().unwrap() = server.url.clone();
        Issuer { server, keys, key, job, lifetime }
    }

    /// The value of `ACTIONS_ID_TOKEN_REQUEST_URL` (GitHub's has a query of its own).
    pub fn request_url(&self) -> String {
        format!("{}/idtoken?api-version=2.0", self.server.url)
    }

    /// The `[repositories.oidc]` section trusting this issuer for `acme/fleet`.
    pub fn policy(&self) -> String {
        format!(
            "[repositories.oidc]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\nrepository = \"acme/fleet\"\nrefs = [\"refs/heads/main\", \"refs/heads/test-*\"]\n",
            self.server.url
        )
    }

    /// The job the token endpoint speaks for: a push of `sha` to `git_ref`.
    pub fn set_job(&self, git_ref: &str, sha: &str) {
        *self.job.lock().unwrap() =
            json!({"repository": "acme/fleet", "ref": git_ref, "sha": sha, "workflow": "deploy"});
    }

    /// How many tokens the endpoint minted.
    pub fn minted(&self) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/idtoken") && r.header("authorization").is_some())
            .count()
    }
}

#[test]
fn a_ci_id_token_submits_its_own_build_and_nothing_else() {
    let issuer = Issuer::start();
    let keys = issuer.keys.clone();
    let key = issuer.key.clone();
    let oidc = issuer.policy();
    let issuer = &issuer.server;
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

    // The job follows the build it submitted, with the same token…
    let own: Value = http().get(b.api(&format!("builds/{id}"))).bearer_auth(&good).send().unwrap().json().unwrap();
    assert_eq!(own["state"], "succeeded", "the job reads its own build: {own}");
    let log = http().get(b.api(&format!("builds/{id}/log"))).bearer_auth(&good).send().unwrap();
    assert_eq!(log.status(), StatusCode::OK, "and its log");
    assert!(log.text().unwrap().contains("alpha"), "the log is the build's");
    // …and reads nothing else: no other route, and no build that does not exist (no oracle).
    for path in ["hosts", "builds", "builds/999999", "builds/999999/log"] {
        let r = http().get(b.api(path)).bearer_auth(&good).send().unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "an ID token reads nothing else: {path}");
    }
    let cancel = http().post(b.api(&format!("builds/{id}/cancel"))).bearer_auth(&good).send().unwrap();
    assert_eq!(cancel.status(), StatusCode::UNAUTHORIZED, "an ID token cancels nothing");
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
    // The first job's token does not read the second job's build.
    let second_id = serde_json::from_str::<Value>(&text).unwrap()["id"].as_i64().unwrap();
    for path in [format!("builds/{second_id}"), format!("builds/{second_id}/log")] {
        let r = http().get(b.api(&path)).bearer_auth(&good).send().unwrap();
        let status = r.status();
        refused((status, r.text().unwrap()), StatusCode::FORBIDDEN, "another job's build");
    }
}

/// `berth build submit --id-token-audience` in a job: the CLI asks the forge's token endpoint
/// for the job's ID token (again when it is about to expire, so a long build can be followed),
/// submits with it and follows the build to its end; without the job's variables, or with an
/// endpoint that answers nonsense, it says why in one line, and never shows the request token.
#[test]
fn the_cli_fetches_the_jobs_id_token_and_follows_its_build() {
    let issuer = Issuer::start();
    let b = build_host(&["alpha"], &issuer.policy());
    let commit = b.fleet.commit("main", "deploy", Signing::Trusted);
    issuer.set_job("refs/heads/main", &commit);
    // Tokens inside the client's one-minute margin from the start: each request of the CLI
    // (the submission, then following the build) must ask the forge for a fresh one.
    *issuer.lifetime.lock().unwrap() = 59;
    let cli = |request_url: Option<&str>, request_token: &str| {
        let mut cmd = std::process::Command::new("timeout");
        cmd.args(["300", berth_bin(), "build", "submit", "--repo", "fleet", "--commit", &commit, "--branch", "main"])
            .args(["--wait", "--id-token-audience", AUDIENCE])
            .env("BERTH_SERVER", &b.server.url)
            .env_remove("BERTH_TOKEN")
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", request_token);
        if let Some(url) = request_url {
            cmd.env("ACTIONS_ID_TOKEN_REQUEST_URL", url);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, log, status) = cli(Some(&issuer.request_url()), REQUEST_TOKEN);
    assert!(ok, "{log}\n{status}");
    assert!(
        log.contains("alpha") && status.contains("succeeded"),
        "the build was followed to its end:\n{log}\n{status}"
    );
    assert!(issuer.minted() >= 2, "the token was replaced before it expired ({} minted)", issuer.minted());
    assert!(!format!("{log}{status}").contains(REQUEST_TOKEN), "the request token is never shown");

    // No variables: the job may not ask for a token.
    let (ok, _, err) = cli(None, REQUEST_TOKEN);
    assert!(!ok && err.contains("ACTIONS_ID_TOKEN_REQUEST_URL is not set") && err.contains("id-token: write"), "{err}");
    // A wrong request token: the forge refuses, the CLI says so and shows no secret.
    let (ok, _, err) = cli(Some(&issuer.request_url()), "wrong-request-token");
    assert!(
        !ok && err.contains("401") && err.contains("ID token endpoint") && !err.contains("wrong-request-token"),
        "{err}"
    );
    // An endpoint that answers something else than a token.
    let junk = Receiver::start(|_| (200, "<html>rate limited</html>".into()));
    let (ok, _, err) = cli(Some(&format!("{}/idtoken", junk.url)), REQUEST_TOKEN);
    assert!(!ok && err.contains("answer is not"), "{err}");
    // A berth token and an audience: ambiguous, refused before anything is sent.
    let out = std::process::Command::new(berth_bin())
        .args([
            "build",
            "submit",
            "--repo",
            "fleet",
            "--commit",
            &commit,
            "--branch",
            "main",
            "--id-token-audience",
            AUDIENCE,
        ])
        .env("BERTH_SERVER", &b.server.url)
        .env("BERTH_TOKEN", &b.ci)
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not both"));
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
