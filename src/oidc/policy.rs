//! PURE: whether the claims of a verified ID token allow a build of a repository.
//! Times are checked here (not by the JWT library) so that the leeway is ours and tested.

use serde::Deserialize;

/// Seconds of clock skew allowed on `exp`, `nbf` and `iat` (docs/ci.md).
pub const LEEWAY_SECS: i64 = 60;

/// The longest lifetime (`exp - iat`) accepted: GitHub's tokens live 5–10 minutes,
/// Forgejo's about as long; a token valid for longer is refused.
pub const MAX_LIFETIME_SECS: i64 = 3600;

/// `[repositories.oidc]`, validated: who may submit builds of one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcPolicy {
    /// `iss`, exactly (e.g. `https://token.actions.githubusercontent.com`).
    pub issuer: String,
    /// `aud`, exactly (one of the token's audiences).
    pub audience: String,
    /// The `repository` claim, exactly (`owner/name`).
    pub repository: String,
    /// `ref` patterns: exact, or ending in `*` for a prefix (`refs/heads/*`). Empty: any ref.
    pub refs: Vec<String>,
    /// `workflow` patterns (the workflow's name). Empty: any.
    pub workflows: Vec<String>,
    /// `job_workflow_ref` patterns (GitHub: `owner/repo/.github/workflows/x.yml@refs/heads/main`).
    /// Empty: not checked. A token without the claim fails a non-empty list.
    pub job_workflow_refs: Vec<String>,
}

/// The claims berth reads; every other claim is ignored.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Issuer.
    #[serde(default)]
    pub iss: String,
    /// Audience: a string or a list of strings.
    #[serde(default)]
    pub aud: Audience,
    /// Expiry (seconds since the epoch).
    pub exp: Option<i64>,
    /// Not before.
    pub nbf: Option<i64>,
    /// Issued at.
    pub iat: Option<i64>,
    /// `owner/name`.
    pub repository: Option<String>,
    /// `refs/heads/main`, `refs/tags/v1`.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// The workflow's name.
    pub workflow: Option<String>,
    /// GitHub's reusable-workflow reference.
    pub job_workflow_ref: Option<String>,
    /// The commit the workflow runs for.
    pub sha: Option<String>,
}

/// `aud` as JWT allows it (RFC 7519 §4.1.3).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    /// One audience.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Default for Audience {
    fn default() -> Self {
        Self::Many(Vec::new())
    }
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Self::One(a) => a == wanted,
            Self::Many(list) => list.iter().any(|a| a == wanted),
        }
    }
}

/// Why the claims do not allow the build (each a 401 or 403; see [`PolicyError::is_forbidden`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// `exp` missing.
    #[error("the ID token has no exp claim")]
    NoExpiry,
    /// `iat` missing.
    #[error("the ID token has no iat claim")]
    NoIssuedAt,
    /// Expired.
    #[error("the ID token expired at {0}")]
    Expired(i64),
    /// `nbf` in the future.
    #[error("the ID token is not valid before {0}")]
    NotYetValid(i64),
    /// `iat` in the future.
    #[error("the ID token was issued in the future ({0})")]
    IssuedInFuture(i64),
    /// `exp - iat` too long.
    #[error("the ID token lives {0} s, longer than the {MAX_LIFETIME_SECS} s berth accepts")]
    TooLong(i64),
    /// Wrong `iss`.
    #[error("the ID token's issuer is not the one configured for this repository")]
    Issuer,
    /// Wrong `aud`.
    #[error("the ID token's audience does not include {0:?}")]
    Audience(String),
    /// Wrong or missing `repository`.
    #[error("the ID token is for another repository than {0:?}")]
    Repository(String),
    /// `ref` not allowed.
    #[error("the ID token's ref is not allowed to submit builds of this repository")]
    Ref,
    /// `workflow` not allowed.
    #[error("the ID token's workflow is not allowed to submit builds of this repository")]
    Workflow,
    /// `job_workflow_ref` not allowed.
    #[error("the ID token's job_workflow_ref is not allowed to submit builds of this repository")]
    JobWorkflowRef,
    /// The build names another branch than the one the token's workflow runs on.
    #[error("the ID token is for another branch than the build names")]
    Branch,
    /// The build names another commit than the one the token's workflow runs for.
    #[error("the ID token is for another commit than the build names")]
    Commit,
}

