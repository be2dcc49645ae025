//! `delivery = "push"` in `[repositories.hosts.<name>]`: a host without an agent, reached
//! over SSH. Validated here so that nothing from the file reaches `ssh` as an option: the
//! address cannot start with `-`, the host key is one `type base64` line, and the private
//! key is a path to a file (never its contents, never argv).

use std::{path::PathBuf, time::Duration};

use super::{ConfigError, RawHost};

/// The confirmation window when `confirm_timeout_secs` is not set.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(120);

/// How a host gets its generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// The host's agent pulls its manifest (the default).
    #[default]
    Pull,
    /// berth copies the closure over `ssh-ng://` and activates it.
    Push,
}

/// A validated push host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    /// `user@host` (or `user@[v6]`).
    pub destination: String,
    /// The SSH port.
    pub port: u16,
    /// The host's public key, `type base64`, for a `known_hosts` file.
    pub host_key: String,
    /// berth's private key for this host (a 0600 file).
    pub key_file: PathBuf,
    /// How long the host waits for the confirmation before rolling back.
    pub confirm_timeout: Duration,
}

fn invalid(key: &'static str, name: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid { key, reason: format!("host {name}: {reason}") }
}

/// The delivery of host `name`, and its push target when it is pushed.
pub fn push_target(name: &str, raw: &RawHost) -> Result<Option<PushTarget>, ConfigError> {
    let delivery = match raw.delivery.as_deref() {
        None | Some("pull") => Delivery::Pull,
        Some("push") => Delivery::Push,
        Some(other) => {
            return Err(invalid("repositories.hosts.delivery", name, format!("{other:?} is not pull or push")))
        }
    };
    let set = raw.ssh_address.is_some()
        || raw.ssh_host_key.is_some()
        || raw.ssh_key_file.is_some()
        || raw.confirm_timeout_secs.is_some();
    if delivery == Delivery::Pull {
        return if set {
            Err(invalid("repositories.hosts.delivery", name, "ssh_* and confirm_timeout_secs need delivery = \"push\""))
        } else {
            Ok(None)
        };
    }
    let address = raw
        .ssh_address
        .as_deref()
        .ok_or_else(|| invalid("repositories.hosts.ssh_address", name, "required with delivery = \"push\""))?;
    let (destination, port) = parse_address(address).ok_or_else(|| {
        invalid(
            "repositories.hosts.ssh_address",
            name,
            format!("{:?} is not user@host[:port]", address.chars().take(80).collect::<String>()),
        )
    })?;
    let host_key = raw
        .ssh_host_key
        .as_deref()
        .ok_or_else(|| invalid("repositories.hosts.ssh_host_key", name, "required with delivery = \"push\""))?;
    let host_key = parse_host_key(host_key).ok_or_else(|| {
        invalid("repositories.hosts.ssh_host_key", name, "expected `ssh-ed25519 AAAA…` (type and base64, one line)")
    })?;
    let key_file = raw
        .ssh_key_file
        .clone()
        .ok_or_else(|| invalid("repositories.hosts.ssh_key_file", name, "required with delivery = \"push\""))?;
    if !key_file.is_absolute() {
        return Err(invalid(
            "repositories.hosts.ssh_key_file",
            name,
            format!("{} is not an absolute path", key_file.display()),
        ));
    }
    let confirm_timeout = match raw.confirm_timeout_secs {
        None => DEFAULT_CONFIRM_TIMEOUT,
        Some(s @ 10..=3600) => Duration::from_secs(s),
        Some(s) => {
            return Err(invalid(
                "repositories.hosts.confirm_timeout_secs",
                name,
                format!("{s} is not between 10 and 3600"),
            ))
        }
    };
    Ok(Some(PushTarget { destination, port, host_key, key_file, confirm_timeout }))
}

/// `user@host[:port]`, `user@[v6][:port]`: a plain user name, a host of letters, digits,
/// `.`, `-` (not leading) or a bracketed IPv6 address.
pub fn parse_address(s: &str) -> Option<(String, u16)> {
    let (user, rest) = s.split_once('@')?;
    let user_ok = !user.is_empty()
        && user.len() <= 32
        && user.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && user.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !user_ok {
        return None;
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6.split_once(']')?;
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return None;
        }
        (format!("[{addr}]"), after)
    } else {
        let end = rest.find(':').unwrap_or(rest.len());
        let host = &rest[..end];
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && !host.starts_with(['-', '.'])
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !host_ok {
            return None;
        }
        (host.to_owned(), &rest[end..])
    };
    let port = match port {
        "" => 22,
        p => p
            .strip_prefix(':')
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))?
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)?,
    };
    Some((format!("{user}@{host}"), port))
}

