//! The agent's stories with real processes: a chroot Nix store, fake toplevels whose
//! `switch-to-configuration` records what it was asked (and fails on demand), and a fake
//! server, a hand-rolled HTTP/1.1 responder (no berth server and no axum here; the end-to-end
//! tests with the real server live in `tests/it/`). Every run is `--once`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::state::{self, Pending, State};
use super::*;
use crate::deploy::keyset::KEYS_HEADER;
use crate::nixfmt::SecretKey;

mod rotation;

/// What the fake server holds and saw.
#[derive(Default)]
struct Fake {
    /// Manifests by generation, served newest first when newer than `after`.
    manifests: Vec<(u64, SignedManifest)>,
    /// Served whatever `after` says (a replaying server).
    replay: Option<SignedManifest>,
    /// Bodies of the reports received.
    reports: Vec<serde_json::Value>,
    /// `/healthz` answers 503.
    healthz_down: bool,
    /// The `x-berth-deploy-keys` header of each manifest poll.
    acknowledged: Vec<String>,
}

async fn serve(fake: Arc<Mutex<Fake>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, fake.clone()));
        }
    });
    url
}

async fn answer(stream: TcpStream, fake: Arc<Mutex<Fake>>) {
    let mut stream = BufReader::new(stream);
    let (mut head, mut line, mut length, mut keys) = (String::new(), String::new(), 0, None);
    stream.read_line(&mut head).await.unwrap();
    while stream.read_line(&mut line).await.unwrap() > 2 {
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
        if let Some((name, value)) = line.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(KEYS_HEADER)) {
            keys = Some(value.trim().to_owned()).filter(|_| !name.is_empty());
        }
        line.clear();
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let after: Option<u64> = query.split('&').find_map(|p| p.strip_prefix("after=")).map(|a| a.parse().unwrap());
    let response = {
        let mut fake = fake.lock().unwrap();
        match (head.split(' ').next().unwrap(), path) {
            ("GET", "/api/v1/hosts/web/manifest") => {
                fake.acknowledged.extend(keys);
                let newest =
                    fake.manifests.iter().filter(|(g, _)| after.map_or(true, |a| *g > a)).max_by_key(|(g, _)| *g);
                match fake.replay.as_ref().or(newest.map(|(_, m)| m)) {
                    Some(m) => ok(&serde_json::to_string(m).unwrap()),
                    None => "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_owned(),
                }
            }
            ("POST", "/api/v1/hosts/web/reports") => {
                fake.reports.push(serde_json::from_slice(&body).unwrap());
                "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_owned()
            }
            ("GET", "/healthz") if !fake.healthz_down => ok("ok"),
            _ => "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
        }
    };
    let _ = stream.get_mut().write_all(response.as_bytes()).await;
}

