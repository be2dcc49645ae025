//! `berth keys status` and `berth keys rotate deploy`: the server's deploy keys, what each
//! host's agent trusts, and starting a rotation (`deploy::keys` on the server).

use serde::Deserialize;

use super::timestamp;
use crate::{
    client::{Api, ClientError},
    nixfmt::key_name,
};

/// One key as `/api/v1/keys/deploy` reports it.
#[derive(Debug, Deserialize)]
pub struct Key {
    /// Public key, Nix format.
    pub public_key: String,
    /// `next`, `current`, `retiring` or `retired`.
    pub state: String,
    /// Unix seconds of its last state change.
    pub changed_at: i64,
}

/// One host's acknowledgement.
#[derive(Debug, Deserialize)]
pub struct Host {
    /// The host.
    pub host: String,
    /// The keys its agent last listed.
    pub trusts: Option<Vec<String>>,
}

/// The cache key, as the status shows it.
#[derive(Debug, Deserialize)]
pub struct CacheKey {
    /// Public key.
    pub public_key: String,
    /// When berth first signed with it.
    pub first_used: i64,
    /// When it expires, if it does.
    pub expires_at: Option<i64>,
}

/// `GET /api/v1/keys/deploy`.
#[derive(Debug, Deserialize)]
pub struct Status {
    /// The announcement's epoch.
    pub epoch: u64,
    /// Every key.
    pub keys: Vec<Key>,
    /// Hosts the rotation waits for.
    pub waiting_for: Vec<String>,
    /// Every host with a live token.
    pub hosts: Vec<Host>,
    /// The cache signing key (absent from a server before key ages).
    #[serde(default)]
    pub cache: Option<CacheKey>,
}

/// PURE: the status as text.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    out.push_str(&format!("deploy keys (epoch {}):\n", s.epoch));
    for k in &s.keys {
        out.push_str(&format!("  {:<9} {}  since {}\n", k.state, k.public_key, timestamp(k.changed_at)));
    }
    let next = s.keys.iter().find(|k| k.state == "next");
    let retiring: Vec<&Key> = s.keys.iter().filter(|k| k.state == "retiring").collect();
    match next {
        Some(next) if s.waiting_for.is_empty() => {
            out.push_str(&format!(
                "every host trusts {}: it becomes current within seconds\n",
                key_name(&next.public_key)
            ));
        }
        Some(next) => {
            out.push_str(&format!(
                "rotation to {} waits for {} host(s): {}\n",
                key_name(&next.public_key),
                s.waiting_for.len(),
                s.waiting_for.join(", ")
            ));
        }
        None if !retiring.is_empty() => {
            let names: Vec<&str> = retiring.iter().map(|k| key_name(&k.public_key)).collect();
            out.push_str(&format!("retiring {}: dropped by each agent at its next poll\n", names.join(", ")));
        }
        None => {
            out.push_str("no rotation under way\n");
        }
    }
    for h in &s.hosts {
        let trusts = match &h.trusts {
            Some(keys) => keys.iter().map(|k| key_name(k)).collect::<Vec<_>>().join(", "),
            None => "(never said: an agent before rotation, or not polled since)".into(),
        };
        out.push_str(&format!("  {:<20} trusts {}\n", h.host, trusts));
    }
    if let Some(c) = &s.cache {
        let expires =
            c.expires_at.map_or_else(|| "does not expire".to_owned(), |at| format!("expires {}", timestamp(at)));
        out.push_str(&format!("cache key {}  signing since {}, {expires}\n", c.public_key, timestamp(c.first_used)));
    }
    out
}

/// `berth keys status`.
pub async fn status(api: &Api) -> Result<String, ClientError> {
    Ok(render(&api.get("/api/v1/keys/deploy").await?))
}

/// `berth keys rotate deploy`: starts the rotation and says what happens next.
pub async fn rotate_deploy(api: &Api) -> Result<String, ClientError> {
    let next: Key = api.post("/api/v1/keys/deploy/rotate", &serde_json::json!({})).await?;
    Ok(format!(
        "next deploy key: {}\n\
         It co-signs every manifest and is announced to every agent now; once every host's agent\n\
         trusts it, it becomes current and the old key retires (berth keys status shows who is left).\n",
        next.public_key
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(public: &str, state: &str) -> Key {
        Key { public_key: public.into(), state: state.into(), changed_at: 1_796_000_000 }
    }

    #[test]
    fn the_status_says_who_a_rotation_waits_for() {
        let hosts = || {
            vec![
                Host { host: "alpha".into(), trusts: Some(vec!["d-1:AA".into(), "d-2:BB".into()]) },
                Host { host: "beta".into(), trusts: None },
            ]
        };
        let rotating = Status {
            epoch: 3,
            keys: vec![key("d-1:AA", "current"), key("d-2:BB", "next")],
            waiting_for: vec!["beta".into()],
            hosts: hosts(),
            cache: Some(CacheKey { public_key: "c-1:CC".into(), first_used: 1_796_000_000, expires_at: None }),
        };
        let text = render(&rotating);
        assert!(text.contains("deploy keys (epoch 3):\n  current   d-1:AA  since 2026-"), "{text}");
        assert!(text.contains("rotation to d-2 waits for 1 host(s): beta\n"), "{text}");
        assert!(text.contains("  alpha                trusts d-1, d-2\n"), "{text}");
        assert!(text.contains("beta                 trusts (never said"), "{text}");
        assert!(text.contains("cache key c-1:CC  signing since 2026-") && text.contains("does not expire"), "{text}");
        let retiring = Status {
            epoch: 5,
            keys: vec![key("d-1:AA", "retiring"), key("d-2:BB", "current")],
            waiting_for: vec![],
            hosts: hosts(),
            cache: Some(CacheKey {
                public_key: "c-1:CC".into(),
                first_used: 1_796_000_000,
                expires_at: Some(1_800_000_000),
            }),
        };
        assert!(render(&retiring).contains("retiring d-1: dropped by each agent at its next poll"));
        assert!(render(&retiring).contains(", expires 2027-"), "{}", render(&retiring));
        let settled =
            Status { epoch: 2, keys: vec![key("d-1:AA", "current")], waiting_for: vec![], hosts: vec![], cache: None };
        assert!(render(&settled).contains("no rotation under way"));
    }
}
