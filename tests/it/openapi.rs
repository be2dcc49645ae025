//! A stand-in forge that checks every request against the forge's published API
//! description: GitHub's official OpenAPI 3 document (npm's `@octokit/openapi`, fetched by
//! `scripts/deps.sh` into `target/tools`) or Forgejo's swagger 2 excerpt
//! (`forge_api/forgejo-statuses.json`). The path must match a path template, the method an
//! operation of it; the JSON body must have the schema's required fields, no field the
//! schema lacks, strings where it says string and values from its `enum`s; the token must
//! come in the header form the forge documents. A request that breaks any of these is
//! answered 422 and kept in `violations`, which every test asserts empty.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use serde_json::Value;

use crate::receiver::{Received, Receiver};

/// Which description and auth form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Github,
    Forgejo,
}

/// A status the forge accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub sha: String,
    pub context: String,
    pub state: String,
    pub description: String,
    pub target_url: String,
}

pub struct Forge {
    _receiver: Receiver,
    /// The API root to configure (`api_url`).
    pub api_url: String,
    pub accepted: Arc<Mutex<Vec<Accepted>>>,
    pub violations: Arc<Mutex<Vec<String>>>,
    /// Requests answered 503 before the forge "comes back".
    pub down_for: Arc<AtomicUsize>,
}

fn github_description() -> PathBuf {
    let path = std::env::var_os("BERTH_GITHUB_OPENAPI").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/tools/octokit-openapi/23.0.2/package/generated/api.github.com.json")
    });
    assert!(path.exists(), "{} is missing: run `. scripts/deps.sh; berth_install_forge_api`", path.display());
    path
}

fn load(kind: Kind) -> Value {
    let path = match kind {
        Kind::Github => github_description(),
        Kind::Forgejo => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/forge_api/forgejo-statuses.json"),
    };
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

impl Forge {
    /// A forge for `owner/repo` that accepts `token`, answering the first `down_for`
    /// requests with 503.
    pub fn start(kind: Kind, token: &str, owner: &str, repo: &str, down_for: usize) -> Self {
        let spec = Arc::new(load(kind));
        let base = match kind {
            Kind::Github => "/api/v3".to_owned(),
            Kind::Forgejo => spec["basePath"].as_str().unwrap().to_owned(),
        };
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicUsize::new(down_for));
        let (acc, vio, down2, token, owner, repo, base2) = (
            accepted.clone(),
            violations.clone(),
            down.clone(),
            token.to_owned(),
            owner.to_owned(),
            repo.to_owned(),
            base.clone(),
        );
        let receiver = Receiver::start(move |r: &Received| {
            if down2.load(Ordering::SeqCst) > 0 {
                down2.fetch_sub(1, Ordering::SeqCst);
                return (503, "{\"message\":\"down for maintenance\"}".into());
            }
            match check(kind, &spec, &base2, &token, &owner, &repo, r) {
                Ok(a) => {
                    acc.lock().unwrap().push(a);
                    (201, "{}".into())
                }
                Err(v) => {
                    vio.lock().unwrap().push(v.clone());
                    (422, serde_json::json!({ "message": v }).to_string())
                }
            }
        });
        let api_url = format!("{}{base}", receiver.url);
        Forge { _receiver: receiver, api_url, accepted, violations, down_for: down }
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        self.accepted.lock().unwrap().clone()
    }

    /// The accepted statuses of `context`, as (state, description).
    pub fn of(&self, context: &str) -> Vec<(String, String)> {
        self.accepted().into_iter().filter(|a| a.context == context).map(|a| (a.state, a.description)).collect()
    }

    pub fn assert_no_violations(&self) {
        let v = self.violations.lock().unwrap();
        assert!(v.is_empty(), "requests that break the forge's API description: {v:#?}");
    }
}

/// Resolves a local `$ref`.
fn resolve<'a>(spec: &'a Value, mut node: &'a Value) -> &'a Value {
    while let Some(r) = node.get("$ref").and_then(Value::as_str) {
        node = spec.pointer(r.trim_start_matches('#')).unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    node
}

/// The path template matching `path`, with its parameters.
fn route<'a>(spec: &'a Value, path: &str) -> Option<(&'a str, Vec<(String, String)>)> {
    let segments: Vec<&str> = path.split('/').collect();
    spec["paths"].as_object()?.keys().find_map(|template| {
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (p, s) in parts.iter().zip(&segments) {
            match p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) if !s.is_empty() => params.push((name.to_owned(), (*s).to_owned())),
                Some(_) => return None,
                None if p == s => {}
                None => return None,
            }
        }
        Some((template.as_str(), params))
    })
}

fn body_schema<'a>(spec: &'a Value, operation: &'a Value) -> Option<&'a Value> {
    if let Some(body) = operation.get("requestBody") {
        return Some(resolve(spec, &resolve(spec, body)["content"]["application/json"]["schema"]));
    }
    let parameters = operation["parameters"].as_array()?;
    parameters.iter().map(|p| resolve(spec, p)).find(|p| p["in"] == "body").map(|p| resolve(spec, &p["schema"]))
}