fn ok(body: &str) -> String {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

/// A host "web" with a chroot store whose profile points at `old`; `new` is also in the store.
struct Host {
    dir: tempfile::TempDir,
    root: PathBuf,
    old: String,
    new: String,
    key: SecretKey,
    fake: Arc<Mutex<Fake>>,
    url: String,
}

impl Host {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let old = toplevel(dir.path(), &root, "old");
        let new = toplevel(dir.path(), &root, "new");
        let system = SystemRoot::new(root.to_str());
        system.set_profile(Path::new(config::DEFAULT_PROFILE), &old).await.unwrap();
        let fake = Arc::new(Mutex::new(Fake::default()));
        let url = serve(fake.clone()).await;
        Self { dir, root, old, new, key: SecretKey::generate("deploy-1").unwrap(), fake, url }
    }

    /// Publishes generation `generation` of `path` for `host`, signed with `key`.
    fn publish_as(&self, host: &str, generation: u64, path: &str, key: &SecretKey) -> SignedManifest {
        let manifest = Manifest {
            version: 1,
            host: host.into(),
            generation,
            store_path: path.into(),
            commit: "0".repeat(40),
            branch: "main".into(),
            build_id: Some(1),
            created_at: 1_767_225_600,
            signer: None,
        };
        let signed = manifest.sign(key);
        self.fake.lock().unwrap().manifests.push((generation, signed.clone()));
        signed
    }

    fn publish(&self, generation: u64, path: &str) {
        self.publish_as("web", generation, path, &self.key);
    }

    async fn run(&self, toml: &str) -> Outcome {
        run(self.options(toml, true), CancellationToken::new()).await.unwrap()
    }

    fn options(&self, toml: &str, once: bool) -> AgentOptions {
        let token = self.dir.path().join("token");
        std::fs::write(&token, "host-token").unwrap();
        let base = format!("check_system_running = false\nhealth_timeout_secs = 2\n{toml}");
        let raw: RawAgentConfig = toml::from_str(&base).unwrap();
        let cli = AgentCli {
            server: Some(self.url.clone()),
            host: Some("web".into()),
            token_file: Some(token),
            deploy_public_key: Some(self.key.public().to_nix_string()),
            store: Some(self.root.to_str().unwrap().into()),
            state_dir: Some(self.dir.path().join("state")),
            once,
            ..Default::default()
        };
        AgentOptions::from_parts(cli, raw).unwrap()
    }

    /// `<system> <action>` lines, in order, since the last call.
    fn activations(&self) -> Vec<String> {
        let file = self.dir.path().join("activations");
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let _ = std::fs::remove_file(&file);
        text.lines().map(str::to_owned).collect()
    }

    /// `<generation> <phase>` of the reports since the last call.
    fn phases(&self) -> Vec<String> {
        let reports = std::mem::take(&mut self.fake.lock().unwrap().reports);
        reports.iter().map(|r| format!("{} {}", r["generation"], r["phase"].as_str().unwrap())).collect()
    }

    fn last_report(&self) -> serde_json::Value {
        self.fake.lock().unwrap().reports.last().unwrap().clone()
    }

    fn profile(&self) -> String {
        SystemRoot::new(self.root.to_str()).profile_target(Path::new(config::DEFAULT_PROFILE)).unwrap().unwrap()
    }

    fn state(&self) -> State {
        state::load(&self.dir.path().join("state")).unwrap()
    }

    /// Makes `<name>`'s `switch-to-configuration` fail.
    fn break_activation(&self, name: &str) {
        std::fs::write(self.dir.path().join(format!("fail-{name}")), "").unwrap();
    }
}

