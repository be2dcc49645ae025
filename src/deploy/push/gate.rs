//! PURE: the forced command of berth's push key (`berth push-gate`). sshd hands it the
//! client's command line in `SSH_ORIGINAL_COMMAND`; [`parse`] turns that text into one
//! [`Verb`] or refuses it. No shell ever sees the text: the words are split on single
//! spaces, and only a closed set of commands with validated arguments passes.
//!
//! Allowed:
//! - `nix-daemon --stdio` (what `nix copy --to ssh-ng://` runs)
//! - `berth-push test <store path> <seconds>`: activate `test` with a system closure, to be
//!   confirmed within that many seconds (10 to 3600)
//! - `berth-push confirm <store path>`: the confirmation, over a fresh connection
//! - `berth-push boot <store path>`: make the confirmed system the boot default
//! - `berth-push status`: the current, booted and pending systems
//!
//! Whether the store path exists is checked by the caller on the host (I/O), after parsing.

use crate::nixfmt::StorePath;

/// The longest command line accepted; a store path is at most 211 bytes of name plus
/// `/nix/store/`, so every allowed command fits.
pub const MAX_COMMAND: usize = 512;

/// What the push key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    /// `nix-daemon --stdio`: the store protocol, for `nix copy`.
    Daemon,
    /// Activate `test` with this system, to be confirmed within `confirm_within` seconds.
    Test {
        /// The system closure.
        system: String,
        /// Seconds until the host rolls back by itself.
        confirm_within: u64,
    },
    /// Confirm that the system under test reached berth again.
    Confirm(String),
    /// Set the system profile and the boot entry to this (confirmed) system.
    Boot(String),
    /// Report the current, booted and pending systems.
    Status,
}

/// Why a command was refused. Every variant is a refusal: nothing runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// No command at all (an interactive login).
    #[error("no command: the push key runs no shell")]
    Empty,
    /// Longer than [`MAX_COMMAND`].
    #[error("command of {0} bytes is longer than the {MAX_COMMAND} allowed")]
    TooLong(usize),
    /// A byte outside the plain set (shell metacharacters, quotes, control characters,
    /// newlines, non-ASCII), or a doubled, leading or trailing space.
    #[error("command contains a character the push key does not accept")]
    Character,
    /// Not one of the allowed commands.
    #[error("command {0:?} is not allowed for the push key")]
    NotAllowed(String),
    /// The argument is not a store path in /nix/store.
    #[error("{0:?} is not a store path in /nix/store")]
    StorePath(String),
    /// The confirmation window is not a number of seconds from 10 to 3600.
    #[error("{0:?} is not a number of seconds from 10 to 3600")]
    Seconds(String),
}

/// The confirmation windows `berth-push test` accepts, in seconds (as `confirm_timeout_secs`).
pub const CONFIRM_WITHIN: std::ops::RangeInclusive<u64> = 10..=3600;

/// Bytes a command word may contain: what store paths and the fixed words need.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'+' | b'=' | b'?')
}

/// Parses `SSH_ORIGINAL_COMMAND` (absent: `None`).
pub fn parse(command: Option<&str>) -> Result<Verb, GateError> {
    let command = command.unwrap_or("");
    if command.is_empty() {
        return Err(GateError::Empty);
    }
    if command.len() > MAX_COMMAND {
        return Err(GateError::TooLong(command.len()));
    }
    let words: Vec<&str> = command.split(' ').collect();
    if words.iter().any(|w| w.is_empty() || !w.bytes().all(plain)) {
        return Err(GateError::Character);
    }
    let not_allowed = || GateError::NotAllowed(words[0].to_owned());
    match words.as_slice() {
        ["nix-daemon", "--stdio"] => Ok(Verb::Daemon),
        ["berth-push", "status"] => Ok(Verb::Status),
        ["berth-push", "test", path, seconds] => {
            let system = system_path(path)?;
            let confirm_within = seconds
                .parse::<u64>()
                .ok()
                .filter(|s| CONFIRM_WITHIN.contains(s) && !seconds.starts_with(['0', '+']))
                .ok_or_else(|| GateError::Seconds(seconds.chars().take(20).collect()))?;
            Ok(Verb::Test { system, confirm_within })
        }
        ["berth-push", verb, path] => {
            let path = system_path(path)?;
            match *verb {
                "confirm" => Ok(Verb::Confirm(path)),
                "boot" => Ok(Verb::Boot(path)),
                _ => Err(not_allowed()),
            }
        }
        _ => Err(not_allowed()),
    }
}

