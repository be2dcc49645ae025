//! `[repositories.forge]`: where a repository's commit statuses go, validated. The owner and
//! name come from the repository's URL (`git+https://forge.example/acme/fleet.git`) unless
//! `repository = "owner/name"` says otherwise (needed for `git+file://` URLs); the token is
//! read from its file at start-up and never logged.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Secret};

/// `[repositories.forge]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForge {
    /// `forgejo`, `gitea` or `github`.
    pub kind: String,
    /// The forge's API root: `https://codeberg.org/api/v1` (Forgejo, Gitea),
    /// `https://api.github.com` (GitHub, the default for `github`) or a GitHub Enterprise
    /// `https://ghe.example/api/v3`.
    pub api_url: Option<String>,
    /// File holding the API token (a Forgejo/Gitea access token with `write:repository`, a
    /// GitHub token with `statuses: write`).
    pub token_file: PathBuf,
    /// `owner/name` on the forge. Default: the last two path segments of the repository URL.
    pub repository: Option<String>,
    /// One `berth/deploy` status for all hosts instead of `berth/deploy/<host>` each
    /// (GitHub keeps at most 1000 statuses per commit and context). Default false.
    pub aggregate: Option<bool>,
}

/// Which API a forge speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgeKind {
    /// Forgejo (Codeberg): Gitea's API, `Authorization: token …`.
    Forgejo,
    /// Gitea.
    Gitea,
    /// GitHub or GitHub Enterprise: `Authorization: Bearer …`.
    Github,
}

impl ForgeKind {
    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Forgejo => "forgejo",
            ForgeKind::Gitea => "gitea",
            ForgeKind::Github => "github",
        }
    }
}

/// A validated forge.
#[derive(Debug, Clone)]
pub struct ForgeConfig {
    /// Its API.
    pub kind: ForgeKind,
    /// The API root, without a trailing slash.
    pub api_url: url::Url,
    /// Owner (user or organisation).
    pub owner: String,
    /// Repository name on the forge.
    pub name: String,
    /// The token.
    pub token: Secret,
    /// One aggregated deploy status.
    pub aggregate: bool,
}

/// Owner and repository names as forges allow them: letters, digits, `-`, `_`, `.`, not
/// `.` or `..` (they become path segments of the API URL).
pub fn valid_forge_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `(owner, name)` from a git URL: `git+https://host/owner/name(.git)`, `git+ssh://git@host/owner/name`,
/// `git+ssh://git@host:22/owner/name.git`; `None` for a local (`file`) URL or any other shape.
pub fn owner_and_name(url: &str) -> Option<(String, String)> {
    let parsed = url::Url::parse(url.strip_prefix("git+").unwrap_or(url)).ok()?;
    if !matches!(parsed.scheme(), "https" | "http" | "ssh") || parsed.host_str().is_none() {
        return None;
    }
    let segments: Vec<&str> = parsed.path_segments()?.filter(|s| !s.is_empty()).collect();
    let [owner, name] = segments[..] else { return None };
    let name = name.strip_suffix(".git").unwrap_or(name);
    (valid_forge_name(owner) && valid_forge_name(name)).then(|| (owner.to_owned(), name.to_owned()))
}

