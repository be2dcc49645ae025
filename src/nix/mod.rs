//! The only place in berth that spawns processes: `nix`, `git` and `ssh`.
//!
//! Every command is an argv handed to [`tokio::process::Command`], never a shell string, so a
//! store path, URL or flake reference can never be interpreted by a shell. A failing command
//! becomes a [`NixError`] that carries the argv, the exit status and the tail of stderr: the
//! tail is where Nix and git print the one line that explains the failure.
//!
//! - [`store`]: `nix path-info` and the dependency order of a closure (the push client);
//! - [`git`]: berth's bare mirror of each repository, commit signatures, ancestry;
//! - [`flake`]: the hosts of a fleet flake and the build of each host's toplevel;
//! - [`system`]: what the host agent runs: realise, the system profile,
//!   `switch-to-configuration`, health commands, reboot (and on a pushed host, the store
//!   daemon and the deadline watcher);
//! - [`ssh`]: push mode's `nix copy --to ssh-ng://` and `berth-push` commands;
//! - `args` (private): commit hashes, URLs, host names and paths, checked before they reach
//!   a command line;
//! - `process` (private): long-running commands whose stderr is streamed, with a timeout that
//!   stops the whole process group.

mod args;
pub mod flake;
pub mod git;
mod process;
pub mod ssh;
pub mod store;
pub mod system;
#[cfg(test)]
mod testutil;

use std::ffi::OsStr;
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

use args::path_arg;
pub use store::{path_info_closure, topo_sort};

/// How many trailing lines of stderr a [`NixError::Failed`] keeps.
const STDERR_TAIL_LINES: usize = 20;

/// Extra environment variables for a child process, on top of berth's own environment.
///
/// The public functions pass none; tests use it to point Nix at a private cache and an
/// offline configuration without touching the environment of the whole test binary.
pub(crate) type Env<'a> = &'a [(&'a str, &'a OsStr)];

/// Why running `nix` or `git`, or reading its output, failed.
#[derive(Debug, thiserror::Error)]
pub enum NixError {
    /// The program could not be started (usually: not installed or not on `PATH`).
    #[error("cannot run `{}`: {source}", argv.join(" "))]
    Spawn {
        /// The command line.
        argv: Vec<String>,
        /// Why it could not be started.
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("`{}` failed ({status}): {stderr_tail}", argv.join(" "))]
    Failed {
        /// The command line.
        argv: Vec<String>,
        /// Its exit status.
        status: ExitStatus,
        /// The last lines of its stderr.
        stderr_tail: String,
    },
    /// The program ran longer than allowed and was stopped, with everything it started.
    #[error("`{}` timed out after {}s: {stderr_tail}", argv.join(" "), after.as_secs())]
    Timeout {
        /// The command line.
        argv: Vec<String>,
        /// The time limit it exceeded.
        after: Duration,
        /// The last lines of its stderr before it was stopped.
        stderr_tail: String,
    },
    /// The program succeeded but printed something berth cannot understand.
    #[error("cannot parse the output of `{}`: {reason}", argv.join(" "))]
    Output {
        /// The command line.
        argv: Vec<String>,
        /// What was wrong with the output.
        reason: String,
    },
    /// An argument was refused before any process was started (it would not be safe or
    /// meaningful on a command line).
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// What kind of value it is ("commit hash", "host name", ...).
        what: &'static str,
        /// The refused value.
        value: String,
        /// What is expected instead.
        reason: &'static str,
    },
    /// The repository does not have the commit (or it is not a commit).
    #[error("commit {commit} not found in {url}: {detail}")]
    NoSuchCommit {
        /// The commit hash asked for.
        commit: String,
        /// Where it was looked for.
        url: String,
        /// What git said, when it said something.
        detail: String,
    },
    /// Nix reports a path as not valid (not present in the store).
    #[error("{0} is not a valid path in the Nix store")]
    NotValid(String),
    /// References form a cycle between distinct paths, which a Nix store never holds.
    #[error("store paths reference each other in a cycle: {}", .0.join(", "))]
    Cycle(Vec<String>),
}

/// Runs `argv` to completion with stdin closed, capturing stdout and stderr.
///
/// A non-zero exit is an error ([`NixError::Failed`]); on success the full output is returned
/// (stderr may still hold warnings).
pub async fn run(argv: &[String]) -> Result<Output, NixError> {
    run_env(argv, &[]).await
}

/// [`run`] with extra environment variables.
pub(crate) async fn run_env(argv: &[String], env: Env<'_>) -> Result<Output, NixError> {
    let output = output(argv, env).await?;
    if !output.status.success() {
        return Err(failed(argv, &output));
    }
    Ok(output)
}

/// Runs `argv` to completion like [`run`], but returns the output whatever the exit status:
/// for commands whose exit code is an answer (`git merge-base --is-ancestor`,
/// `git verify-commit`), not a failure.
pub(crate) async fn output(argv: &[String], env: Env<'_>) -> Result<Output, NixError> {
    command(argv, env)?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|source| NixError::Spawn { argv: argv.to_vec(), source })
}

/// The [`NixError::Failed`] for a finished command.
pub(crate) fn failed(argv: &[String], output: &Output) -> NixError {
    NixError::Failed {
        argv: argv.to_vec(),
        status: output.status,
        stderr_tail: tail(&output.stderr, STDERR_TAIL_LINES),
    }
}

/// A command for `argv` with stdin closed, killed if its handle is dropped.
fn command(argv: &[String], env: Env<'_>) -> Result<Command, NixError> {
    let Some((program, args)) = argv.split_first() else {
        let source = std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command line");
        return Err(NixError::Spawn { argv: Vec::new(), source });
    };
    let mut cmd = Command::new(program);
    cmd.args(args).envs(env.iter().copied()).stdin(Stdio::null()).kill_on_drop(true);
    Ok(cmd)
}

/// Turns string slices into an owned argv.
pub(crate) fn argv<S: AsRef<str>>(parts: impl IntoIterator<Item = S>) -> Vec<String> {
    parts.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

/// The last `lines` non-empty lines of `bytes`, lossily decoded, joined by newlines.
fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let kept: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail(b"a\n\nb\nc\n", 2), "b\nc");
        assert_eq!(tail(b"only", 20), "only");
    }

    #[tokio::test]
    async fn failures_carry_argv_status_and_stderr_tail() {
        let cmd = argv(["sh", "-c", "echo one >&2; echo two >&2; exit 3"]);
        let err = run(&cmd).await.unwrap_err();
        let NixError::Failed { argv: got, status, stderr_tail } = &err else {
            panic!("{err}");
        };
        assert_eq!((got, status.code(), stderr_tail.as_str()), (&cmd, Some(3), "one\ntwo"));
        assert!(err.to_string().starts_with("`sh -c echo one"), "{err}");

        let missing = run(&argv(["berth-no-such-program"])).await.unwrap_err();
        assert!(matches!(missing, NixError::Spawn { .. }), "{missing}");
        assert!(matches!(run(&[]).await, Err(NixError::Spawn { .. })));
    }
}
