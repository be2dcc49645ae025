//! berth's side of push mode: `nix copy --to ssh-ng://…` and one `berth-push …` command per
//! fresh SSH connection to a pushed host.
//!
//! Every option comes from the validated configuration (`config/push.rs`): the destination
//! cannot start with `-`, the key is a file path, and the host key is pinned in a
//! `known_hosts` file berth writes, with `StrictHostKeyChecking=yes` and no user or system
//! configuration read (`-F none`). Nix splits `NIX_SSHOPTS` on white space, so paths with
//! white space are refused rather than split.

use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::{args::path_arg, process, NixError};

/// `berth push-gate`'s exit status when no trial of the system named is pending
/// (`deploy::push::host::EXIT_NOT_PENDING`).
const NOT_PENDING: i32 = 3;

/// How long opening a connection may take.
const CONNECT_TIMEOUT_SECS: u32 = 15;

/// A pushed host, as `ssh` reaches it.
#[derive(Debug, Clone, Copy)]
pub struct SshTarget<'a> {
    /// `user@host`.
    pub destination: &'a str,
    /// The SSH port.
    pub port: u16,
    /// berth's private key for the host.
    pub key_file: &'a Path,
    /// The `known_hosts` file holding only the host's pinned key.
    pub known_hosts: &'a Path,
}

/// The `known_hosts` line pinning `host_key` for `destination` on `port` (PURE).
pub fn known_hosts_line(destination: &str, port: u16, host_key: &str) -> String {
    let host = destination.rsplit_once('@').map_or(destination, |(_, h)| h);
    match port {
        22 => format!("{} {host_key}", host.trim_start_matches('[').trim_end_matches(']')),
        port if host.starts_with('[') => format!("{host}:{port} {host_key}"),
        port => format!("[{host}]:{port} {host_key}"),
    }
}

fn plain_path(path: &Path) -> Result<String, NixError> {
    let text = path_arg(path)?;
    if text.chars().any(char::is_whitespace) {
        return Err(NixError::Invalid { what: "path", value: text, reason: "NIX_SSHOPTS cannot hold white space" });
    }
    Ok(text)
}

/// The options every connection gets (PURE apart from checking the paths).
fn options(t: SshTarget<'_>) -> Result<Vec<String>, NixError> {
    let (key, known) = (plain_path(t.key_file)?, plain_path(t.known_hosts)?);
    Ok([
        "-F".into(),
        "none".into(),
        "-i".into(),
        key,
        "-p".into(),
        t.port.to_string(),
        "-o".into(),
        format!("UserKnownHostsFile={known}"),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}"),
        "-o".into(),
        "ServerAliveInterval=5".into(),
        "-o".into(),
        "ServerAliveCountMax=3".into(),
    ]
    .into())
}

/// Signs the closure of `path` in `from` (a store URI or chroot directory; `None`: the
/// system store) with the cache key in `key_file`, then copies it to the host's store, every
/// stderr line sent to `log`. Signed, so that the host's Nix accepts only what berth signed
/// (its `trusted-public-keys`), as a pulled host does.
pub async fn copy(
    t: SshTarget<'_>,
    from: Option<&str>,
    key_file: &Path,
    path: &str,
    timeout: Duration,
    log: &UnboundedSender<String>,
) -> Result<(), NixError> {
    let nix: Vec<String> = ["nix", "--extra-experimental-features", "nix-command"].map(String::from).into();
    let store: Vec<String> = from.map(|s| vec!["--store".to_owned(), s.to_owned()]).unwrap_or_default();
    let mut sign = nix.clone();
    sign.extend(["store".to_owned(), "sign".to_owned(), "--recursive".to_owned(), "--key-file".to_owned()]);
    sign.push(path_arg(key_file)?);
    sign.extend(store);
    sign.push(path.to_owned());
    process::run_streaming(&sign, &[], timeout, log).await?;
    let sshopts = options(t)?.join(" ");
    let mut argv = nix;
    argv.push("copy".to_owned());
    if let Some(from) = from {
        argv.extend(["--from".to_owned(), from.to_owned()]);
    }
    argv.extend(["--to".to_owned(), format!("ssh-ng://{}", t.destination), path.to_owned()]);
    let env = [("NIX_SSHOPTS", std::ffi::OsStr::new(&sshopts))];
    process::run_streaming(&argv, &env, timeout, log).await.map(drop)
}

/// What one `berth-push` command answered.
#[derive(Debug)]
pub enum Answer {
    /// It succeeded; its stdout.
    Done(String),
    /// The host ran it and refused or failed it (exit 1): its reason, the last stderr line.
    Refused(String),
    /// The host has no trial of the system named (`berth-push confirm`'s exit 3).
    NotPending(String),
    /// The host could not be reached, or the connection broke (ssh's exit 255, a timeout).
    Unreachable(String),
}

/// Runs `command` (the forced command reads it from `SSH_ORIGINAL_COMMAND`) over a fresh
/// connection.
pub async fn run(t: SshTarget<'_>, command: &str, timeout: Duration) -> Result<Answer, NixError> {
    let mut argv = vec!["ssh".to_owned()];
    argv.extend(options(t)?);
    argv.extend([t.destination.to_owned(), command.to_owned()]);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    match process::run_streaming(&argv, &[], timeout, &tx).await {
        Ok(stdout) => Ok(Answer::Done(String::from_utf8_lossy(&stdout).trim().to_owned())),
        Err(NixError::Failed { status, stderr_tail, .. }) if status.code() == Some(255) => {
            Ok(Answer::Unreachable(last_line(&stderr_tail)))
        }
        Err(NixError::Failed { status, stderr_tail, .. }) if status.code() == Some(NOT_PENDING) => {
            Ok(Answer::NotPending(last_line(&stderr_tail)))
        }
        Err(NixError::Failed { stderr_tail, .. }) => Ok(Answer::Refused(last_line(&stderr_tail))),
        Err(NixError::Timeout { after, .. }) => {
            Ok(Answer::Unreachable(format!("no answer within {}s", after.as_secs())))
        }
        Err(e) => Err(e),
    }
}

fn last_line(text: &str) -> String {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no reason given").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_lines() {
        let key = "ssh-ed25519 AAAA";
        assert_eq!(known_hosts_line("root@web1", 22, key), "web1 ssh-ed25519 AAAA");
        assert_eq!(known_hosts_line("root@127.0.0.1", 2222, key), "[127.0.0.1]:2222 ssh-ed25519 AAAA");
        assert_eq!(known_hosts_line("root@[::1]", 2222, key), "[::1]:2222 ssh-ed25519 AAAA");
        assert_eq!(known_hosts_line("root@[::1]", 22, key), "::1 ssh-ed25519 AAAA");
    }

    #[test]
    fn paths_with_white_space_are_refused() {
        let t = SshTarget {
            destination: "root@web1",
            port: 22,
            key_file: Path::new("/var/lib/berth/push key"),
            known_hosts: Path::new("/k"),
        };
        assert!(matches!(options(t), Err(NixError::Invalid { .. })));
        let ok = SshTarget { key_file: Path::new("/var/lib/berth/push-key"), ..t };
        let opts = options(ok).unwrap();
        assert!(opts.contains(&"StrictHostKeyChecking=yes".to_owned()), "{opts:?}");
        assert!(opts.contains(&"UserKnownHostsFile=/k".to_owned()), "{opts:?}");
    }
}
