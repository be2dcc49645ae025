//! Push mode end to end (issue 17): a host without an agent, behind a real `sshd` (Debian's
//! openssh-server) on loopback whose `authorized_keys` gives berth's push key only the forced
//! command `berth push-gate`, with a chroot Nix store as the host's store. The real server
//! builds the test fleet and pushes: `nix copy --to ssh-ng://`, `berth-push test`, a confirm
//! over a fresh connection, `berth-push boot`. A TCP proxy in front of sshd (`NetCut`) is the
//! network a generation's activation can cut.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use serde_json::Value;

use crate::{agent::*, builds::*, fleet::*, harness::*};

/// A host reached over SSH: sshd on loopback, the forced command, a chroot store.
struct PushedHost {
    root: PathBuf,
    /// Started by [`PushedHost::start_sshd`], once berth's cache key is known.
    sshd: Option<Child>,
    /// berth's private key for the host.
    key: PathBuf,
    /// `ssh-ed25519 AAAA…`, the host key berth pins.
    host_key: String,
    /// The sshd port.
    port: u16,
    activations: PathBuf,
    network_flag: PathBuf,
}

impl Drop for PushedHost {
    fn drop(&mut self) {
        if let Some(sshd) = &mut self.sshd {
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
    }
}

fn sshd_program() -> &'static str {
    let program = "/usr/sbin/sshd";
    assert!(Path::new(program).exists(), "{program} is missing: install openssh-server (scripts/deps.sh)");
    program
}

