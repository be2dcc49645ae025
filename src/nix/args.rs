//! Values checked before they reach a command line: commit hashes, repository URLs, host
//! names, flake references and paths. Each check refuses what could be read as an option, change
//! what git or Nix would do, or leak a secret into argv and the logs.

use std::path::Path;

use super::NixError;

/// Refuses anything but a full, lowercase, 40-hex SHA-1 commit hash, as git prints them.
pub(crate) fn check_commit(commit: &str) -> Result<(), NixError> {
    if commit.len() == 40 && commit.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Ok(());
    }
    Err(NixError::Invalid { what: "commit hash", value: commit.to_owned(), reason: "expected 40 lowercase hex digits" })
}

/// The git remote for a repository URL as berth's configuration writes it (flake-style).
///
/// `git+` is Nix's scheme prefix, not git's; a query holds Nix's own parameters. `ref` and
/// `rev` are dropped (berth picks the commit), anything else (`dir`, `submodules`) would change
/// what Nix builds and is refused. Only `https`, `http`, `ssh`, `file` and absolute paths are
/// accepted: git's other transports include `ext::`, which runs commands. A password in the
/// URL is refused: it would show in `ps` and in every error and build log that names the
/// command; git's credential helpers or an SSH key are the way.
pub(crate) fn git_url(url: &str) -> Result<String, NixError> {
    let invalid = |reason| NixError::Invalid { what: "repository URL", value: redact(url), reason };
    let remote = match url.strip_prefix("git+") {
        Some(rest) => {
            let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
            let nix_only = |param: &str| param.is_empty() || param.starts_with("ref=") || param.starts_with("rev=");
            if !query.split('&').all(nix_only) {
                return Err(invalid("only the `ref` and `rev` parameters are supported"));
            }
            base
        }
        None => url,
    };
    let allowed = ["https://", "http://", "ssh://", "file:///"].iter().any(|s| remote.starts_with(s));
    if !(allowed || remote.starts_with('/')) || remote.contains('#') || remote.chars().any(char::is_control) {
        return Err(invalid("expected git+https://, git+ssh://, git+file:///, https://, ssh://, file:/// or /path"));
    }
    if password(remote).is_some() {
        return Err(invalid("a password in the URL would show in argv and logs; use a credential helper"));
    }
    Ok(remote.to_owned())
}

/// The password of a `scheme://user:password@host/…` URL, if it has one.
fn password(url: &str) -> Option<&str> {
    let authority = url.split_once("://")?.1.split('/').next()?;
    let (userinfo, _host) = authority.rsplit_once('@')?;
    userinfo.split_once(':').map(|(_user, password)| password)
}

/// `url` with its password, if any, replaced by `***`, fit for an error message.
fn redact(url: &str) -> String {
    match password(url) {
        Some(password) => url.replacen(&format!(":{password}@"), ":***@", 1),
        None => url.to_owned(),
    }
}

/// Host names reach an attribute path on Nix's command line: letters, digits, `-` and `_`
/// only (no `.` or `"` that would change the path), as NixOS allows in `networking.hostName`.
pub(crate) fn check_host(host: &str) -> Result<(), NixError> {
    if crate::auth::valid_host_name(host) {
        return Ok(());
    }
    Err(NixError::Invalid {
        what: "host name",
        value: host.to_owned(),
        reason: "use 1 to 63 letters, digits, '-' or '_', not starting with '-'",
    })
}

/// berth appends the attribute path itself, after `#`.
pub(crate) fn check_flake(flake: &str) -> Result<(), NixError> {
    if flake.is_empty() || flake.contains('#') || flake.chars().any(char::is_control) {
        return Err(NixError::Invalid {
            what: "flake reference",
            value: flake.to_owned(),
            reason: "expected a flake reference without '#'",
        });
    }
    Ok(())
}

/// A path as an argv element: berth's argv is UTF-8, so that errors can show it.
pub(crate) fn path_arg(path: &Path) -> Result<String, NixError> {
    path.to_str().map(str::to_owned).ok_or_else(|| NixError::Invalid {
        what: "path",
        value: path.display().to_string(),
        reason: "must be valid UTF-8",
    })
}

/// Percent-encodes all but unreserved URL characters and `/`.
pub(crate) fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_url(url: &str, expected: Option<&str>) {
        assert_eq!(git_url(url).ok().as_deref(), expected, "{url}");
    }

    #[test]
    fn urls_become_git_remotes() {
        check_url("git+https://git.example.org/ops/fleet", Some("https://git.example.org/ops/fleet"));
        check_url("git+ssh://git@host/ops/fleet.git?ref=main", Some("ssh://git@host/ops/fleet.git"));
        check_url("git+file:///srv/fleet?rev=0000&ref=x", Some("file:///srv/fleet"));
        check_url("https://host/fleet", Some("https://host/fleet"));
        check_url("file:///srv/fleet", Some("file:///srv/fleet"));
        check_url("/srv/fleet", Some("/srv/fleet"));
        check_url("git+https://host/fleet?dir=sub", None);
        check_url("ext::sh -c touch% /tmp/pwned", None);
        check_url("git+ext::sh", None);
        check_url("-uhttps://x", None);
        check_url("relative/path", None);
        check_url("https://host/fleet#frag", None);
        check_url("git@host:ops/fleet", None);
        check_url("git+ssh://git@host:2222/fleet", Some("ssh://git@host:2222/fleet"));
        check_url("git+https://user:s3cret@host/fleet", None);
        let err = git_url("git+https://user:s3cret@host/fleet").unwrap_err().to_string();
        assert!(err.contains("user:***@host") && !err.contains("s3cret"), "{err}");
    }

    #[test]
    fn commit_hashes_are_checked() {
        assert!(check_commit(&"a".repeat(40)).is_ok());
        for bad in ["", "HEAD", "main", &"A".repeat(40), &"a".repeat(39), &"a".repeat(64), "--all"] {
            assert!(matches!(check_commit(bad), Err(NixError::Invalid { .. })), "{bad}");
        }
    }

    #[test]
    fn host_names_and_flake_references() {
        assert!(check_host("hostA").is_ok() && check_host("web_01-b").is_ok());
        for bad in ["", "a.b", "x\"y", "-o", "a b", "ü", &"h".repeat(64)] {
            assert!(matches!(check_host(bad), Err(NixError::Invalid { what: "host name", .. })), "{bad}");
        }
        assert!(check_flake("git+file:///srv/m?ref=refs/berth/x&rev=x").is_ok());
        for bad in ["", "git+file:///x#nixosConfigurations", "a\nb"] {
            assert!(check_flake(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percent_encoding_keeps_paths_readable() {
        assert_eq!(percent_encode(b"/var/lib/berth-1/x_y.git~"), "/var/lib/berth-1/x_y.git~");
        assert_eq!(percent_encode("/a b/c#d?e%/ü".as_bytes()), "/a%20b/c%23d%3Fe%25/%C3%BC");
    }
}