/// A fake toplevel `nixos-system-<name>` in the chroot store `root`, with a kernel link of
/// its own; its script appends `<name> <action>` to `<dir>/activations`.
fn toplevel(dir: &Path, root: &Path, name: &str) -> String {
    let src = dir.join(format!("nixos-system-{name}"));
    std::fs::create_dir_all(src.join("bin")).unwrap();
    let (record, fail) = (dir.join("activations"), dir.join(format!("fail-{name}")));
    let script = format!(
        "#!/bin/sh\necho \"{name} $*\" >> '{}'\nif [ -e '{}' ]; then echo 'unit failed' >&2; exit 4; fi\n",
        record.display(),
        fail.display()
    );
    std::fs::write(src.join("bin/switch-to-configuration"), script).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(src.join("bin/switch-to-configuration"), mode).unwrap();
    std::os::unix::fs::symlink(format!("/nix/store/00000000000000000000000000000000-linux-{name}"), src.join("kernel"))
        .unwrap();
    let out = Command::new("nix-store").arg("--store").arg(root).arg("--add").arg(&src).output();
    let out = out.expect("nix-store is required by this test");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn a_new_generation_is_tested_checked_then_made_the_boot_default() {
    let host = Host::new().await;
    assert_eq!(host.run("").await, Outcome::Idle);
    host.publish(1, &host.new);
    assert_eq!(host.run("health_checks = [[\"true\"]]").await, Outcome::Confirmed { generation: 1 });
    assert_eq!(host.activations(), ["new test", "new boot"]);
    assert_eq!(host.profile(), host.new);
    assert_eq!(host.phases(), ["1 downloading", "1 activating", "1 healthy", "1 confirmed"]);
    let state = host.state();
    assert_eq!((state.applied, state.pending, state.active.unwrap().generation), (Some(1), None, 1));
    // Applied: not asked for again.
    assert_eq!(host.run("").await, Outcome::Idle);
    assert!(host.activations().is_empty());
}

#[tokio::test]
async fn a_failing_activation_rolls_back_and_is_not_retried() {
    let host = Host::new().await;
    host.publish(1, &host.new);
    host.break_activation("new");
    let outcome = host.run("").await;
    assert!(
        matches!(&outcome, Outcome::RolledBack { generation: 1, reason } if reason.contains("exit status: 4")),
        "{outcome:?}"
    );
    assert_eq!(host.activations(), ["new test", "old test"]);
    assert_eq!(host.profile(), host.old);
    let report = host.last_report();
    assert_eq!(report["phase"], "rolled_back");
    assert!(report["log_tail"].as_str().unwrap().contains("unit failed"), "{report}");
    assert_eq!(host.run("").await, Outcome::Idle);
    // A newer generation is tried.
    std::fs::remove_file(host.dir.path().join("fail-new")).unwrap();
    host.publish(2, &host.new);
    assert_eq!(host.run("").await, Outcome::Confirmed { generation: 2 });
}

#[tokio::test]
async fn a_failing_health_check_or_an_unreachable_server_rolls_back() {
    let host = Host::new().await;
    host.publish(1, &host.new);
    let outcome = host.run("health_checks = [[\"sh\", \"-c\", \"echo 'db down' >&2; exit 1\"]]").await;
    assert!(matches!(&outcome, Outcome::RolledBack { reason, .. } if reason.contains("health check")), "{outcome:?}");
    assert_eq!(host.activations(), ["new test", "old test"]);
    assert!(host.last_report()["log_tail"].as_str().unwrap().contains("db down"));

    host.publish(2, &host.new);
    host.fake.lock().unwrap().healthz_down = true;
    let outcome = host.run("").await;
    assert!(matches!(&outcome, Outcome::RolledBack { reason, .. } if reason.contains("unreachable")), "{outcome:?}");
    assert_eq!(host.activations(), ["new test", "old test"]);
    assert_eq!(host.profile(), host.old);
    assert_eq!(host.phases().last().unwrap(), "2 rolled_back");
}

#[tokio::test]
async fn a_deploy_left_pending_is_retried_once_then_rolled_back() {
    // (attempts so far, whether the dead agent had already set the profile, the activations
    // the restarted agent runs, whether generation 1 ends confirmed)
    let cases =
        [(1, false, "new test|new boot", true), (2, false, "old test", false), (2, true, "old boot|old test", false)];
    for (attempts, profile_moved, expected, confirmed) in cases {
        let host = Host::new().await;
        let (old, new) = (host.old.clone(), host.new.clone());
        if profile_moved {
            SystemRoot::new(host.root.to_str()).set_profile(Path::new(config::DEFAULT_PROFILE), &new).await.unwrap();
        }
        let activation = Activation::Switch;
        let pending = Pending {
            generation: 1,
            store_path: new,
            previous: Some(old),
            running: None,
            activation,
            attempts,
            started_at: 0,
        };
        std::fs::create_dir(host.dir.path().join("state")).unwrap();
        state::save(&host.dir.path().join("state"), &State { pending: Some(pending), ..State::default() }).unwrap();
        let outcome = host.run("").await;
        assert_eq!(outcome.is_success(), confirmed, "{outcome:?}");
        assert_eq!(host.activations().join("|"), expected);
        assert_eq!(&host.profile(), if confirmed { &host.new } else { &host.old });
        let last = if confirmed { "1 confirmed" } else { "1 rolled_back" };
        assert_eq!(host.phases().last().unwrap(), last);
        assert_eq!((host.state().pending, host.state().applied), (None, Some(1)));
    }
}

#[tokio::test]
async fn refuses_manifests_signed_by_another_key_for_another_host_or_replayed() {
    let host = Host::new().await;
    let other = SecretKey::generate("deploy-1").unwrap();
    host.publish_as("web", 1, &host.new, &other);
    assert!(matches!(host.run("").await, Outcome::Refused { reason } if reason.contains("signature")));
    assert_eq!(host.phases(), ["1 failed"]);

    host.fake.lock().unwrap().manifests.clear();
    host.publish_as("db", 1, &host.new, &host.key);
    assert!(matches!(host.run("").await, Outcome::Refused { reason } if reason.contains("for host")));
    assert!(host.phases().is_empty(), "another host's generation is not reported here");

    host.fake.lock().unwrap().manifests.clear();
    let old = host.publish_as("web", 1, &host.old, &host.key);
    host.publish(2, &host.new);
    assert_eq!(host.run("").await, Outcome::Confirmed { generation: 2 });
    host.fake.lock().unwrap().replay = Some(old);
    assert!(matches!(host.run("").await, Outcome::Refused { reason } if reason.contains("not newer")));
    assert_eq!(host.activations(), ["new test", "new boot"]);
    assert_eq!(host.profile(), host.new);
}

#[tokio::test]
async fn boot_mode_installs_for_the_next_boot_and_test_mode_never_touches_it() {
    let host = Host::new().await;
    host.publish(1, &host.new);
    assert_eq!(host.run("activation = \"boot\"").await, Outcome::Confirmed { generation: 1 });
    assert_eq!(host.activations(), ["new boot"]);
    assert_eq!(host.profile(), host.new);
    assert_eq!(host.phases(), ["1 downloading", "1 activating", "1 confirmed", "1 needs_reboot"]);

    let host = Host::new().await;
    host.publish(1, &host.new);
    assert_eq!(host.run("activation = \"test\"").await, Outcome::Confirmed { generation: 1 });
    assert_eq!(host.activations(), ["new test"]);
    assert_eq!(host.profile(), host.old);
}

#[tokio::test]
async fn reboots_once_when_the_kernel_changed() {
    let host = Host::new().await;
    std::fs::create_dir_all(host.root.join("run")).unwrap();
    let booted = host.root.join("run/booted-system");
    std::os::unix::fs::symlink(&host.old, &booted).unwrap();
    let marker = host.dir.path().join("rebooted");
    let toml = format!("reboot = \"when-needed\"\nreboot_command = [\"touch\", \"{}\"]", marker.display());
    host.publish(1, &host.new);
    assert_eq!(host.run(&toml).await, Outcome::Confirmed { generation: 1 });
    assert_eq!(host.phases(), ["1 downloading", "1 activating", "1 healthy", "1 confirmed", "1 needs_reboot"]);
    assert!(marker.exists(), "no reboot");

    // The reboot did not bring the new kernel up: no second one.
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(host.run(&toml).await, Outcome::Idle);
    assert!(!marker.exists());
    // Booted into it: nothing is needed any more.
    std::fs::remove_file(&booted).unwrap();
    std::os::unix::fs::symlink(&host.new, &booted).unwrap();
    assert_eq!(host.run(&toml).await, Outcome::Idle);
    assert_eq!(host.state().needs_reboot, None);
}

#[tokio::test]
async fn a_running_agent_picks_up_new_generations_until_stopped() {
    let host = Host::new().await;
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run(host.options("", false), shutdown.clone()));
    let confirmed = |generation: u64| {
        let reports = host.fake.lock().unwrap().reports.clone();
        reports.iter().any(|r| r["generation"] == generation && r["phase"] == "confirmed")
    };
    for (generation, path) in [(1, host.new.clone()), (2, host.old.clone())] {
        host.publish(generation, &path);
        let began = std::time::Instant::now();
        while !confirmed(generation) {
            assert!(began.elapsed().as_secs() < 20, "generation {generation} never confirmed");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(host.profile(), path);
    }
    shutdown.cancel();
    assert_eq!(agent.await.unwrap().unwrap(), Outcome::Stopped);
    assert_eq!(host.activations(), ["new test", "new boot", "old test", "old boot"]);
}