impl PolicyError {
    /// Whether this is 403 (a valid token of the issuer, but not allowed) rather than 401
    /// (not a currently valid token for berth).
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            Self::Repository(_) | Self::Ref | Self::Workflow | Self::JobWorkflowRef | Self::Branch | Self::Commit
        )
    }
}

/// PURE: the build a token may submit is the one its workflow runs for: the branch must be
/// the token's `ref` (`refs/heads/<branch>`; a tag or a token without `ref` submits
/// nothing), and the commit its `sha` when the token has one (GitHub and Forgejo do).
/// Without this, a job on a `test-*` branch allowed by `refs` could ask for a build of
/// `main`, and deploy the whole fleet.
pub fn binds(claims: &Claims, branch: &str, commit: &str) -> Result<(), PolicyError> {
    let on = claims.git_ref.as_deref().and_then(|r| r.strip_prefix("refs/heads/"));
    if on != Some(branch) {
        return Err(PolicyError::Branch);
    }
    match &claims.sha {
        Some(sha) if !sha.eq_ignore_ascii_case(commit) => Err(PolicyError::Commit),
        _ => Ok(()),
    }
}

/// `pattern` matches `value`: exactly, or as a prefix when it ends in `*` (the only wildcard).
pub fn pattern_matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

fn any_matches(patterns: &[String], value: Option<&str>) -> bool {
    patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| pattern_matches(p, v)))
}