/// A store path directly in /nix/store: no subdirectory, no `..`, Nix's own name rules.
fn system_path(s: &str) -> Result<String, GateError> {
    let err = || GateError::StorePath(s.chars().take(120).collect());
    let base = s.strip_prefix("/nix/store/").ok_or_else(err)?;
    if base.contains('/') {
        return Err(err());
    }
    let path = StorePath::from_absolute_path(s.as_bytes()).map_err(|_| err())?;
    if path.to_basename() != base {
        return Err(err());
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS: &str = "/nix/store/0c4dpv6m5xa4b4ns8ag3z0xg8rh7il7x-nixos-system-web-24.05";

    fn check(input: Option<&str>, want: Result<Verb, GateError>) {
        assert_eq!(parse(input), want, "input {input:?}");
    }

    #[test]
    fn allowed_commands() {
        check(Some("nix-daemon --stdio"), Ok(Verb::Daemon));
        check(Some("berth-push status"), Ok(Verb::Status));
        for seconds in [10, 120, 3600] {
            let want = Ok(Verb::Test { system: SYS.into(), confirm_within: seconds });
            check(Some(&format!("berth-push test {SYS} {seconds}")), want);
        }
        check(Some(&format!("berth-push confirm {SYS}")), Ok(Verb::Confirm(SYS.into())));
        check(Some(&format!("berth-push boot {SYS}")), Ok(Verb::Boot(SYS.into())));
    }

    #[test]
    fn refused_commands() {
        let cases: Vec<(Option<String>, GateError)> = vec![
            (None, GateError::Empty),
            (Some(String::new()), GateError::Empty),
            (Some("sh".into()), GateError::NotAllowed("sh".into())),
            (Some("nix-daemon".into()), GateError::NotAllowed("nix-daemon".into())),
            (Some("nix-daemon --stdio --option x y".into()), GateError::NotAllowed("nix-daemon".into())),
            (Some("nix-store --serve --write".into()), GateError::NotAllowed("nix-store".into())),
            (Some("berth-push".into()), GateError::NotAllowed("berth-push".into())),
            (Some("berth-push switch /nix/store/x".into()), GateError::StorePath("/nix/store/x".into())),
            (Some(format!("berth-push switch {SYS}")), GateError::NotAllowed("berth-push".into())),
            (Some(format!("berth-push test {SYS}")), GateError::NotAllowed("berth-push".into())),
            (Some(format!("berth-push test {SYS} extra")), GateError::Seconds("extra".into())),
            (Some(format!("berth-push test {SYS} 9")), GateError::Seconds("9".into())),
            (Some(format!("berth-push test {SYS} 3601")), GateError::Seconds("3601".into())),
            (Some(format!("berth-push test {SYS} 0120")), GateError::Seconds("0120".into())),
            (Some(format!("berth-push test {SYS} +120")), GateError::Seconds("+120".into())),
            (Some(format!("berth-push test {SYS} {}", "9".repeat(30))), GateError::Seconds("9".repeat(20))),
            (Some(format!("berth-push test {SYS} 120 x")), GateError::NotAllowed("berth-push".into())),
            (Some(format!("berth-push confirm {SYS} 120")), GateError::NotAllowed("berth-push".into())),
            (Some("nix-daemon --stdio; rm -rf /".into()), GateError::Character),
            (Some("nix-daemon --stdio && id".into()), GateError::Character),
            (Some("nix-daemon --stdio | sh".into()), GateError::Character),
            (Some("nix-daemon $(id)".into()), GateError::Character),
            (Some("nix-daemon `id`".into()), GateError::Character),
            (Some("nix-daemon --stdio\nid".into()), GateError::Character),
            (Some("nix-daemon --stdio\r".into()), GateError::Character),
            (Some("nix-daemon\t--stdio".into()), GateError::Character),
            (Some("nix-daemon  --stdio".into()), GateError::Character),
            (Some(" nix-daemon --stdio".into()), GateError::Character),
            (Some("nix-daemon --stdio ".into()), GateError::Character),
            (Some("nix-daemon '--stdio'".into()), GateError::Character),
            (Some("nix-daemon --stdio\0".into()), GateError::Character),
            (Some("nix-dæmon --stdio".into()), GateError::Character),
            (Some("berth-push test /nix/store/ünïcode 120".into()), GateError::Character),
            (Some("berth-push test /etc/passwd 120".into()), GateError::StorePath("/etc/passwd".into())),
            (Some(format!("berth-push test {SYS}/bin/sh 120")), GateError::StorePath(format!("{SYS}/bin/sh"))),
            (
                Some("berth-push test /nix/store/../../etc 120".into()),
                GateError::StorePath("/nix/store/../../etc".into()),
            ),
            (Some("berth-push test /nix/store/.. 120".into()), GateError::StorePath("/nix/store/..".into())),
            (
                Some("berth-push test /nix/var/nix/profiles/system 120".into()),
                GateError::StorePath("/nix/var/nix/profiles/system".into()),
            ),
            (
                Some("berth-push boot /nix/var/nix/profiles/per-user/root/x".into()),
                GateError::StorePath("/nix/var/nix/profiles/per-user/root/x".into()),
            ),
            (
                Some("berth-push test nix/store/0c4dpv6m5xa4b4ns8ag3z0xg8rh7il7x-x 120".into()),
                GateError::StorePath("nix/store/0c4dpv6m5xa4b4ns8ag3z0xg8rh7il7x-x".into()),
            ),
            (
                Some("berth-push test /nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x 120".into()),
                GateError::StorePath("/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x".into()),
            ),
            (Some("x".repeat(MAX_COMMAND + 1)), GateError::TooLong(MAX_COMMAND + 1)),
        ];
        for (input, want) in cases {
            check(input.as_deref(), Err(want));
        }
    }

    /// Fuzz-style: every command built from allowed words joined by any separator other
    /// than one space, or with any hostile byte inserted anywhere, is refused.
    #[test]
    fn hostile_bytes_anywhere_are_refused() {
        let good = format!("berth-push test {SYS} 120");
        for b in [b';', b'$', b'(', b')', b'`', b'|', b'&', b'>', b'<', b'\n', b'\'', b'"', b'\\', b'*', b' ', b'\t', 0]
        {
            for at in 0..=good.len() {
                let mut s = good.clone().into_bytes();
                s.insert(at, b);
                let s = String::from_utf8(s).expect("ascii");
                assert!(parse(Some(&s)).is_err(), "{s:?} passed");
            }
        }
        for c in ['é', '€', '𝄞', '\u{202e}', '\u{a0}'] {
            for (at, _) in good.char_indices() {
                let mut s = good.clone();
                s.insert(at, c);
                assert_eq!(parse(Some(&s)), Err(GateError::Character), "{s:?}");
            }
        }
    }

    /// Fuzz target `push_gate`: any command line. What passes is made only of the allowed
    /// bytes, within the length bound, and says again exactly what it parsed to.
    #[test]
    fn fuzz_push_gate() {
        crate::fuzz::run("push_gate", |bytes| {
            let text = String::from_utf8_lossy(bytes);
            let Ok(verb) = parse(Some(&text)) else { return };
            assert!(text.len() <= MAX_COMMAND && text.bytes().all(|b| plain(b) || b == b' '), "{text:?}");
            let again = match &verb {
                Verb::Daemon => "nix-daemon --stdio".to_owned(),
                Verb::Status => "berth-push status".to_owned(),
                Verb::Test { system, confirm_within } => format!("berth-push test {system} {confirm_within}"),
                Verb::Confirm(system) => format!("berth-push confirm {system}"),
                Verb::Boot(system) => format!("berth-push boot {system}"),
            };
            assert_eq!(again, text, "only one spelling of each command passes");
        });
    }

    #[test]
    fn over_long_store_paths_are_refused() {
        let long = format!("berth-push test /nix/store/0c4dpv6m5xa4b4ns8ag3z0xg8rh7il7x-{}", "a".repeat(460));
        assert!(matches!(parse(Some(&long)), Err(GateError::TooLong(_))));
        let name = format!("/nix/store/0c4dpv6m5xa4b4ns8ag3z0xg8rh7il7x-{}", "a".repeat(300));
        assert_eq!(
            parse(Some(&format!("berth-push test {name} 120"))),
            Err(GateError::StorePath(name.chars().take(120).collect()))
        );
    }
}