impl PushedHost {
    /// The host's keys and port; sshd is not started yet.
    fn prepare(s: &Scratch, name: &str) -> Self {
        let root = s.path(&format!("pushed-{name}"));
        std::fs::create_dir_all(&root).unwrap();
        let keygen = |file: &Path| {
            run_ok(
                Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "berth-test", "-f"]).arg(file),
            )
        };
        let (host_key_file, key) = (root.join("ssh_host_ed25519_key"), root.join("push-key"));
        keygen(&host_key_file);
        keygen(&key);
        let pub_of = |f: &Path| {
            let text = std::fs::read_to_string(f.with_extension("pub")).unwrap();
            let mut words = text.split_whitespace();
            format!("{} {}", words.next().unwrap(), words.next().unwrap())
        };
        let (host_key, berth_key) = (pub_of(&host_key_file), pub_of(&key));
        std::fs::write(root.join("push-key.line"), berth_key).unwrap();
        let (activations, network_flag) = (root.join("activations.log"), root.join("network-down"));
        PushedHost { root, sshd: None, key, host_key, port: free_port(), activations, network_flag }
    }

    /// Starts sshd: berth's key may run only `berth push-gate`, whose store daemon accepts
    /// only paths signed by `cache_key` (and trusts berth with nothing else: `untrusted`).
    fn start_sshd(&mut self, s: &Scratch, cache_key: &str, untrusted: bool) {
        let root = &self.root;
        let (store, state) = (root.join("store"), root.join("push-state"));
        let gate = format!(
            "{} push-gate --store {} --state-dir {} --activation-timeout-secs 60{}",
            std::fs::canonicalize(berth_bin()).unwrap().display(),
            store.display(),
            state.display(),
            if untrusted { " --untrusted-daemon" } else { "" }
        );
        let berth_key = std::fs::read_to_string(root.join("push-key.line")).unwrap();
        let authorized = root.join("authorized_keys");
        std::fs::write(&authorized, format!("restrict,command=\"{gate}\" {berth_key} berth-push\n")).unwrap();
        let path_env = s.client.path_env().into_string().unwrap();
        let config = root.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin forced-commands-only\nLogLevel VERBOSE\n\
                 SetEnv PATH={path_env} {ACTIVATION_LOG_ENV}={} {NETWORK_FLAG_ENV}={} \"NIX_CONFIG=trusted-public-keys = {cache_key}\"\n",
                self.port,
                root.join("ssh_host_ed25519_key").display(),
                root.join("sshd.pid").display(),
                authorized.display(),
                self.activations.display(),
                self.network_flag.display(),
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let log = std::fs::File::create(root.join("sshd.log")).unwrap();
        let sshd = Command::new(sshd_program())
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let port = self.port;
        wait_for("sshd listening", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        self.sshd = Some(sshd);
    }

    /// `ssh` with berth's push key, running `command` (what the forced command sees).
    fn ssh(&self, port: u16, command: Option<&str>) -> std::process::Output {
        let known = self.root.join("known_hosts");
        std::fs::write(&known, format!("[127.0.0.1]:{port} {}\n", self.host_key)).unwrap();
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "none", "-i"])
            .arg(&self.key)
            .args(["-p", &port.to_string(), "-o"])
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "root@127.0.0.1"])
            .stdin(Stdio::null());
        cmd.args(command);
        cmd.output().unwrap()
    }

    fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    fn last(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.root.join("push-state/last.json")).unwrap()).unwrap()
    }

    fn pending(&self) -> bool {
        self.root.join("push-state/pending.json").exists()
    }

    fn activations(&self) -> String {
        std::fs::read_to_string(&self.activations).unwrap_or_default()
    }

    fn refused(&self) -> String {
        std::fs::read_to_string(self.root.join("push-state/refused.log")).unwrap_or_default()
    }

    /// The `[repositories.hosts.NAME]` table that makes berth push to this host through `port`.
    fn config(&self, name: &str, port: u16) -> String {
        format!(
            "[repositories.hosts.{name}]\ndelivery = \"push\"\nssh_address = \"root@127.0.0.1:{port}\"\nssh_host_key = \"{}\"\nssh_key_file = \"{}\"\nconfirm_timeout_secs = 10\n",
            self.host_key,
            self.key.display()
        )
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

for_each_client!(a_pushed_host_is_deployed_over_ssh_confirmed_rolled_back_and_guarded);

fn a_pushed_host_is_deployed_over_ssh_confirmed_rolled_back_and_guarded(client: NixClient) {
    let s = Scratch::with(client);
    let mut host = PushedHost::prepare(&s, "alpha");
    let netcut = NetCut::start(&format!("http://127.0.0.1:{}", host.port), host.network_flag.clone());
    let via: u16 = netcut.url.rsplit(':').next().unwrap().parse().unwrap();
    let b = build_host_in(s, &["alpha"], &host.config("alpha", via));
    // Nix 2.8's daemon has no --force-untrusted; the current one runs with it.
    host.start_sshd(&b.s, &b.server.public_key, client != NixClient::Debian);

    // 1. A good generation: copied, tested, confirmed over a fresh connection, then booted.
    assert!(b.submit_wait(&b.fleet.commit("main", "first", Signing::Trusted), "main").0);
    let confirmed = wait_report(&b, "alpha", 1, &["confirmed", "rolled_back", "failed"]);
    assert_eq!(confirmed["phase"], "confirmed", "{confirmed}\n{:#?}", reports(&b, "alpha"));
    let first = toplevel(&b, "alpha", 1);
    assert_eq!(profile_in(&host.store()).as_deref(), Some(first.as_str()), "the boot step set the profile");
    assert_eq!(host.activations(), "alpha test\nalpha boot\n", "test first, boot after the confirmation");
    assert_eq!(host.last()["outcome"], "booted");
    assert!(!host.pending());
    let info = stdout_of(
        Command::new(b.s.client.program("nix"))
            .args(["path-info", "--extra-experimental-features", "nix-command", "--store"])
            .arg(host.store())
            .arg(&first),
    );
    assert!(info.contains(&first), "the closure is in the host's store: {info}");
    let phases: Vec<String> =
        reports(&b, "alpha").iter().rev().map(|r| r["phase"].as_str().unwrap().to_owned()).collect();
    assert_eq!(phases, ["downloading", "activating", "confirmed"], "reported like an agent");
    let status: Vec<Value> = http().get(b.api("hosts")).bearer_auth(&b.admin).send().unwrap().json().unwrap();
    let alpha = status.iter().find(|h| h["name"] == "alpha").unwrap();
    assert_eq!(alpha["status"]["active_generation"], 1, "{alpha}");
    assert_eq!(alpha["delivery"], "push", "{alpha}");
    let table = stdout_of(b.s.berth().args(["hosts", "--server", &b.server.url]).env("BERTH_TOKEN", &b.admin));
    assert!(table.lines().any(|l| l.starts_with("alpha (push)") && l.contains("confirmed")), "{table}");

    // 2. An activation that fails: the host goes straight back to generation 1.
    b.fleet.set_switch_fails("alpha", true);
    b.fleet.set_host("alpha", "second");
    assert!(b.submit_wait(&b.fleet.commit("main", "fails", Signing::Trusted), "main").0);
    let report = wait_report(&b, "alpha", 2, &["confirmed", "rolled_back", "failed"]);
    assert_eq!(report["phase"], "rolled_back", "{report}");
    assert!(report["message"].as_str().unwrap().contains("fails on purpose"), "the host's reason: {report}");
    assert_eq!(profile_in(&host.store()).as_deref(), Some(first.as_str()), "the profile never moved");
    assert_eq!(host.last()["outcome"], "rolled_back");
    assert_eq!(
        host.activations(),
        "alpha test\nalpha boot\nalpha test\nalpha test\n",
        "tried, then generation 1 again"
    );
    b.fleet.set_switch_fails("alpha", false);

    // 3. A generation that cuts the network: no confirmation reaches the host, which rolls
    // back by itself at its deadline (the previous system restores the network).
    b.fleet.set_cuts_network("alpha", true);
    b.fleet.set_host("alpha", "third");
    assert!(b.submit_wait(&b.fleet.commit("main", "cuts the network", Signing::Trusted), "main").0);
    let report = wait_report(&b, "alpha", 3, &["confirmed", "rolled_back", "failed"]);
    assert_eq!(report["phase"], "rolled_back", "{report}");
    wait_for("the host rolled back by itself", || !host.pending() && host.last()["outcome"] == "rolled_back");
    assert!(host.last()["reason"].as_str().unwrap().contains("deadline"), "settled by the deadline: {}", host.last());
    wait_for("the network is back", || !host.network_flag.exists());
    assert_eq!(profile_in(&host.store()).as_deref(), Some(first.as_str()));
    let status = host.ssh(via, Some("berth-push status"));
    assert!(status.status.success(), "{status:?}");
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["profile"], first.as_str(), "{status}");
    assert_eq!(status["pending"], Value::Null, "{status}");

    // 4. The push key runs nothing else: each refusal is one line, logged on the host.
    let before = host.activations();
    for (command, reason) in [
        (None, "no command"),
        (Some("sh -c id"), "not allowed"),
        (Some("nix-daemon --stdio; id"), "character"),
        (Some("berth-push test /etc/passwd 120"), "not a store path"),
        (Some("berth-push switch /nix/store/0c4dpv6m5xa4b4ns8ag3z0xg8rh7il7x-x"), "not allowed"),
        (Some("berth-push boot /nix/store/0c4dpv6m5xa4b4ns8ag3z0xg8rh7il7x-nixos-system-alpha"), "not the confirmed"),
    ] {
        let out = host.ssh(host.port, command);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command:?} must be refused: {stderr}");
        assert!(stderr.contains(reason), "{command:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{command:?} printed {:?}", String::from_utf8_lossy(&out.stdout));
    }
    let refused = host.refused();
    assert!(refused.contains("sh -c id") && refused.contains("/etc/passwd"), "{refused}");
    assert_eq!(host.activations(), before, "nothing was activated");
    // A reboot during a trial ends it: the boot-time settle drops the record (the boot entry
    // never pointed at the trial), and a late confirmation is refused.
    let trial = host.ssh(host.port, Some(&format!("berth-push test {first} 600")));
    assert!(trial.status.success(), "{trial:?}");
    assert!(host.pending());
    let settle = run_ok(
        Command::new(berth_bin())
            .args(["push-settle", "--boot", "--store"])
            .arg(host.store())
            .arg("--state-dir")
            .arg(host.root.join("push-state")),
    );
    assert!(String::from_utf8_lossy(&settle.stdout).contains("reboot"), "{settle:?}");
    assert!(!host.pending());
    assert!(host.last()["reason"].as_str().unwrap().contains("rebooted"), "{}", host.last());
    let late = host.ssh(host.port, Some(&format!("berth-push confirm {first}")));
    assert_eq!(late.status.code(), Some(1), "{late:?}");
    assert!(String::from_utf8_lossy(&late.stderr).contains("already rolled back"), "{late:?}");
    // A system the host never tried: "no trial" (exit 3), which tells berth nothing started.
    let unknown = "/nix/store/0c4dpv6m5xa4b4ns8ag3z0xg8rh7il7x-nixos-system-alpha";
    let never = host.ssh(host.port, Some(&format!("berth-push confirm {unknown}")));
    assert_eq!(never.status.code(), Some(3), "{never:?}");
    assert!(String::from_utf8_lossy(&never.stderr).contains("no trial"), "{never:?}");

    // 5. A stolen push key cannot put an unsigned path into the host's store (the current
    // Nix: the daemon trusts its client with nothing; Nix 2.8's has no such mode, docs/push.md).
    if client != NixClient::Debian {
        let unsigned = b.s.build_closure("push-unsigned");
        let known = host.root.join("known_hosts");
        std::fs::write(&known, format!("[127.0.0.1]:{} {}\n", host.port, host.host_key)).unwrap();
        let sshopts =
            format!("-F none -i {} -p {} -o UserKnownHostsFile={}", host.key.display(), host.port, known.display());
        let mut copy = b.s.nix("nix");
        copy.args(["copy", "--no-check-sigs", "--to", "ssh-ng://root@127.0.0.1", &unsigned])
            .env("NIX_SSHOPTS", sshopts);
        if let Some(store) = b.s.own_store() {
            copy.arg("--from").arg(store);
        }
        let out = copy.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "an unsigned path was accepted: {stderr}");
        assert!(stderr.contains("signature"), "{stderr}");
        assert!(!host.store().join(unsigned.trim_start_matches('/')).exists());
    }
    drop(netcut);
    drop(b);
}