#[allow(clippy::too_many_arguments)]
fn check(
    kind: Kind,
    spec: &Value,
    base: &str,
    token: &str,
    owner: &str,
    repo: &str,
    r: &Received,
) -> Result<Accepted, String> {
    let path = r.path.strip_prefix(base).ok_or_else(|| format!("{} is not under the API root {base}", r.path))?;
    let (template, params) = route(spec, path).ok_or_else(|| format!("no path of the API matches {path}"))?;
    let operation = &spec["paths"][template][r.method.to_ascii_lowercase()];
    if operation.is_null() {
        return Err(format!("{template} has no {} operation", r.method));
    }
    let expected_auth = match kind {
        // GitHub's REST docs ("Authenticating to the REST API"): `Authorization: Bearer <token>`.
        Kind::Github => format!("Bearer {token}"),
        // Forgejo's securityDefinitions.AuthorizationHeaderToken.
        Kind::Forgejo => {
            let scheme = &spec["securityDefinitions"]["AuthorizationHeaderToken"];
            assert_eq!((scheme["in"].as_str(), scheme["name"].as_str()), (Some("header"), Some("Authorization")));
            assert!(scheme["description"].as_str().unwrap().contains("prepended with \"token\" followed by a space"));
            format!("token {token}")
        }
    };
    if r.header("authorization") != Some(expected_auth.as_str()) {
        return Err(format!(
            "wrong or missing Authorization header for {kind:?} (scheme {:?})",
            r.header("authorization").and_then(|a| a.split(' ').next())
        ));
    }
    let get = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    if (get("owner"), get("repo")) != (Some(owner), Some(repo)) {
        return Err(format!("wrong repository {:?}/{:?}", get("owner"), get("repo")));
    }
    let sha = get("sha").unwrap_or_default();
    if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("sha {sha:?} is not a full commit hash"));
    }
    if !r.header("content-type").unwrap_or_default().starts_with("application/json") {
        return Err(format!("content-type {:?} is not JSON", r.header("content-type")));
    }
    let body: Value = serde_json::from_slice(&r.body).map_err(|e| format!("body is not JSON: {e}"))?;
    let schema = body_schema(spec, operation).ok_or("the operation takes no body")?;
    let object = body.as_object().ok_or("body is not an object")?;
    for required in schema["required"].as_array().into_iter().flatten() {
        let name = required.as_str().unwrap();
        if !object.contains_key(name) {
            return Err(format!("required field {name:?} missing"));
        }
    }
    for (name, value) in object {
        let property = schema["properties"].get(name).ok_or_else(|| format!("unknown field {name:?}"))?;
        let property = resolve(spec, property);
        match (property["type"].as_str(), value) {
            (_, Value::Null) if property["nullable"] == true => {}
            (Some("string"), Value::String(_)) => {}
            (Some(t), v) => return Err(format!("field {name:?} is {v} where the API wants a {t}")),
            (None, _) => {}
        }
        if let Some(allowed) = property["enum"].as_array() {
            if !allowed.contains(value) {
                return Err(format!("field {name:?} = {value} is none of {allowed:?}"));
            }
        }
    }
    let text = |k: &str| object.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    Ok(Accepted {
        sha: sha.to_owned(),
        context: text("context"),
        state: text("state"),
        description: text("description"),
        target_url: text("target_url"),
    })
}

#[test]
fn the_checker_refuses_what_the_descriptions_refuse() {
    for kind in [Kind::Github, Kind::Forgejo] {
        let spec = load(kind);
        let base = "/b";
        let auth = if kind == Kind::Github { "Bearer t" } else { "token t" };
        let request = |method: &str, path: &str, auth: &str, body: &str| Received {
            method: method.into(),
            path: format!("{base}{path}"),
            headers: [("authorization", auth), ("content-type", "application/json")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            body: body.as_bytes().to_vec(),
        };
        let sha = "ab".repeat(20);
        let good = r#"{"state":"success","context":"berth/build","description":"d","target_url":"http://x"}"#;
        let path = format!("/repos/acme/fleet/statuses/{sha}");
        let run = |r: Received| check(kind, &spec, base, "t", "acme", "fleet", &r);
        assert!(run(request("POST", &path, auth, good)).is_ok(), "{kind:?}");
        for (r, why) in [
            (request("PUT", &path, auth, good), "has no PUT"),
            (request("POST", &format!("/repos/acme/fleet/status/{sha}"), auth, good), "no path"),
            (request("POST", &path, "Basic dDp0", good), "Authorization"),
            (request("POST", &path, if kind == Kind::Github { "token t" } else { "Bearer t" }, good), "Authorization"),
            (request("POST", &path, auth, r#"{"state":"succeeded"}"#), "none of"),
            (request("POST", &path, auth, r#"{"state":"success","contxt":"x"}"#), "unknown field"),
            (request("POST", &path, auth, r#"{"state":"success","context":1}"#), "wants a string"),
            (request("POST", &format!("/repos/acme/other/statuses/{sha}"), auth, good), "wrong repository"),
        ] {
            let err = run(r).unwrap_err();
            assert!(err.contains(why), "{kind:?}: {err} (expected {why})");
        }
        if kind == Kind::Github {
            assert!(run(request("POST", &path, auth, r#"{"context":"x"}"#)).unwrap_err().contains("required"));
        }
    }
}