/// `type base64` with a known key type.
pub fn parse_host_key(s: &str) -> Option<String> {
    let mut words = s.trim().split(' ');
    let (kind, key) = (words.next()?, words.next()?);
    let known = matches!(
        kind,
        "ssh-ed25519" | "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521" | "ssh-rsa"
    );
    let base64 = !key.is_empty()
        && key.len() <= 1024
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    (known && base64 && words.next().is_none()).then(|| format!("{kind} {key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn addresses() {
        let table: &[(&str, Option<(&str, u16)>)] = &[
            ("root@web1", Some(("root@web1", 22))),
            ("deploy@web1.example.org:2222", Some(("deploy@web1.example.org", 2222))),
            ("root@127.0.0.1:40022", Some(("root@127.0.0.1", 40022))),
            ("root@[::1]:22", Some(("root@[::1]", 22))),
            ("root@[::1]", Some(("root@[::1]", 22))),
            ("web1", None),
            ("@web1", None),
            ("root@", None),
            ("root@-oProxyCommand=id", None),
            ("-oProxyCommand=id@web1", None),
            ("root@web1:0", None),
            ("root@web1:65536", None),
            ("root@web1:22:22", None),
            ("root@web 1", None),
            ("root@web1;id", None),
            ("root@wéb1", None),
            ("Root@web1", None),
            ("root@[::1", None),
            ("root@[]", None),
            ("root@.web1", None),
            ("root@web1:+22", None),
            ("root@web1:", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_address(input), want.map(|(d, p)| (d.to_owned(), p)), "{input:?}");
        }
        assert_eq!(parse_address(&format!("root@{}", "a".repeat(254))), None);
    }

    #[test]
    fn host_keys() {
        assert_eq!(parse_host_key(KEY).as_deref(), Some(KEY));
        assert_eq!(parse_host_key(&format!("{KEY}\n")).as_deref(), Some(KEY));
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-dss AAAA",
            "ssh-ed25519 AAAA comment",
            "ssh-ed25519 AA\nAA",
            "ssh-ed25519 ÄAAA",
            "web1 ssh-ed25519 AAAA",
        ] {
            assert_eq!(parse_host_key(bad), None, "{bad:?}");
        }
        assert_eq!(parse_host_key(&format!("ssh-ed25519 {}", "A".repeat(1025))), None);
    }

    fn raw(delivery: Option<&str>) -> RawHost {
        RawHost {
            delivery: delivery.map(str::to_owned),
            ssh_address: Some("root@127.0.0.1:40022".into()),
            ssh_host_key: Some(KEY.into()),
            ssh_key_file: Some("/var/lib/berth/push-key".into()),
            ..RawHost::default()
        }
    }

    #[test]
    fn targets() {
        let t = push_target("web1", &raw(Some("push"))).expect("valid").expect("pushed");
        assert_eq!(
            (t.destination.as_str(), t.port, t.confirm_timeout),
            ("root@127.0.0.1", 40022, DEFAULT_CONFIRM_TIMEOUT)
        );
        assert_eq!(push_target("web1", &RawHost::default()).expect("pull"), None);
        assert!(push_target("web1", &raw(None)).is_err(), "ssh keys without push");
        assert!(push_target("web1", &raw(Some("carrier-pigeon"))).is_err());
        let mut relative = raw(Some("push"));
        relative.ssh_key_file = Some("push-key".into());
        assert!(push_target("web1", &relative).is_err());
        let mut missing = raw(Some("push"));
        missing.ssh_host_key = None;
        assert!(push_target("web1", &missing).is_err());
        for (secs, ok) in [(9, false), (10, true), (3600, true), (3601, false)] {
            let mut r = raw(Some("push"));
            r.confirm_timeout_secs = Some(secs);
            assert_eq!(push_target("web1", &r).is_ok(), ok, "{secs}");
        }
    }
}
