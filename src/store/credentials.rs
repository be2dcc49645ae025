//! AWS shared-credentials files (`~/.aws/credentials`, or a file handed over by systemd's
//! `LoadCredential`): a small INI parser, pure, and the one function that reads the file.
//! No error repeats a line of the file: a typo could sit next to a secret.

use std::path::{Path, PathBuf};

/// An access key, its secret and an optional session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `aws_access_key_id`: an identifier, not a secret.
    pub access_key_id: String,
    /// `aws_secret_access_key`.
    pub secret_access_key: String,
    /// `aws_session_token`, for temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why a credentials file's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A line that is neither a comment, a `[section]` nor a `key = value`.
    #[error("line {0}: expected [profile] or key = value")]
    Syntax(usize),
    /// A `key = value` before any `[section]`.
    #[error("line {0}: key outside a [profile] section")]
    NoSection(usize),
    /// The profile is not in the file.
    #[error("no [{0}] profile")]
    NoProfile(String),
    /// The profile lacks a key.
    #[error("profile [{profile}] has no {field}")]
    Missing {
        /// The profile.
        profile: String,
        /// The missing key.
        field: &'static str,
    },
}

/// Why credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file cannot be read.
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is malformed or lacks the profile.
    #[error("credentials file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: ParseError,
    },
}

/// Reads `profile` from the shared-credentials file at `path`.
pub fn load(path: &Path, profile: &str) -> Result<Credentials, CredentialsError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| CredentialsError::Read { path: path.to_owned(), source })?;
    parse(&text, profile).map_err(|source| CredentialsError::Parse { path: path.to_owned(), source })
}

/// Finds `profile` in the text of a shared-credentials file. Keys are matched
/// case-insensitively; keys berth does not need (`region`, …) are ignored.
pub fn parse(text: &str, profile: &str) -> Result<Credentials, ParseError> {
    let (mut section, mut found) = (None::<String>, false);
    let (mut key_id, mut secret, mut token) = (None, None, None);
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            // `[profile x]` is the config-file spelling; accept it here too.
            let name = name.trim();
            let name = name.strip_prefix("profile ").map_or(name, str::trim);
            found |= name == profile;
            section = Some(name.to_owned());
            continue;
        }
        let (key, value) = line.split_once('=').ok_or(ParseError::Syntax(n + 1))?;
        let current = section.as_deref().ok_or(ParseError::NoSection(n + 1))?;
        if current != profile {
            continue;
        }
        let value = Some(value.trim().to_owned());
        match key.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => key_id = value,
            "aws_secret_access_key" => secret = value,
            "aws_session_token" => token = value,
            _ => {}
        }
    }
    if !found {
        return Err(ParseError::NoProfile(profile.to_owned()));
    }
    let missing = |field| ParseError::Missing { profile: profile.to_owned(), field };
    Ok(Credentials {
        access_key_id: key_id.filter(|v| !v.is_empty()).ok_or_else(|| missing("aws_access_key_id"))?,
        secret_access_key: secret.filter(|v| !v.is_empty()).ok_or_else(|| missing("aws_secret_access_key"))?,
        session_token: token.filter(|v| !v.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, profile: &str, expected: Result<(&str, &str, Option<&str>), ParseError>) {
        let got = parse(text, profile);
        let expected = expected.map(|(k, s, t)| Credentials {
            access_key_id: k.into(),
            secret_access_key: s.into(),
            session_token: t.map(Into::into),
        });
        assert_eq!(got, expected);
    }

    const FILE: &str = "# written by hand\n\
        [default]\n\
        aws_access_key_id = AKIDEFAULT\n\
        aws_secret_access_key=s3cr3t\n\
        region = eu-west-1\n\
        \n\
        ; temporary\n\
        [profile ci]\n\
        AWS_ACCESS_KEY_ID = AKICI\n\
        aws_secret_access_key = ci/secret+with=equals\n\
        aws_session_token = tok\n\
        [broken]\n\
        aws_access_key_id = AKIBROKEN\n";

    #[test]
    fn profiles() {
        check(FILE, "default", Ok(("AKIDEFAULT", "s3cr3t", None)));
        check(FILE, "ci", Ok(("AKICI", "ci/secret+with=equals", Some("tok"))));
        check(FILE, "nope", Err(ParseError::NoProfile("nope".into())));
        check(FILE, "broken", Err(ParseError::Missing { profile: "broken".into(), field: "aws_secret_access_key" }));
    }

    #[test]
    fn malformed_lines_are_reported_without_their_text() {
        check("[default]\nthis is a secret\n", "default", Err(ParseError::Syntax(2)));
        check("aws_access_key_id = x\n[default]\n", "default", Err(ParseError::NoSection(1)));
        assert!(!ParseError::Syntax(2).to_string().contains("secret"));
    }

    #[test]
    fn debug_hides_the_secret() {
        let c = parse(FILE, "ci").unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("AKICI") && !shown.contains("equals") && !shown.contains("tok\""), "{shown}");
    }
}
