//! Long-running commands (`nix build`): stderr streamed line by line as it comes, a time limit,
//! and a stop that reaches everything the command started.
//!
//! The command runs in its own process group, so that stopping it also stops the helpers it
//! spawned in that group (`git` while fetching, `ssh` to remote builders). Stopping is gentle
//! first: `SIGTERM` lets Nix interrupt its builds and kill its builders itself, which matters
//! because a local builder runs in its *own* session (Nix calls `setsid` for it), out of reach
//! of a signal to our group. A `SIGKILL` to the group follows if Nix has not exited after
//! [`KILL_GRACE`]. Through a daemon, the build runs in `nix-daemon`, which cancels it when our
//! client goes away.
//!
//! Quirk (single-user Nix without build users, as on a bare Debian `nix-bin`): on `SIGTERM`,
//! Nix kills its builder's main process but not that builder's own children, which run on
//! until they finish; with build users or a daemon Nix kills every process of the build user.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc::UnboundedSender;

use super::{command, Env, NixError, STDERR_TAIL_LINES};

/// How long Nix gets to stop its builds after `SIGTERM` before the group is killed.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Runs `argv` with a time limit, sending each stderr line to `log` as it arrives (dropped
/// silently if nobody listens any more), and returns stdout on success.
///
/// On timeout the process group is stopped ([`NixError::Timeout`]); if the returned future is
/// dropped (a cancelled build), the group is stopped the same way in the background.
pub(crate) async fn run_streaming(
    argv: &[String],
    env: Env<'_>,
    limit: Duration,
    log: &UnboundedSender<String>,
) -> Result<Vec<u8>, NixError> {
    let mut cmd = command(argv, env)?;
    // `process_group(0)`: the child leads a new group whose id is its pid.
    cmd.process_group(0).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = cmd.spawn().map_err(|source| NixError::Spawn { argv: argv.to_vec(), source })?;
    let mut group = Group::new(child);
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);

    let child = group.child.as_mut().expect("armed until finished");
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let work = async {
        let mut out = Vec::new();
        let read_out = async {
            if let Some(mut stdout) = stdout {
                stdout.read_to_end(&mut out).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let (read_out, read_err) = tokio::join!(read_out, forward_lines(stderr, log, &mut tail));
        read_out.and(read_err)?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out))
    };
    let finished = tokio::time::timeout(limit, work).await;
    let tail_text = || Vec::from(tail.clone()).join("\n");
    match finished {
        Err(_elapsed) => {
            group.stop().await;
            Err(NixError::Timeout { argv: argv.to_vec(), after: limit, stderr_tail: tail_text() })
        }
        Ok(Err(source)) => {
            group.stop().await;
            Err(NixError::Spawn { argv: argv.to_vec(), source })
        }
        Ok(Ok((status, out))) => {
            group.disarm();
            if status.success() {
                Ok(out)
            } else {
                Err(NixError::Failed { argv: argv.to_vec(), status, stderr_tail: tail_text() })
            }
        }
    }
}

/// Sends every line of `stderr` to `log` and keeps the last non-empty ones in `tail`.
async fn forward_lines(
    stderr: Option<tokio::process::ChildStderr>,
    log: &UnboundedSender<String>,
    tail: &mut VecDeque<String>,
) -> std::io::Result<()> {
    let Some(stderr) = stderr else { return Ok(()) };
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).await? == 0 {
            return Ok(());
        }
        // Builders may print anything; a log line is text, so decode lossily.
        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_owned();
        if !line.trim().is_empty() {
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.clone());
        }
        let _ = log.send(line);
    }
}

/// A running child that leads its own process group, stopped when dropped unless it finished.
struct Group {
    child: Option<Child>,
    pgid: Option<u32>,
}

impl Group {
    fn new(child: Child) -> Self {
        let pgid = child.id();
        Self { child: Some(child), pgid }
    }

    /// The child exited and was reaped: nothing left to stop.
    fn disarm(&mut self) {
        self.child = None;
    }

    /// Stops the group now and waits until the child is gone.
    async fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, self.pgid).await;
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        // Dropped mid-run (the caller gave up): stop gently in the background. Without a
        // runtime, dropping `child` falls back to `kill_on_drop`, a SIGKILL to the child alone.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(terminate(child, self.pgid));
        }
    }
}

/// `SIGTERM` to the group, then `SIGKILL` to the group if the leader is still there after
/// [`KILL_GRACE`]; returns once the leader is reaped.
async fn terminate(mut child: Child, pgid: Option<u32>) {
    let Some(pgid) = pgid else {
        let _ = child.kill().await;
        return;
    };
    signal_group(pgid, "TERM").await;
    if tokio::time::timeout(KILL_GRACE, child.wait()).await.is_err() {
        // The leader is not reaped yet, so its pid (the group id) cannot have been reused.
        signal_group(pgid, "KILL").await;
        let _ = child.kill().await;
    }
}

/// Sends `signal` to the whole process group `pgid`.
///
/// Through the `kill` program (coreutils/procps), because the standard library can only
/// signal a single child, and only with `SIGKILL`. A failure is ignored: the caller falls back
/// to killing the child itself.
async fn signal_group(pgid: u32, signal: &str) {
    let target = format!("-{pgid}");
    let argv = super::argv(["kill", "-s", signal, "--", &target]);
    let _ = super::output(&argv, &[]).await;
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::nix::argv;

    async fn run_sh(script: &str, limit: Duration) -> (Result<Vec<u8>, NixError>, Vec<String>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let result = run_streaming(&argv(["sh", "-c", script]), &[], limit, &tx).await;
        drop(tx);
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        (result, lines)
    }

    #[tokio::test]
    async fn streams_stderr_and_returns_stdout() {
        let (out, lines) = run_sh("echo out; echo one >&2; echo >&2; printf 'two' >&2", Duration::from_secs(10)).await;
        assert_eq!(out.unwrap(), b"out\n");
        assert_eq!(lines, ["one", "", "two"]);

        let (err, _) = run_sh("echo why >&2; exit 4", Duration::from_secs(10)).await;
        let err = err.unwrap_err();
        assert!(
            matches!(&err, NixError::Failed { status, stderr_tail, .. }
            if status.code() == Some(4) && stderr_tail == "why"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn timeout_stops_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        // A grandchild that ignores nothing and would outlive its parent: the group signal must
        // reach it, or it writes the marker.
        let script = format!("(sleep 2; touch '{}') & echo started >&2; sleep 30", marker.display());
        let started = Instant::now();
        let (err, lines) = run_sh(&script, Duration::from_millis(500)).await;
        let err = err.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
        assert!(matches!(&err, NixError::Timeout { stderr_tail, .. } if stderr_tail == "started"), "{err}");
        assert_eq!(lines, ["started"]);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "a process of the group outlived the timeout");
    }

    #[tokio::test]
    async fn dropping_the_future_stops_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let script = format!("(sleep 1; touch '{}') & sleep 30", marker.display());
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let cmd = argv(["sh", "-c", &script]);
        let run = run_streaming(&cmd, &[], Duration::from_secs(60), &tx);
        assert!(tokio::time::timeout(Duration::from_millis(300), run).await.is_err());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "a process of the group outlived the cancelled run");
    }
}