/// The API root, checked: http(s), a host, no credentials, query or fragment.
fn api_url(kind: ForgeKind, raw: Option<&str>) -> Result<url::Url, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { key: "repositories.forge.api_url", reason };
    let text = match (raw, kind) {
        (Some(text), _) => text,
        (None, ForgeKind::Github) => "https://api.github.com",
        (None, _) => {
            return Err(invalid("is required for forgejo and gitea (e.g. https://codeberg.org/api/v1)".into()))
        }
    };
    let url = url::Url::parse(text.trim_end_matches('/')).map_err(|e| invalid(format!("{text:?}: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(invalid(format!("{text:?}: an http(s) URL with a host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("holds credentials: put the token in token_file".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(format!("{text:?}: no query or fragment")));
    }
    Ok(url)
}

impl RawForge {
    /// Validates the forge of the repository at `repo_url`.
    pub fn validate(self, repo_url: &str) -> Result<ForgeConfig, ConfigError> {
        let invalid = |key, reason: String| ConfigError::Invalid { key, reason };
        let kind = match self.kind.as_str() {
            "forgejo" => ForgeKind::Forgejo,
            "gitea" => ForgeKind::Gitea,
            "github" => ForgeKind::Github,
            other => {
                return Err(invalid(
                    "repositories.forge.kind",
                    format!("{other:?}: expected \"forgejo\", \"gitea\" or \"github\""),
                ))
            }
        };
        let api_url = api_url(kind, self.api_url.as_deref())?;
        let (owner, name) = match &self.repository {
            Some(full) => full
                .split_once('/')
                .filter(|(o, n)| valid_forge_name(o) && valid_forge_name(n))
                .map(|(o, n)| (o.to_owned(), n.to_owned()))
                .ok_or_else(|| invalid("repositories.forge.repository", format!("{full:?}: expected owner/name")))?,
            None => owner_and_name(repo_url).ok_or_else(|| {
                invalid(
                    "repositories.forge.repository",
                    format!("cannot tell owner/name from the URL {repo_url:?}: set repository = \"owner/name\""),
                )
            })?,
        };
        let path = &self.token_file;
        let text = std::fs::read(path)
            .map_err(|e| invalid("repositories.forge.token_file", format!("{}: {e}", path.display())))?;
        let token = text.trim_ascii().to_vec();
        // The token goes into a header: a newline or control byte would split or break it.
        if token.is_empty() || token.iter().any(|b| !b.is_ascii_graphic()) {
            return Err(invalid(
                "repositories.forge.token_file",
                format!("{} must hold one token (printable, no spaces)", path.display()),
            ));
        }
        Ok(ForgeConfig { kind, api_url, owner, name, token: Secret(token), aggregate: self.aggregate.unwrap_or(false) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(url: &str, expected: Option<(&str, &str)>) {
        let got = owner_and_name(url);
        assert_eq!(got.as_ref().map(|(o, n)| (o.as_str(), n.as_str())), expected, "{url}");
    }

    #[test]
    fn owner_and_name_come_from_the_url() {
        check("git+https://codeberg.org/acme/fleet.git", Some(("acme", "fleet")));
        check("git+https://github.com/acme/fleet", Some(("acme", "fleet")));
        check("git+ssh://git@codeberg.org/acme/fleet.git", Some(("acme", "fleet")));
        check("git+ssh://git@forge.example:2222/acme/fleet", Some(("acme", "fleet")));
        check("https://github.com/acme/fleet/", Some(("acme", "fleet")));
        check("git+file:///srv/acme/fleet", None);
        check("git+https://forge.example/group/sub/fleet", None);
        check("git+https://forge.example/acme/..", None);
        check("git+https://forge.example/acme/fl%2Fet", None);
        check("git+https://forge.example/fleet", None);
        check("not a url", None);
    }

    #[test]
    fn api_urls_are_checked() {
        assert_eq!(api_url(ForgeKind::Github, None).unwrap().as_str(), "https://api.github.com/");
        assert!(api_url(ForgeKind::Forgejo, None).is_err());
        assert_eq!(
            api_url(ForgeKind::Forgejo, Some("https://codeberg.org/api/v1/")).unwrap().as_str(),
            "https://codeberg.org/api/v1"
        );
        for bad in ["ftp://x/api", "https://user:pw@x/api", "https://x/api?a=1", "https://x/api#f", "/api"] {
            assert!(api_url(ForgeKind::Gitea, Some(bad)).is_err(), "{bad}");
        }
    }

    fn parse(text: &str) -> Result<crate::config::Config, ConfigError> {
        let raw: crate::config::RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: "t".into(), message: e.to_string() })?;
        raw.validate(crate::config::Overrides::default())
    }

    #[test]
    fn forges_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "ghp_s3cret\n").unwrap();
        let repo = "[[repositories]]\nname = \"fleet\"\nrequire_signed_commits = false\n";
        let forge = |url: &str, table: &str| {
            parse(&format!(
                "{repo}url = \"{url}\"\n[repositories.forge]\ntoken_file = \"{}\"\n{table}",
                token.display()
            ))
        };
        let c = forge("git+https://github.com/acme/fleet.git", "kind = \"github\"\naggregate = true").unwrap();
        let f = c.repository("fleet").unwrap().forge.clone().unwrap();
        assert_eq!(
            (f.kind, f.owner.as_str(), f.name.as_str(), f.aggregate),
            (ForgeKind::Github, "acme", "fleet", true)
        );
        assert_eq!(f.token.0, b"ghp_s3cret");
        assert!(!format!("{c:?}").contains("s3cret"), "the token is never in Debug output");
        let c = forge(
            "git+file:///srv/fleet",
            "kind = \"forgejo\"\napi_url = \"http://127.0.0.1:3000/api/v1\"\nrepository = \"ops/fleet\"",
        )
        .unwrap();
        assert_eq!(c.repository("fleet").unwrap().forge.as_ref().unwrap().owner, "ops");
        for (url, table, key) in [
            (
                "git+file:///srv/fleet",
                "kind = \"forgejo\"\napi_url = \"http://x/api/v1\"",
                "repositories.forge.repository",
            ),
            ("git+https://x/a/b", "kind = \"gitlab\"", "repositories.forge.kind"),
            ("git+https://x/a/b", "kind = \"gitea\"", "repositories.forge.api_url"),
            ("git+https://x/a/b", "kind = \"github\"\nrepository = \"a/../b\"", "repositories.forge.repository"),
            ("git+https://x/a/b", "kind = \"github\"\napi_url = \"https://u:p@x/api\"", "repositories.forge.api_url"),
            ("git+https://x/a/b", "kind = \"github\"\ncontext = \"x\"", "unknown field `context`"),
        ] {
            let err = forge(url, table).unwrap_err().to_string();
            assert!(err.contains(key), "{table}: {err}");
        }
        std::fs::write(&token, "two\nlines").unwrap();
        let err = forge("git+https://x/a/b", "kind = \"github\"").unwrap_err().to_string();
        assert!(err.contains("token_file") && !err.contains("two"), "{err}");
    }
}
