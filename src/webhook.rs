//! PURE forge push webhooks (Forgejo, Gitea, GitHub): checking the HMAC-SHA256 signature of
//! the raw body and reading the few fields of a push event that become a build request.
//! No I/O, no async: the HTTP handler hands in the header values and the body bytes.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// The largest body accepted. A GitHub push lists up to 2,048 commits with their changed
/// files, which can pass 1 MiB on a big merge; refusing it would lose a deploy silently
/// (the forge only marks the delivery failed), so the bound is generous but still small.
pub const MAX_BODY_BYTES: usize = 5 * 1024 * 1024;

/// The forge that sent a webhook, named by the last segment of
/// `/api/v1/webhooks/{forgejo,gitea,github}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forge {
    Forgejo,
    Gitea,
    Github,
}

impl Forge {
    /// Parses the URL segment: `forgejo`, `gitea` or `github`.
    pub fn parse(segment: &str) -> Result<Self, WebhookError> {
        match segment {
            "forgejo" => Ok(Self::Forgejo),
            "gitea" => Ok(Self::Gitea),
            "github" => Ok(Self::Github),
            _ => Err(WebhookError::UnknownForge(segment.chars().take(40).collect())),
        }
    }

    /// The URL segment naming this forge.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forgejo => "forgejo",
            Self::Gitea => "gitea",
            Self::Github => "github",
        }
    }
}

impl fmt::Display for Forge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The header carrying the body's HMAC-SHA256 (header names are case-insensitive).
pub fn signature_header(forge: Forge) -> &'static str {
    match forge {
        Forge::Forgejo => "X-Forgejo-Signature",
        Forge::Gitea => "X-Gitea-Signature",
        Forge::Github => "X-Hub-Signature-256",
    }
}

/// The header naming the event (`push`, `ping`, `delete`, …).
pub fn event_header(forge: Forge) -> &'static str {
    match forge {
        Forge::Forgejo => "X-Forgejo-Event",
        Forge::Gitea => "X-Gitea-Event",
        Forge::Github => "X-GitHub-Event",
    }
}

/// Why a webhook was refused. Messages are one line and never contain the secret or the
/// expected signature.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("unknown forge {0:?}: expected forgejo, gitea or github")]
    UnknownForge(String),
    #[error("the repository's webhook secret is empty: refusing to check signatures with it")]
    EmptySecret,
    #[error("missing {0} header")]
    MissingSignature(&'static str),
    #[error("malformed {header} header: expected {expected}")]
    MalformedSignature { header: &'static str, expected: &'static str },
    #[error("{0} does not match the body (wrong secret, or the body was altered)")]
    WrongSignature(&'static str),
    #[error("missing {0} header")]
    MissingEvent(&'static str),
    #[error("body of {0} bytes is larger than the {MAX_BODY_BYTES} bytes accepted")]
    TooLarge(usize),
    #[error("not a push event payload: {0}")]
    Payload(String),
    #[error("push event has an invalid `after` commit: expected 40 hexadecimal digits")]
    BadCommit,
}

/// Checks `header_value`, the forge's signature header, against the HMAC-SHA256 of `body`
/// keyed with `secret` (the secret exactly as typed into the forge: no trailing newline).
/// The comparison is constant-time (`Mac::verify_slice`).
pub fn verify_signature(
    forge: Forge,
    secret: &[u8],
    body: &[u8],
    header_value: Option<&str>,
) -> Result<(), WebhookError> {
    let header = signature_header(forge);
    // An empty key would let anyone compute a valid signature.
    if secret.is_empty() {
        return Err(WebhookError::EmptySecret);
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(WebhookError::TooLarge(body.len()));
    }
    let value = header_value.map(str::trim).ok_or(WebhookError::MissingSignature(header))?;
    let (hex_digits, expected) = match forge {
        Forge::Github => (value.strip_prefix("sha256="), "sha256=<64 hex digits>"),
        Forge::Forgejo | Forge::Gitea => (Some(value), "64 hex digits"),
    };
    let malformed = WebhookError::MalformedSignature { header, expected };
    let digest = hex_digits.and_then(|h| hex::decode(h).ok()).filter(|d| d.len() == 32).ok_or(malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&digest).map_err(|_| WebhookError::WrongSignature(header))
}

/// What a push to a branch says, reduced to what a build request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    /// The repository's `clone_url`, `ssh_url` and `html_url`, as the forge gives them, in
    /// that order (absent or empty ones left out), to match against configured repositories.
    pub repository_urls: Vec<String>,
    /// `owner/name`.
    pub repository_full_name: String,
    /// The branch, without `refs/heads/`.
    pub branch: String,
    /// The new tip (`after`): 40 lowercase hex digits; all zeros when `deleted`.
    pub commit: String,
    /// The branch was deleted: there is nothing to build.
    pub deleted: bool,
}

impl PushEvent {
    /// Whether the push is for the repository berth fetches as `flake_url` (its configured
    /// `url`). Compared on host and path only, so `git+https://git.example.org/ops/fleet`
    /// matches `https://git.example.org/ops/fleet.git` and `forgejo@git.example.org:ops/fleet.git`.
    pub fn is_for(&self, flake_url: &str) -> bool {
        let wanted = host_and_path(flake_url);
        self.repository_urls.iter().any(|u| host_and_path(u) == wanted)
    }
}

/// `host/path` of a git URL, lowercased (forges treat owner and repository names without
/// case), without scheme, user, port, query, trailing `/` or `.git`.
fn host_and_path(url: &str) -> String {
    let url = url.strip_prefix("git+").unwrap_or(url);
    let url = url.split(['?', '#']).next().unwrap_or_default().to_ascii_lowercase();
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest.to_owned(),
        // scp-like `user@host:path`.
        None => url.replacen(':', "/", 1),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((&rest, ""));
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = host.split(':').next().unwrap_or_default();
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path).trim_matches('/');
    format!("{host}/{path}")
}