/// Whether `claims` (of a token whose signature was verified) allow a build of the
/// repository `policy` guards, at `now` (seconds since the epoch).
pub fn check(policy: &OidcPolicy, claims: &Claims, now: i64) -> Result<(), PolicyError> {
    let exp = claims.exp.ok_or(PolicyError::NoExpiry)?;
    let iat = claims.iat.ok_or(PolicyError::NoIssuedAt)?;
    if now > exp.saturating_add(LEEWAY_SECS) {
        return Err(PolicyError::Expired(exp));
    }
    if let Some(nbf) = claims.nbf {
        if now.saturating_add(LEEWAY_SECS) < nbf {
            return Err(PolicyError::NotYetValid(nbf));
        }
    }
    if now.saturating_add(LEEWAY_SECS) < iat {
        return Err(PolicyError::IssuedInFuture(iat));
    }
    let lifetime = exp.saturating_sub(iat);
    if lifetime > MAX_LIFETIME_SECS {
        return Err(PolicyError::TooLong(lifetime));
    }
    if claims.iss != policy.issuer {
        return Err(PolicyError::Issuer);
    }
    if !claims.aud.contains(&policy.audience) {
        return Err(PolicyError::Audience(policy.audience.clone()));
    }
    if claims.repository.as_deref() != Some(policy.repository.as_str()) {
        return Err(PolicyError::Repository(policy.repository.clone()));
    }
    if !any_matches(&policy.refs, claims.git_ref.as_deref()) {
        return Err(PolicyError::Ref);
    }
    if !any_matches(&policy.workflows, claims.workflow.as_deref()) {
        return Err(PolicyError::Workflow);
    }
    if !any_matches(&policy.job_workflow_refs, claims.job_workflow_ref.as_deref()) {
        return Err(PolicyError::JobWorkflowRef);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_token_submits_only_the_build_its_workflow_runs_for() {
        let claims = |git_ref: Option<&str>, sha: Option<&str>| Claims {
            git_ref: git_ref.map(str::to_owned),
            sha: sha.map(str::to_owned),
            ..Claims::default()
        };
        let c = "a".repeat(40);
        for (git_ref, sha, branch, commit, want) in [
            (Some("refs/heads/main"), Some(c.as_str()), "main", c.as_str(), Ok(())),
            (Some("refs/heads/main"), Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), "main", c.as_str(), Ok(())),
            (Some("refs/heads/main"), None, "main", c.as_str(), Ok(())),
            (Some("refs/heads/test-alpha"), Some(c.as_str()), "main", c.as_str(), Err(PolicyError::Branch)),
            (Some("refs/heads/main"), Some(c.as_str()), "main", "b".repeat(40).as_str(), Err(PolicyError::Commit)),
            (Some("refs/tags/main"), None, "main", c.as_str(), Err(PolicyError::Branch)),
            (Some("main"), None, "main", c.as_str(), Err(PolicyError::Branch)),
            (Some("refs/heads/main/../x"), None, "main", c.as_str(), Err(PolicyError::Branch)),
            (Some("refs/heads/mäin"), None, "main", c.as_str(), Err(PolicyError::Branch)),
            (None, Some(c.as_str()), "main", c.as_str(), Err(PolicyError::Branch)),
        ] {
            assert_eq!(binds(&claims(git_ref, sha), branch, commit), want, "{git_ref:?} {sha:?} {branch}");
        }
        assert!(PolicyError::Branch.is_forbidden() && PolicyError::Commit.is_forbidden());
    }

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn policy() -> OidcPolicy {
        OidcPolicy {
            issuer: "https://token.actions.githubusercontent.com".into(),
            audience: "https://berth.example".into(),
            repository: "acme/fleet".into(),
            refs: vec!["refs/heads/main".into(), "refs/heads/test-*".into()],
            workflows: vec!["deploy".into()],
            job_workflow_refs: vec![],
        }
    }

    fn claims() -> Claims {
        Claims {
            iss: "https://token.actions.githubusercontent.com".into(),
            aud: Audience::One("https://berth.example".into()),
            exp: Some(NOW + 300),
            nbf: Some(NOW - 5),
            iat: Some(NOW - 5),
            repository: Some("acme/fleet".into()),
            git_ref: Some("refs/heads/main".into()),
            workflow: Some("deploy".into()),
            job_workflow_ref: Some("acme/fleet/.github/workflows/deploy.yml@refs/heads/main".into()),
            sha: None,
        }
    }

    #[test]
    fn patterns() {
        for (pattern, value, ok) in [
            ("refs/heads/main", "refs/heads/main", true),
            ("refs/heads/main", "refs/heads/main2", false),
            ("refs/heads/main", "refs/heads/mai", false),
            ("refs/heads/*", "refs/heads/x/y", true),
            ("refs/heads/*", "refs/tags/v1", false),
            ("*", "anything", true),
            ("refs/heads/e*", "refs/heads/été", false),
            ("refs/heads/é*", "refs/heads/été", true),
            ("refs/heads/é*", "refs/heads/éa", true),
            ("refs/heads/m?in", "refs/heads/main", false),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(pattern_matches(pattern, value), ok, "{pattern:?} ~ {value:?}");
        }
    }

    #[test]
    fn claim_table() {
        type Edit = fn(&mut Claims, &mut OidcPolicy);
        let cases: Vec<(&str, Edit, Result<(), PolicyError>)> = vec![
            ("valid", |_, _| {}, Ok(())),
            ("test branch by pattern", |c, _| c.git_ref = Some("refs/heads/test-web1".into()), Ok(())),
            ("aud list", |c, _| c.aud = Audience::Many(vec!["x".into(), "https://berth.example".into()]), Ok(())),
            (
                "aud missing",
                |c, _| c.aud = Audience::default(),
                Err(PolicyError::Audience("https://berth.example".into())),
            ),
            (
                "aud other",
                |c, _| c.aud = Audience::One("https://berth.example.evil".into()),
                Err(PolicyError::Audience("https://berth.example".into())),
            ),
            ("no exp", |c, _| c.exp = None, Err(PolicyError::NoExpiry)),
            ("no iat", |c, _| c.iat = None, Err(PolicyError::NoIssuedAt)),
            (
                "expired beyond leeway",
                |c, _| c.exp = Some(NOW - LEEWAY_SECS - 1),
                Err(PolicyError::Expired(NOW - LEEWAY_SECS - 1)),
            ),
            ("expired within leeway", |c, _| c.exp = Some(NOW - LEEWAY_SECS), Ok(())),
            (
                "nbf future",
                |c, _| c.nbf = Some(NOW + LEEWAY_SECS + 1),
                Err(PolicyError::NotYetValid(NOW + LEEWAY_SECS + 1)),
            ),
            ("nbf within leeway", |c, _| c.nbf = Some(NOW + LEEWAY_SECS), Ok(())),
            (
                "iat future",
                |c, _| c.iat = Some(NOW + LEEWAY_SECS + 1),
                Err(PolicyError::IssuedInFuture(NOW + LEEWAY_SECS + 1)),
            ),
            (
                "too long-lived",
                |c, _| {
                    c.iat = Some(NOW);
                    c.exp = Some(NOW + MAX_LIFETIME_SECS + 1)
                },
                Err(PolicyError::TooLong(MAX_LIFETIME_SECS + 1)),
            ),
            ("exp overflow", |c, _| c.exp = Some(i64::MAX), Err(PolicyError::TooLong(i64::MAX - (NOW - 5)))),
            (
                "issuer other",
                |c, _| c.iss = "https://token.actions.githubusercontent.com.evil".into(),
                Err(PolicyError::Issuer),
            ),
            ("issuer trailing slash", |c, _| c.iss.push('/'), Err(PolicyError::Issuer)),
            (
                "other repository",
                |c, _| c.repository = Some("acme/fleet2".into()),
                Err(PolicyError::Repository("acme/fleet".into())),
            ),
            (
                "repository case",
                |c, _| c.repository = Some("ACME/fleet".into()),
                Err(PolicyError::Repository("acme/fleet".into())),
            ),
            ("no repository", |c, _| c.repository = None, Err(PolicyError::Repository("acme/fleet".into()))),
            ("ref not allowed", |c, _| c.git_ref = Some("refs/heads/feature".into()), Err(PolicyError::Ref)),
            ("tag ref", |c, _| c.git_ref = Some("refs/tags/v1".into()), Err(PolicyError::Ref)),
            ("no ref", |c, _| c.git_ref = None, Err(PolicyError::Ref)),
            (
                "any ref",
                |c, p| {
                    c.git_ref = None;
                    p.refs.clear()
                },
                Ok(()),
            ),
            ("workflow other", |c, _| c.workflow = Some("deploy2".into()), Err(PolicyError::Workflow)),
            (
                "job_workflow_ref required",
                |c, p| {
                    p.job_workflow_refs = vec!["acme/fleet/.github/workflows/deploy.yml@refs/heads/main".into()];
                    c.job_workflow_ref = None
                },
                Err(PolicyError::JobWorkflowRef),
            ),
            (
                "job_workflow_ref ok",
                |_, p| p.job_workflow_refs = vec!["acme/fleet/.github/workflows/deploy.yml@*".into()],
                Ok(()),
            ),
            (
                "job_workflow_ref other repo",
                |c, p| {
                    p.job_workflow_refs = vec!["acme/fleet/*".into()];
                    c.job_workflow_ref = Some("evil/x/.github/workflows/a.yml@refs/heads/main".into())
                },
                Err(PolicyError::JobWorkflowRef),
            ),
        ];
        for (name, edit, want) in cases {
            let (mut c, mut p) = (claims(), policy());
            edit(&mut c, &mut p);
            assert_eq!(check(&p, &c, NOW), want, "{name}");
        }
        assert!(PolicyError::Ref.is_forbidden());
        assert!(!PolicyError::Expired(0).is_forbidden());
    }

    #[test]
    fn claims_parse_from_json() {
        let c: Claims = serde_json::from_str(
            r#"{"iss":"i","aud":["a","b"],"exp":2,"iat":1,"ref":"refs/heads/main","repository":"o/r","extra":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(c.git_ref.as_deref(), Some("refs/heads/main"));
        assert!(c.aud.contains("b"));
        assert!(serde_json::from_str::<Claims>(r#"{"exp":"soon"}"#).is_err());
    }
}
