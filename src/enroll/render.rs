//! PURE text for people: what `berth hosts add` prints (the code and the lines for the host's
//! configuration) and what `berth hosts keys` prints in each format.

use serde::{Deserialize, Serialize};

/// `POST /api/v1/hosts` answer: a new host's (or re-enrolled host's) one-time code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// Host name.
    pub host: String,
    /// The code, shown this once.
    pub code: String,
    /// When it stops working (Unix seconds).
    pub expires_at: i64,
    /// The deploy public key the host's agent must trust (`name:base64`).
    pub deploy_public_key: String,
}

/// `GET /api/v1/hosts/keys` entry: a host's recorded SSH host key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct RecordedKey {
    /// Host name.
    pub host: String,
    /// `ssh-ed25519 <base64>`.
    pub key: String,
}

/// How `berth hosts keys` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyFormat {
    /// `ssh-ed25519 AAAA… host`: age recipients (age, rage, agenix take SSH keys as they are).
    Age,
    /// `host ssh-ed25519 AAAA…`: `known_hosts` lines.
    Ssh,
    /// A JSON array of `{host, key}`.
    Json,
}

/// `berth hosts keys` output.
pub fn keys(keys: &[RecordedKey], format: KeyFormat) -> String {
    match format {
        KeyFormat::Age => keys.iter().map(|k| format!("{} {}\n", k.key, k.host)).collect(),
        KeyFormat::Ssh => keys.iter().map(|k| format!("{} {}\n", k.host, k.key)).collect(),
        KeyFormat::Json => serde_json::to_string_pretty(keys).expect("plain strings") + "\n",
    }
}

/// `berth hosts add` output: the code, its expiry, and how the host uses it.
pub fn enrollment(e: &Enrollment, server: &str, expires: &str) -> String {
    let Enrollment { host, code, deploy_public_key: key, .. } = e;
    format!(
        "enrollment code for {host} (single use, expires {expires} UTC):\n{code}\n\n\
         Put it on the host in a file only root can read, e.g. /var/lib/berth-enroll-code (mode 0600).\n\n\
         NixOS (configuration.nix):\n\
         \x20 services.berth.agent = {{\n\
         \x20   enable = true;\n\
         \x20   server = \"{server}\";\n\
         \x20   host = \"{host}\";\n\
         \x20   deployPublicKey = \"{key}\";\n\
         \x20   enrollmentCodeFile = \"/var/lib/berth-enroll-code\";\n\
         \x20 }};\n\n\
         Or by hand (agent TOML: server = \"{server}\", host = \"{host}\",\n\
         token_file = \"/var/lib/berth-agent/token\", deploy_public_key = \"{key}\"):\n\
         \x20 berth agent enroll --server {server} --host {host} --code-file /var/lib/berth-enroll-code\n\
         \x20 berth agent --server {server} --host {host} --token-file /var/lib/berth-agent/token --deploy-public-key {key}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_formats() {
        let keys_ = [
            RecordedKey { host: "a".into(), key: "ssh-ed25519 AAAA1".into() },
            RecordedKey { host: "b".into(), key: "ssh-ed25519 AAAA2".into() },
        ];
        assert_eq!(keys(&keys_, KeyFormat::Age), "ssh-ed25519 AAAA1 a\nssh-ed25519 AAAA2 b\n");
        assert_eq!(keys(&keys_, KeyFormat::Ssh), "a ssh-ed25519 AAAA1\nb ssh-ed25519 AAAA2\n");
        let json: Vec<RecordedKey> = serde_json::from_str(&keys(&keys_, KeyFormat::Json)).unwrap();
        assert_eq!(json, keys_);
        assert_eq!(keys(&[], KeyFormat::Json), "[]\n");
    }

    #[test]
    fn enrollment_text_names_the_code_and_the_options() {
        let e = Enrollment {
            host: "web-1".into(),
            code: "berth_enroll_x.y".into(),
            expires_at: 0,
            deploy_public_key: "d:K".into(),
        };
        let text = enrollment(&e, "https://b.example", "2026-12-03 15:00:00");
        assert!(text.starts_with(
            "enrollment code for web-1 (single use, expires 2026-12-03 15:00:00 UTC):\nberth_enroll_x.y\n"
        ));
        assert!(text.contains("    enrollmentCodeFile = \"/var/lib/berth-enroll-code\";\n"), "{text}");
        assert!(text.contains("    deployPublicKey = \"d:K\";\n"), "{text}");
        assert!(text.contains("berth agent enroll --server https://b.example --host web-1 --code-file "), "{text}");
    }
}