/// The fields read from a push payload; all three forges use these names.
#[derive(Deserialize)]
struct RawPush {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    /// GitHub only; Forgejo and Gitea mark a deletion by `after` alone.
    #[serde(default)]
    deleted: bool,
    repository: RawRepository,
}

#[derive(Deserialize)]
struct RawRepository {
    full_name: String,
    clone_url: Option<String>,
    ssh_url: Option<String>,
    html_url: Option<String>,
}

/// Reads a push event. `Ok(None)` for what is not a push to a branch: another event
/// (`ping`, `create`, `delete`, …) or a push of a tag or any other ref.
///
/// The secret is per repository, and which repository a body names is only trustworthy once
/// its signature is: find the configured repository whose secret verifies the body
/// ([`verify_signature`]), then parse, then require [`PushEvent::is_for`] that repository.
pub fn parse_push(
    forge: Forge,
    event_header_value: Option<&str>,
    body: &[u8],
) -> Result<Option<PushEvent>, WebhookError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(WebhookError::TooLarge(body.len()));
    }
    let event = event_header_value.ok_or(WebhookError::MissingEvent(event_header(forge)))?;
    if event.trim() != "push" {
        return Ok(None);
    }
    let raw: RawPush = serde_json::from_slice(body).map_err(|e| {
        // serde_json's messages are one line; keep them short all the same.
        WebhookError::Payload(e.to_string().chars().take(200).collect())
    })?;
    let Some(branch) = raw.git_ref.strip_prefix("refs/heads/") else {
        return Ok(None);
    };
    if branch.is_empty() {
        return Err(WebhookError::Payload("empty branch name in `ref`".into()));
    }
    if raw.after.len() != 40 || !raw.after.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(WebhookError::BadCommit);
    }
    let commit = raw.after.to_ascii_lowercase();
    let deleted = raw.deleted || commit.bytes().all(|b| b == b'0');
    let repo = raw.repository;
    let repository_urls =
        [repo.clone_url, repo.ssh_url, repo.html_url].into_iter().flatten().filter(|u| !u.is_empty()).collect();
    Ok(Some(PushEvent {
        repository_urls,
        repository_full_name: repo.full_name,
        branch: branch.to_owned(),
        commit,
        deleted,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "76ae82f0a1b1c4d9e8f7a6b5c4d3e2f1a0b9c8d7";
    const ZERO: &str = "0000000000000000000000000000000000000000";

    /// A Forgejo/Gitea push payload (both send the same document), trimmed to one commit.
    fn gitea_push(git_ref: &str, after: &str) -> Vec<u8> {
        format!(
            r#"{{"ref":"{git_ref}","before":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","after":"{after}",
"compare_url":"https://git.example.org/ops/nix-config/compare/6113728f27ae...76ae82f0a1b1",
"commits":[{{"id":"{after}","message":"web: open port 443\n",
"url":"https://git.example.org/ops/nix-config/commit/{after}",
"author":{{"name":"Alice","email":"alice@example.org","username":"alice"}},
"committer":{{"name":"Alice","email":"alice@example.org","username":"alice"}},
"verification":null,"timestamp":"2024-05-02T10:11:12Z","added":[],"removed":[],"modified":["hosts/web.nix"]}}],
"total_commits":1,"head_commit":null,
"repository":{{"id":7,"owner":{{"id":3,"login":"ops","full_name":""}},"name":"nix-config","full_name":"ops/nix-config",
"description":"","empty":false,"private":true,"fork":false,"html_url":"https://git.example.org/ops/nix-config",
"ssh_url":"forgejo@git.example.org:ops/nix-config.git","clone_url":"https://git.example.org/ops/nix-config.git",
"website":"","default_branch":"main","archived":false}},
"pusher":{{"id":1,"login":"alice","email":"alice@example.org"}},"sender":{{"id":1,"login":"alice"}}}}"#
        )
        .into_bytes()
    }

    /// A GitHub push payload, trimmed to one commit.
    fn github_push(git_ref: &str, after: &str, deleted: bool) -> Vec<u8> {
        format!(
            r#"{{"ref":"{git_ref}","before":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","after":"{after}",
"repository":{{"id":186853002,"node_id":"MDEwOlJlcG9zaXRvcnkxODY4NTMwMDI=","name":"nix-config",
"full_name":"ops/nix-config","private":true,"owner":{{"name":"ops","login":"ops","id":21031067}},
"html_url":"https://github.com/ops/nix-config","url":"https://github.com/ops/nix-config",
"git_url":"git://github.com/ops/nix-config.git","ssh_url":"git@github.com:ops/nix-config.git",
"clone_url":"https://github.com/ops/nix-config.git","default_branch":"main","pushed_at":1714644672}},
"pusher":{{"name":"alice","email":"alice@example.org"}},"sender":{{"login":"alice","id":21031067}},
"created":false,"deleted":{deleted},"forced":false,"base_ref":null,
"compare":"https://github.com/ops/nix-config/compare/6113728f27ae...76ae82f0a1b1",
"commits":[{{"id":"{after}","tree_id":"f9d2a07e9488b91af2641b26b9407fe22a451433","distinct":true,
"message":"web: open port 443","timestamp":"2024-05-02T12:11:12+02:00",
"author":{{"name":"Alice","email":"alice@example.org","username":"alice"}},"added":[],"removed":[],
"modified":["hosts/web.nix"]}}],"head_commit":null}}"#
        )
        .into_bytes()
    }

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[track_caller]
    fn check_signature(
        forge: Forge,
        secret: &str,
        body: &[u8],
        header: Option<&str>,
        expected: Result<(), WebhookError>,
    ) {
        assert_eq!(verify_signature(forge, secret.as_bytes(), body, header), expected, "{forge} {header:?}");
    }

    #[test]
    fn signatures() {
        use WebhookError::*;
        // GitHub's published test vector ("Validating webhook deliveries").
        let (secret, body) = ("It's a Secret to Everybody", b"Hello, World!".as_slice());
        let digest = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let github = format!("sha256={digest}");
        check_signature(Forge::Github, secret, body, Some(&github), Ok(()));
        check_signature(Forge::Gitea, secret, body, Some(digest), Ok(()));
        check_signature(Forge::Forgejo, secret, body, Some(digest), Ok(()));
        check_signature(Forge::Forgejo, secret, body, Some(&digest.to_uppercase()), Ok(()));
        check_signature(
            Forge::Github,
            secret,
            b"Hello, World?",
            Some(&github),
            Err(WrongSignature("X-Hub-Signature-256")),
        );
        check_signature(Forge::Gitea, "another secret", body, Some(digest), Err(WrongSignature("X-Gitea-Signature")));
        check_signature(Forge::Forgejo, secret, body, None, Err(MissingSignature("X-Forgejo-Signature")));
        check_signature(Forge::Github, secret, body, None, Err(MissingSignature("X-Hub-Signature-256")));
        check_signature(Forge::Gitea, "", body, Some(digest), Err(EmptySecret));

        let github_form = MalformedSignature { header: "X-Hub-Signature-256", expected: "sha256=<64 hex digits>" };
        check_signature(Forge::Github, secret, body, Some(digest), Err(github_form.clone()));
        check_signature(
            Forge::Github,
            secret,
            body,
            Some("sha1=757107ea0eb2509fc211221cce984b8a37570b6d"),
            Err(github_form),
        );
        let gitea_form = MalformedSignature { header: "X-Gitea-Signature", expected: "64 hex digits" };
        check_signature(Forge::Gitea, secret, body, Some(&github), Err(gitea_form.clone()));
        check_signature(Forge::Gitea, secret, body, Some(&digest[..62]), Err(gitea_form.clone()));
        check_signature(Forge::Gitea, secret, body, Some(""), Err(gitea_form));

        let push = gitea_push("refs/heads/main", SHA);
        let good = sign(b"s3cret", &push);
        check_signature(Forge::Forgejo, "s3cret", &push, Some(&good), Ok(()));
        let mut tampered = push.clone();
        tampered[10] ^= 1;
        check_signature(Forge::Forgejo, "s3cret", &tampered, Some(&good), Err(WrongSignature("X-Forgejo-Signature")));
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        check_signature(Forge::Forgejo, "s3cret", &huge, Some(&good), Err(TooLarge(MAX_BODY_BYTES + 1)));
    }

    #[test]
    fn errors_never_show_the_secret() {
        let secret = "It's a Secret to Everybody";
        for header in [None, Some("zz"), Some("sha256=00"), Some(&"ab".repeat(32))] {
            for forge in [Forge::Forgejo, Forge::Gitea, Forge::Github] {
                let err = verify_signature(forge, secret.as_bytes(), b"{}", header).unwrap_err();
                let msg = err.to_string();
                assert!(!msg.contains(secret) && !msg.contains('\n'), "{msg}");
            }
        }
    }

    fn push(branch: &str, commit: &str, deleted: bool, urls: &[&str]) -> Option<PushEvent> {
        Some(PushEvent {
            repository_urls: urls.iter().map(|u| u.to_string()).collect(),
            repository_full_name: "ops/nix-config".into(),
            branch: branch.into(),
            commit: commit.into(),
            deleted,
        })
    }

    #[track_caller]
    fn check(forge: Forge, event: Option<&str>, body: &[u8], expected: Result<Option<PushEvent>, WebhookError>) {
        assert_eq!(parse_push(forge, event, body), expected, "{forge} {event:?}");
    }

    #[test]
    fn push_events() {
        use WebhookError::*;
        let forgejo_urls = [
            "https://git.example.org/ops/nix-config.git",
            "forgejo@git.example.org:ops/nix-config.git",
            "https://git.example.org/ops/nix-config",
        ];
        let github_urls = [
            "https://github.com/ops/nix-config.git",
            "git@github.com:ops/nix-config.git",
            "https://github.com/ops/nix-config",
        ];
        let main = gitea_push("refs/heads/main", SHA);
        for forge in [Forge::Forgejo, Forge::Gitea] {
            check(forge, Some("push"), &main, Ok(push("main", SHA, false, &forgejo_urls)));
        }
        let body = gitea_push("refs/heads/test-web", SHA);
        check(Forge::Gitea, Some("push"), &body, Ok(push("test-web", SHA, false, &forgejo_urls)));
        let body = github_push("refs/heads/feature/x", SHA, false);
        check(Forge::Github, Some("push"), &body, Ok(push("feature/x", SHA, false, &github_urls)));
        let upper = gitea_push("refs/heads/main", &SHA.to_uppercase());
        check(Forge::Forgejo, Some("push"), &upper, Ok(push("main", SHA, false, &forgejo_urls)));

        // Branch deletions: GitHub says so, Forgejo and Gitea only zero `after`.
        let body = github_push("refs/heads/old", ZERO, true);
        check(Forge::Github, Some("push"), &body, Ok(push("old", ZERO, true, &github_urls)));
        let body = gitea_push("refs/heads/old", ZERO);
        check(Forge::Forgejo, Some("push"), &body, Ok(push("old", ZERO, true, &forgejo_urls)));

        // Not pushes to a branch: nothing to build, and not an error.
        let ping =
            br#"{"zen":"Design for failure.","hook_id":109948940,"hook":{"type":"Repository","events":["push"]}}"#;
        check(Forge::Github, Some("ping"), ping, Ok(None));
        check(Forge::Gitea, Some("delete"), &main, Ok(None));
        check(Forge::Forgejo, Some("create"), b"{}", Ok(None));
        check(Forge::Github, Some("push"), &github_push("refs/tags/v1.0", SHA, false), Ok(None));
        check(Forge::Forgejo, Some("push"), &gitea_push("refs/tags/v1.0", SHA), Ok(None));

        // Malformed requests.
        check(Forge::Github, None, &main, Err(MissingEvent("X-GitHub-Event")));
        check(Forge::Forgejo, None, &main, Err(MissingEvent("X-Forgejo-Event")));
        check(Forge::Gitea, Some("push"), &gitea_push("refs/heads/main", "76ae82f"), Err(BadCommit));
        check(Forge::Gitea, Some("push"), &gitea_push("refs/heads/main", &"g".repeat(40)), Err(BadCommit));
        check(
            Forge::Gitea,
            Some("push"),
            &gitea_push("refs/heads/", SHA),
            Err(Payload("empty branch name in `ref`".into())),
        );
        let Err(Payload(msg)) = parse_push(Forge::Github, Some("push"), ping) else {
            panic!("ping body parsed as a push")
        };
        assert!(msg.contains("missing field `ref`"), "{msg}");
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        check(Forge::Github, Some("push"), &huge, Err(TooLarge(MAX_BODY_BYTES + 1)));
    }

    #[test]
    fn repository_matching() {
        let event = parse_push(Forge::Forgejo, Some("push"), &gitea_push("refs/heads/main", SHA)).unwrap().unwrap();
        for url in [
            "git+https://git.example.org/ops/nix-config",
            "git+https://git.example.org/ops/nix-config.git?ref=main",
            "https://Git.Example.org/ops/Nix-Config/",
            "git+ssh://forgejo@git.example.org/ops/nix-config.git",
            "git+ssh://forgejo@git.example.org:2222/ops/nix-config",
        ] {
            assert!(event.is_for(url), "{url}");
        }
        for url in [
            "git+https://git.example.org/ops/nix-config-old",
            "git+https://git.example.org/ops",
            "git+https://github.com/ops/nix-config",
            "git+file:///srv/ops/nix-config",
        ] {
            assert!(!event.is_for(url), "{url}");
        }
        let github =
            parse_push(Forge::Github, Some("push"), &github_push("refs/heads/main", SHA, false)).unwrap().unwrap();
        assert!(github.is_for("git+ssh://git@github.com/ops/nix-config"));
    }

    #[test]
    fn forges() {
        for forge in [Forge::Forgejo, Forge::Gitea, Forge::Github] {
            assert_eq!(Forge::parse(forge.as_str()), Ok(forge));
        }
        assert_eq!(
            Forge::parse("gitlab").unwrap_err().to_string(),
            r#"unknown forge "gitlab": expected forgejo, gitea or github"#
        );
    }

    /// Fuzz target `webhook`: any body, for every forge; a push event that parses names a
    /// branch and a 40-digit lower-case commit, and signatures are checked without panics.
    #[test]
    fn fuzz_webhook() {
        crate::fuzz::run("webhook", |bytes| {
            for forge in [Forge::Forgejo, Forge::Gitea, Forge::Github] {
                if let Ok(Some(event)) = parse_push(forge, Some("push"), bytes) {
                    assert!(!event.branch.is_empty());
                    assert_eq!(event.commit.len(), 40);
                    assert!(event.commit.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
                    let _ = event.is_for("git+https://git.example.org/ops/nix-config?ref=main");
                }
                let header = String::from_utf8_lossy(bytes.get(..80).unwrap_or(bytes)).into_owned();
                let _ = verify_signature(forge, b"secret", bytes, Some(&header));
            }
        });
    }
}