/// berth killed (SIGKILL) while the host runs `berth-push test`: the host keeps its trial
/// (and would roll it back at its deadline); berth, started again, deploys the same
/// generation again and confirms it.
#[test]
fn a_server_killed_during_a_push_deploys_the_generation_again_once_back() {
    let s = Scratch::new();
    let mut host = PushedHost::prepare(&s, "alpha");
    let port = host.port;
    let mut b = build_host_in(s, &["alpha"], &host.config("alpha", port));
    host.start_sshd(&b.s, &b.server.public_key, false);
    b.fleet.set_switch_pause("alpha", 4);
    assert!(b.submit_wait(&b.fleet.commit("main", "slow switch", Signing::Trusted), "main").0);
    wait_report(&b, "alpha", 1, &["activating"]);
    b.server.kill();
    wait_for("the trial recorded on the host", || host.pending());
    b.reconfigure(|config| config.to_owned());
    let report = wait_report(&b, "alpha", 1, &["confirmed", "rolled_back", "failed"]);
    assert_eq!(report["phase"], "confirmed", "{report}\n{:#?}", reports(&b, "alpha"));
    let system = toplevel(&b, "alpha", 1);
    assert_eq!(profile_in(&host.store()).as_deref(), Some(system.as_str()));
    assert_eq!(host.last()["outcome"], "booted");
    assert!(!host.pending());
    assert_eq!(host.activations(), "alpha test\nalpha test\nalpha boot\n", "tried again, then booted");

    // A pushed host verifies no manifests: a host token left from before it was pushed does
    // not hold a deploy-key rotation. (Failed before: alpha was waited for, for ever.)
    let _token = b.server.token("host:alpha");
    let rotate =
        run_ok(b.s.berth().args(["keys", "rotate", "deploy", "--server", &b.server.url]).env("BERTH_TOKEN", &b.admin));
    assert!(rotate.status.success());
    let keys = || -> Value { http().get(b.api("keys/deploy")).bearer_auth(&b.admin).send().unwrap().json().unwrap() };
    wait_for("the rotation to finish", || {
        let k = keys();
        k["keys"].as_array().unwrap().iter().all(|k| k["state"] != "next")
            && k["waiting_for"].as_array().unwrap().is_empty()
    });
}

