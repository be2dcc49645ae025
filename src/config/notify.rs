//! `[[notify]]`: outbound webhooks on events, validated. Secrets (the HMAC key, a Matrix
//! access token) are file paths read at start-up.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{ConfigError, Secret};
use crate::events::Kind;

/// `[[notify]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// Where to send: the receiver (`json`, `slack`, `ntfy`: the full URL, e.g.
    /// `https://ntfy.sh/fleet`) or the Matrix homeserver (`https://matrix.example.org`).
    pub url: String,
    /// Event kinds to send (`build_failed`, `generation_rolled_back`, …). Default: the
    /// failures and changes an operator acts on: `build_failed`, `generation_rolled_back`,
    /// `generation_failed`, `host_offline`, `host_back`, `collection_finished`.
    pub events: Option<Vec<String>>,
    /// `json` (berth's payload, signed), `matrix`, `slack` (also Mattermost and other
    /// `{"text": …}` receivers) or `ntfy`. Default `json`.
    pub format: Option<String>,
    /// `json`: file holding the HMAC-SHA256 key of the `X-Berth-Signature` header. Required.
    pub secret_file: Option<PathBuf>,
    /// `matrix`: file holding the access token of the account that posts. Required.
    pub access_token_file: Option<PathBuf>,
    /// `matrix`: the room, `!id:server`. Required.
    pub room_id: Option<String>,
    /// Seconds one attempt may take. Default 10.
    pub timeout_secs: Option<u64>,
}

/// How a notification is written.
#[derive(Debug, Clone)]
pub enum NotifyFormat {
    /// berth's JSON payload, signed with this key.
    Json {
        /// The HMAC key.
        secret: Secret,
    },
    /// A Matrix `m.room.message`.
    Matrix {
        /// The room id.
        room_id: String,
        /// The access token.
        token: Secret,
    },
    /// `{"text": …}`.
    Slack,
    /// A plain-text body with a `Title` header.
    Ntfy,
}

/// A validated `[[notify]]`.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Where.
    pub url: url::Url,
    /// Which kinds.
    pub events: BTreeSet<KindName>,
    /// How.
    pub format: NotifyFormat,
    /// Per attempt.
    pub timeout: Duration,
}

/// An event kind, ordered by name (for a stable set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KindName(pub &'static str);

impl NotifyConfig {
    /// Whether events of `kind` go here.
    pub fn wants(&self, kind: Kind) -> bool {
        self.events.contains(&KindName(kind.as_str()))
    }
}

/// The kinds sent when `events` is not given.
pub const DEFAULT_EVENTS: [Kind; 8] = [
    Kind::BuildFailed,
    Kind::GenerationRolledBack,
    Kind::GenerationFailed,
    Kind::HostOffline,
    Kind::HostBack,
    Kind::CollectionFinished,
    Kind::KeyExpiring,
    Kind::RolloutHalted,
];

fn read_secret(key: &'static str, path: &Option<PathBuf>, format: &str) -> Result<Secret, ConfigError> {
    let path = path
        .as_ref()
        .ok_or_else(|| ConfigError::Invalid { key, reason: format!("is required with format = {format:?}") })?;
    let text =
        std::fs::read(path).map_err(|e| ConfigError::Invalid { key, reason: format!("{}: {e}", path.display()) })?;
    let secret = text.trim_ascii().to_vec();
    if secret.is_empty() || secret.iter().any(|b| b.is_ascii_control()) {
        return Err(ConfigError::Invalid { key, reason: format!("{} must hold one line", path.display()) });
    }
    Ok(Secret(secret))
}

