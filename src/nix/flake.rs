//! The fleet flake: which hosts it defines, and the build of each host's system.
//!
//! Flakes are enabled on the command line (`--extra-experimental-features`), never required in
//! the machine's `nix.conf`. Nix's own settings are used as they are, remote `builders`
//! included. `--no-update-lock-file`: a build host builds exactly what the commit pins; a
//! flake whose lock file is missing an input is an error, not a fresh resolution.
//! `--option eval-cache false`: Nix's evaluation cache is one SQLite file per flake under
//! `$XDG_CACHE_HOME/nix/eval-cache-v*/`, and an evaluation holds a write transaction on it
//! from start to end; a second evaluation of the same flake at once (another host of the
//! build, another worker, an operator's `nix build`) then logs `error (ignored): SQLite
//! database … is busy`. The builder evaluates each commit once, so the cache would only
//! ever serve a retried build: it is off, and build logs stay clean.
//!
//! Quirk (Nix 2.8): `flake#nixosConfigurations.x` is looked up as
//! `packages.<system>.nixosConfigurations.x` and `legacyPackages.<system>.…` before
//! `nixosConfigurations.x`; 2.8 has no syntax for "this exact path". A fleet flake does not
//! define those, and `nixos-rebuild` resolves the same way.

use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::args::{check_flake, check_host, percent_encode};
use super::{argv, path_arg, process, run_env, Env, NixError};

/// Nix's options that every flake command takes.
const FLAKE_OPTIONS: [&str; 6] =
    ["--extra-experimental-features", "nix-command flakes", "--no-update-lock-file", "--option", "eval-cache", "false"];

/// A flake reference to exactly `commit` in the bare mirror at `mirror`, after
/// [`super::git::fetch`] brought the commit in (and pinned it as `refs/berth/<commit>`).
///
/// The form is `git+file:///<mirror>?ref=refs/berth/<commit>&rev=<commit>`. Quirks of Nix 2.8
/// that make the `ref` necessary: a bare repository is not a "local" repository to Nix (it
/// looks for `.git`), so Nix fetches `ref` from it into its own clone under
/// `$XDG_CACHE_HOME/nix/gitv3/` even when `rev` is given; without `ref` it fetches `HEAD`'s
/// branch, which a mirror may not have ("couldn't find remote ref refs/heads/master"). The pin
/// is a ref that exists and holds the commit even when it is on no branch. The mirror path is
/// made absolute and percent-encoded (a space or `#` would end the URL).
pub fn flake_ref(mirror: &Path, commit: &str) -> String {
    let mirror = std::path::absolute(mirror).unwrap_or_else(|_| mirror.to_path_buf());
    let path = percent_encode(mirror.as_os_str().as_encoded_bytes());
    format!("git+file://{path}?ref=refs/berth/{commit}&rev={commit}")
}

/// The names of the flake's `nixosConfigurations`, sorted as Nix sorts them.
///
/// Only the names are evaluated (`builtins.attrNames`), not the configurations.
///
/// `store` is the chroot store directory to evaluate in (the flake's source is copied into
/// the store), None for the machine's own store. Nix 2.8 and current Nix print the same JSON
/// list of strings.
pub async fn list_hosts(flake: &str, store: Option<&Path>) -> Result<Vec<String>, NixError> {
    list_hosts_in(flake, store, &[]).await
}

/// [`list_hosts`] with extra environment variables for Nix.
pub(crate) async fn list_hosts_in(flake: &str, store: Option<&Path>, env: Env<'_>) -> Result<Vec<String>, NixError> {
    check_flake(flake)?;
    let mut argv = argv(["nix", "eval", "--json", "--apply", "builtins.attrNames"]);
    argv.extend(FLAKE_OPTIONS.map(String::from));
    argv.extend(store_args(store)?);
    argv.extend(["--".to_owned(), format!("{flake}#nixosConfigurations")]);
    let output = run_env(&argv, env).await?;
    serde_json::from_slice(&output.stdout).map_err(|e| NixError::Output { argv, reason: e.to_string() })
}

/// Builds `host`'s `config.system.build.toplevel` from `flake` and returns its store path.
///
/// `out_link` (in an existing directory) becomes a symlink to the result and a GC root
/// registered with Nix, so the build host's garbage collector keeps the system until berth
/// removes the link. Every stderr line (Nix's messages and, with `-L`, the build log as
/// `name> line`) is sent to `log` as it arrives. After `timeout` the build is stopped, with
/// everything it started, and [`NixError::Timeout`] returned.
///
/// `store` is the chroot store directory to build into, None for the machine's own store.
pub async fn build_toplevel(
    flake: &str,
    host: &str,
    store: Option<&Path>,
    out_link: &Path,
    timeout: Duration,
    log: UnboundedSender<String>,
) -> Result<String, NixError> {
    build_toplevel_in(flake, host, store, out_link, timeout, log, &[]).await
}