/// A pushed host as a rollout's canary: its failure halts the rollout before the pulled
/// host of the next wave gets anything, as a pulled canary's would.
#[test]
fn a_pushed_canary_that_rolls_back_halts_the_rollout() {
    let s = Scratch::new();
    let mut host = PushedHost::prepare(&s, "alpha");
    let port = host.port;
    let config = format!(
        "{}tags = [\"canary\"]\n[repositories.rollout]\nwaves = [{{ hosts = [\"tag:canary\"] }}, {{ rest = true }}]\n",
        host.config("alpha", port)
    );
    let b = build_host_in(s, &["alpha", "beta"], &config);
    host.start_sshd(&b.s, &b.server.public_key, false);
    let beta = Host::new(&b, "beta", "");
    let _agent = beta.spawn(&b, &b.server.url);
    assert!(b.submit_wait(&b.fleet.commit("main", "one", Signing::Trusted), "main").0);
    assert_eq!(wait_report(&b, "alpha", 1, &["confirmed", "rolled_back", "failed"])["phase"], "confirmed");
    wait_report(&b, "beta", 1, &["confirmed"]);

    b.fleet.set_switch_fails("alpha", true);
    b.fleet.set_host("alpha", "two");
    b.fleet.set_host("beta", "two");
    assert!(b.submit_wait(&b.fleet.commit("main", "two", Signing::Trusted), "main").0);
    assert_eq!(wait_report(&b, "alpha", 2, &["confirmed", "rolled_back", "failed"])["phase"], "rolled_back");
    let status = |id: i64| -> Value {
        http().get(b.api(&format!("rollouts/{id}"))).bearer_auth(&b.admin).send().unwrap().json().unwrap()
    };
    wait_for("rollout 2 halted", || status(2)["state"] == "halted");
    let halted = status(2);
    assert_eq!(halted["halted_host"], "alpha", "{halted:#}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(reports(&b, "beta").iter().all(|r| r["generation"] != 2), "beta never got generation 2");
}