/// Matrix room ids: `!opaque:server`, which becomes one (escaped) path segment.
fn valid_room_id(id: &str) -> bool {
    id.len() <= 255
        && id.starts_with('!')
        && id.contains(':')
        && !id.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl RawNotify {
    /// Validates one entry.
    pub fn validate(self) -> Result<NotifyConfig, ConfigError> {
        let invalid = |key, reason: String| ConfigError::Invalid { key, reason };
        let url = url::Url::parse(&self.url).map_err(|e| invalid("notify.url", format!("{:?}: {e}", self.url)))?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() || url.fragment().is_some() {
            return Err(invalid("notify.url", format!("{:?}: an http(s) URL with a host, no fragment", self.url)));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("notify.url", "holds credentials: use secret_file or access_token_file".into()));
        }
        let events = match &self.events {
            None => DEFAULT_EVENTS.iter().map(|k| KindName(k.as_str())).collect(),
            Some(names) => names
                .iter()
                .map(|n| {
                    Kind::parse(n).map(|k| KindName(k.as_str())).ok_or_else(|| {
                        let all: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                        invalid("notify.events", format!("{n:?}: expected one of {}", all.join(", ")))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let name = self.format.as_deref().unwrap_or("json");
        let format = match name {
            "json" => NotifyFormat::Json { secret: read_secret("notify.secret_file", &self.secret_file, name)? },
            "matrix" => {
                let room_id = self.room_id.clone().ok_or_else(|| invalid("notify.room_id", "is required".into()))?;
                if !valid_room_id(&room_id) {
                    return Err(invalid("notify.room_id", format!("{room_id:?}: expected !id:server")));
                }
                NotifyFormat::Matrix {
                    room_id,
                    token: read_secret("notify.access_token_file", &self.access_token_file, name)?,
                }
            }
            "slack" => NotifyFormat::Slack,
            "ntfy" => NotifyFormat::Ntfy,
            other => return Err(invalid("notify.format", format!("{other:?}: expected json, matrix, slack or ntfy"))),
        };
        let timeout = match self.timeout_secs.unwrap_or(10) {
            secs @ 1..=300 => Duration::from_secs(secs),
            other => return Err(invalid("notify.timeout_secs", format!("{other} is outside 1..=300"))),
        };
        Ok(NotifyConfig { url, events, format, timeout })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<NotifyConfig>, ConfigError> {
        let raw: crate::config::RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: "t".into(), message: e.to_string() })?;
        Ok(raw.validate(crate::config::Overrides::default())?.notify)
    }

    #[test]
    fn notifications_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "k3y\n").unwrap();
        let s = secret.display();
        let n = parse(&format!("[[notify]]\nurl = \"https://hooks.example/b\"\nsecret_file = \"{s}\"")).unwrap();
        assert!(matches!(&n[0].format, NotifyFormat::Json { secret } if secret.0 == b"k3y"));
        assert!(n[0].wants(Kind::BuildFailed) && !n[0].wants(Kind::BuildSucceeded));
        let n = parse("[[notify]]\nurl = \"https://ntfy.sh/fleet\"\nformat = \"ntfy\"\nevents = [\"build_succeeded\"]")
            .unwrap();
        assert!(n[0].wants(Kind::BuildSucceeded) && !n[0].wants(Kind::BuildFailed));
        let matrix =
            format!("[[notify]]\nurl = \"https://m.example\"\nformat = \"matrix\"\naccess_token_file = \"{s}\"\n");
        assert!(parse(&format!("{matrix}room_id = \"!r:m.example\"")).is_ok());
        for (text, key) in [
            ("[[notify]]\nurl = \"https://h/b\"", "notify.secret_file"),
            ("[[notify]]\nurl = \"ftp://h/b\"\nformat = \"slack\"", "notify.url"),
            ("[[notify]]\nurl = \"https://u:p@h/b\"\nformat = \"slack\"", "notify.url"),
            ("[[notify]]\nurl = \"https://h/b\"\nformat = \"irc\"", "notify.format"),
            ("[[notify]]\nurl = \"https://h/b\"\nformat = \"slack\"\nevents = [\"everything\"]", "notify.events"),
            ("[[notify]]\nurl = \"https://h/b\"\nformat = \"slack\"\ntimeout_secs = 0", "notify.timeout_secs"),
            ("[[notify]]\nurl = \"https://h/b\"\nformat = \"slack\"\nsecrett = 1", "unknown field"),
            (&format!("{matrix}room_id = \"#alias:m.example\""), "notify.room_id"),
            (&matrix, "notify.room_id"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