/// [`build_toplevel`] with extra environment variables for Nix.
pub(crate) async fn build_toplevel_in(
    flake: &str,
    host: &str,
    store: Option<&Path>,
    out_link: &Path,
    timeout: Duration,
    log: UnboundedSender<String>,
    env: Env<'_>,
) -> Result<String, NixError> {
    check_flake(flake)?;
    check_host(host)?;
    // Nix 2.8 has no `--print-out-paths`; `--json` prints `[{"drvPath":…,"outputs":{"out":…}}]`.
    let mut argv = argv(["nix", "build", "--json", "-L", "--out-link"]);
    argv.push(path_arg(out_link)?);
    argv.extend(FLAKE_OPTIONS.map(String::from));
    argv.extend(store_args(store)?);
    argv.extend(["--".to_owned(), format!("{flake}#nixosConfigurations.{host}.config.system.build.toplevel")]);
    let stdout = process::run_streaming(&argv, env, timeout, &log).await?;
    out_path(&stdout).map_err(|e| NixError::Output { argv, reason: e.to_string() })
}

/// `--store DIR` for a chroot store, nothing for the machine's own.
fn store_args(store: Option<&Path>) -> Result<Vec<String>, NixError> {
    Ok(match store {
        Some(dir) => vec!["--store".to_owned(), path_arg(dir)?],
        None => Vec::new(),
    })
}

/// What `nix build --json` printed, when it is not one installable with an `out` path.
#[derive(Debug, thiserror::Error)]
enum OutPathError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("no `out` path")]
    NoOut,
    #[error("expected one built installable, got {0}")]
    Count(usize),
}

/// The `out` output of the single installable in `nix build --json`'s output.
fn out_path(stdout: &[u8]) -> Result<String, OutPathError> {
    #[derive(serde::Deserialize)]
    struct Built {
        outputs: std::collections::HashMap<String, String>,
    }
    let built: Vec<Built> = serde_json::from_slice(stdout)?;
    match built.as_slice() {
        [one] => one.outputs.get("out").filter(|p| p.starts_with('/')).cloned().ok_or(OutPathError::NoOut),
        _ => Err(OutPathError::Count(built.len())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    use super::*;
    use crate::nix::git;
    use crate::nix::testutil::{processes_with_env, Fleet, Scratch};

    #[test]
    fn flake_refs_name_the_pinned_commit() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            flake_ref(Path::new("/var/lib/berth/git/fleet"), sha),
            format!("git+file:///var/lib/berth/git/fleet?ref=refs/berth/{sha}&rev={sha}")
        );
        assert!(flake_ref(Path::new("/a b/c#d?e%"), sha).starts_with("git+file:///a%20b/c%23d%3Fe%25?ref="));
        assert!(flake_ref(Path::new("relative"), sha).starts_with("git+file:///"));
    }

    #[test]
    fn nix_build_json_gives_the_out_path() {
        let json = br#"[{"drvPath":"/nix/store/x.drv","outputs":{"out":"/nix/store/qm8-hostA"}}]"#;
        assert_eq!(out_path(json).unwrap(), "/nix/store/qm8-hostA");
        // Real output of Nix 2.8 and 2.26 for the same derivation: the same shape. Later
        // versions add fields such as `startTime`/`stopTime`: ignored.
        let top = "/nix/store/il649147lik07jf7cq2k0vag8szqbx6b-top";
        for json in [
            r#"[{"drvPath":"/nix/store/r7z490c5irkdchaa4xm3cs8d2bqj004q-top.drv","outputs":{"out":"/nix/store/il649147lik07jf7cq2k0vag8szqbx6b-top"}}]"#,
            r#"[{"drvPath":"/nix/store/r7z490c5irkdchaa4xm3cs8d2bqj004q-top.drv","outputs":{"out":"/nix/store/il649147lik07jf7cq2k0vag8szqbx6b-top"},"startTime":1796206670,"stopTime":1796206671}]"#,
        ] {
            assert_eq!(out_path(json.as_bytes()).unwrap(), top, "{json}");
        }
        assert!(out_path(b"[]").is_err());
        assert!(out_path(br#"[{"outputs":{"dev":"/nix/store/a"}}]"#).is_err());
    }

    /// A fresh fleet, fetched into a mirror; its flake reference.
    async fn fleet(scratch: &Scratch) -> String {
        let fleet = Fleet::new(scratch);
        let mirror = scratch.path("mirror");
        git::fetch(&mirror, &fleet.url(), &fleet.head()).await.unwrap();
        flake_ref(&mirror, &fleet.head())
    }

    async fn build(
        scratch: &Scratch,
        flake: &str,
        host: &str,
        limit: Duration,
    ) -> (Result<String, NixError>, Vec<String>) {
        let (tx, rx) = unbounded_channel();
        let link = scratch.path(&format!("{host}-system"));
        let result = build_toplevel_in(flake, host, None, &link, limit, tx, &scratch.nix_env()).await;
        (result, drain(rx).await)
    }

    async fn drain(mut rx: UnboundedReceiver<String>) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        lines
    }

    #[tokio::test]
    async fn lists_and_builds_hosts() {
        let scratch = Scratch::new();
        let flake = fleet(&scratch).await;
        let hosts = list_hosts_in(&flake, None, &scratch.nix_env()).await.unwrap();
        assert_eq!(hosts, ["broken", "hostA", "hostB", "slow"]);

        let (built, log) = build(&scratch, &flake, "hostA", Duration::from_secs(60)).await;
        let path = built.unwrap();
        assert!(path.starts_with("/nix/store/") && path.ends_with("-hostA"), "{path}");
        let link = scratch.path("hostA-system");
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new(&path));
        assert!(link.join("bin/switch-to-configuration").is_file());
        assert!(log.iter().any(|l| l == "hostA> building hostA"), "{log:?}");
    }

    #[tokio::test]
    async fn a_failing_host_reports_the_log_tail() {
        let scratch = Scratch::new();
        let flake = fleet(&scratch).await;
        let (built, log) = build(&scratch, &flake, "broken", Duration::from_secs(60)).await;
        let err = built.unwrap_err();
        assert!(matches!(&err, NixError::Failed { stderr_tail, .. } if stderr_tail.contains("disk on fire")), "{err}");
        assert!(log.iter().any(|l| l.contains("disk on fire")), "{log:?}");
        assert!(!scratch.path("broken-system").exists());
    }

    #[tokio::test]
    async fn a_slow_build_is_stopped_at_the_timeout() {
        let scratch = Scratch::new();
        let flake = fleet(&scratch).await;
        let started = Instant::now();
        let builder_seen = async {
            while processes_with_env("salt", &scratch.salt()) == 0 && started.elapsed().as_secs() < 3 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            processes_with_env("salt", &scratch.salt()) > 0
        };
        let ((built, _log), builder_seen) =
            tokio::join!(build(&scratch, &flake, "slow", Duration::from_secs(3)), builder_seen);
        assert!(builder_seen, "the slow builder never ran");
        let err = built.unwrap_err();
        assert!(matches!(&err, NixError::Timeout { after, .. } if after.as_secs() == 3), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        // Nix, stopped with SIGTERM, killed its builder (which runs in a session of its own).
        assert_eq!(processes_with_env("salt", &scratch.salt()), 0, "the builder outlived the timeout");
    }

    /// Four hosts of one flake evaluated at once, each evaluation slow enough to overlap the
    /// others (as NixOS systems do): none of the builds logs `error (ignored): SQLite database
    /// '…/eval-cache-v…' is busy`. (Failed before: three of four did, with Nix 2.8 and 2.26.)
    #[tokio::test]
    async fn parallel_evaluations_of_one_flake_log_no_busy_cache() {
        const HOSTS: [&str; 4] = ["a", "b", "c", "d"];
        let scratch = Scratch::new();
        let repo = scratch.path("slow-fleet");
        std::fs::create_dir(&repo).unwrap();
        let system = std::process::Command::new("nix")
            .args(["eval", "--impure", "--raw", "--expr", "builtins.currentSystem"])
            .envs(scratch.nix_env())
            .output()
            .unwrap();
        assert!(system.status.success(), "{system:?}");
        let flake = r#"{
          outputs = { self }: let
            slow = builtins.foldl' (a: b: a + b) 0 (builtins.genList (x: x) 3000000);
            mk = name: derivation {
              inherit name; system = "SYSTEM"; builder = "/bin/sh";
              args = [ "-c" "echo ${toString slow} ${self.outPath} > $out" ];
            };
          in {
            nixosConfigurations = builtins.listToAttrs (map (h: { name = h; value.config.system.build.toplevel = mk h; }) [ "a" "b" "c" "d" ]);
          };
        }"#;
        std::fs::write(repo.join("flake.nix"), flake.replace("SYSTEM", &String::from_utf8_lossy(&system.stdout)))
            .unwrap();
        for args in [
            &["init", "-q"][..],
            &["add", "-A"],
            &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "slow"],
        ] {
            let status = std::process::Command::new("git").args(args).current_dir(&repo).status().unwrap();
            assert!(status.success(), "git {args:?}");
        }
        let flake = format!("git+file://{}", repo.display());
        let builds = HOSTS.map(|host| build(&scratch, &flake, host, Duration::from_secs(300)));
        for (host, (built, log)) in HOSTS.iter().zip(futures::future::join_all(builds).await) {
            built.unwrap_or_else(|e| panic!("{host}: {e}"));
            let busy: Vec<_> = log.iter().filter(|l| l.contains("is busy")).collect();
            assert!(busy.is_empty(), "{host}: {busy:?}");
        }
    }

    #[tokio::test]
    async fn bad_host_names_never_reach_nix() {
        let scratch = Scratch::new();
        for host in ["", "a.b", "x\"y", "-o", "hostA.config", "a b", &"h".repeat(64)] {
            let (built, log) = build(&scratch, "git+file:///nowhere", host, Duration::from_secs(1)).await;
            assert!(matches!(built, Err(NixError::Invalid { what: "host name", .. })), "{host}");
            assert!(log.is_empty());
        }
        let bad_flake = list_hosts_in("git+file:///x#nixosConfigurations", None, &[]).await;
        assert!(matches!(bad_flake, Err(NixError::Invalid { .. })));
    }
}
