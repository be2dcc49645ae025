//! Pull-based deployment end to end: the real `berth agent` on fake hosts (chroot Nix stores,
//! the test fleet's `switch-to-configuration` scripts that record what they are asked and can
//! be told to fail, to pause or to cut the network), against the real server and builds.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{builds::*, fleet::*, harness::*};

/// One fake host: its chroot store, state directory, token and activation log.
pub struct Host {
    pub name: String,
    pub root: PathBuf,
    pub config: PathBuf,
    activations: PathBuf,
    pub network_flag: PathBuf,
    pub token_file: PathBuf,
}

impl Host {
    pub fn new(b: &BuildHost, name: &str, health_checks: &str) -> Self {
        let root = b.s.path(&format!("host-{name}"));
        std::fs::create_dir_all(&root).unwrap();
        let token_file = root.join("token");
        std::fs::write(&token_file, b.server.token(&format!("host:{name}"))).unwrap();
        let config = root.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "check_system_running = false\nhealth_timeout_secs = 6\nactivation_timeout_secs = 60\nhealth_checks = [{health_checks}]\n"
            ),
        )
        .unwrap();
        Host {
            name: name.into(),
            activations: root.join("activations.log"),
            network_flag: root.join("network-down"),
            token_file,
            config,
            root,
        }
    }

    /// `berth agent` for this host, talking to `server` (the real one, or a `NetCut`).
    pub fn agent(&self, b: &BuildHost, server: &str, deploy_key: &str) -> Command {
        let mut cmd = Command::new(berth_bin());
        cmd.args(["agent", "--config"])
            .arg(&self.config)
            .args(["--server", server, "--host", &self.name, "--deploy-public-key", deploy_key, "--token-file"])
            .arg(&self.token_file)
            .arg("--store")
            .arg(self.root.join("store"))
            .arg("--state-dir")
            .arg(self.root.join("state"))
            .env("BERTH_LOG", "info")
            .env("PATH", b.s.client.path_env())
            .env(
                "NIX_CONFIG",
                format!(
                    "substituters = {}\ntrusted-public-keys = {}\nexperimental-features = nix-command flakes\nnarinfo-cache-negative-ttl = 0",
                    b.server.url, b.server.public_key
                ),
            )
            .env("XDG_CACHE_HOME", self.root.join("xdg"))
            .env(ACTIVATION_LOG_ENV, &self.activations)
            .env(NETWORK_FLAG_ENV, &self.network_flag);
        cmd
    }

    pub fn spawn(&self, b: &BuildHost, server: &str) -> Agent {
        let child = self.agent(b, server, &deploy_public_key(b)).stdout(Stdio::null()).spawn().unwrap();
        Agent(child)
    }

    /// The system the host's profile points at (a store path), if any.
    pub fn profile(&self) -> Option<String> {
        profile_in(&self.root.join("store"))
    }

    pub fn activations(&self) -> String {
        std::fs::read_to_string(&self.activations).unwrap_or_default()
    }
}

/// The system the profile of the chroot store `store` points at (a store path), if any.
pub fn profile_in(store: &std::path::Path) -> Option<String> {
    let link = store.join("nix/var/nix/profiles/system");
    let generation = std::fs::read_link(&link).ok()?;
    let target = std::fs::read_link(link.parent().unwrap().join(generation)).ok()?;
    Some(target.to_string_lossy().into_owned())
}

/// A running agent, killed on drop.
pub struct Agent(pub Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn deploy_public_key(b: &BuildHost) -> String {
    let text = std::fs::read_to_string(b.server.data_dir.join("deploy-key")).unwrap();
    berth::nixfmt::SecretKey::parse(&text).unwrap().public().to_nix_string()
}

pub fn reports(b: &BuildHost, host: &str) -> Vec<Value> {
    http().get(b.api(&format!("hosts/{host}/reports"))).bearer_auth(&b.admin).send().unwrap().json().unwrap()
}

/// Waits until `host` reports `phase` for `generation`; returns that report.
pub fn wait_report(b: &BuildHost, host: &str, generation: i64, phases: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Some(r) = reports(b, host)
            .into_iter()
            .find(|r| r["generation"] == generation && phases.contains(&r["phase"].as_str().unwrap()))
        {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{host} never reported {phases:?} for generation {generation}: {:#?}", reports(b, host));
}

pub fn toplevel(b: &BuildHost, host: &str, generation: i64) -> String {
    let g = b.generations(host).into_iter().find(|g| g["number"] == generation).unwrap();
    g["store_path"].as_str().unwrap().to_owned()
}

for_each_client!(
    a_new_generation_reaches_a_running_agent_and_is_switched_to_in_two_phases,
    a_failing_activation_rolls_back,
    an_admin_rollback_reaches_the_agent,
);

fn a_new_generation_reaches_a_running_agent_and_is_switched_to_in_two_phases(client: NixClient) {
    let b = build_host_with(client, &["alpha", "beta"], "");
    let (alpha, beta) = (Host::new(&b, "alpha", ""), Host::new(&b, "beta", ""));
    let _agents = [alpha.spawn(&b, &b.server.url), beta.spawn(&b, &b.server.url)];
    std::thread::sleep(Duration::from_secs(1)); // both agents are long-polling
    let commit = b.fleet.commit("main", "deploy both", Signing::Trusted);
    assert!(b.submit_wait(&commit, "main").0);
    for host in [&alpha, &beta] {
        let confirmed = wait_report(&b, &host.name, 1, &["confirmed"]);
        let made = b.generations(&host.name)[0]["created_at"].as_i64().unwrap();
        let downloading = wait_report(&b, &host.name, 1, &["downloading"]);
        assert!(downloading["created_at"].as_i64().unwrap() - made <= 2, "learned of it at once: {downloading}");
        let system = toplevel(&b, &host.name, 1);
        assert_eq!(host.profile().as_deref(), Some(system.as_str()), "{confirmed}");
        assert_eq!(host.activations(), format!("{0} test\n{0} boot\n", host.name), "test first, boot after the checks");
        // Substituted from berth, never built: the path carries berth's signature.
        let info = stdout_of(
            Command::new(b.s.client.program("nix"))
                .args(["path-info", "--json", "--extra-experimental-features", "nix-command", "--store"])
                .arg(host.root.join("store"))
                .arg(&system),
        );
        assert!(info.contains(b.server.public_key.split(':').next().unwrap()), "{info}");
    }
    let status: Vec<Value> = http().get(b.api("hosts")).bearer_auth(&b.admin).send().unwrap().json().unwrap();
    assert!(status.iter().all(|h| h["status"]["active_generation"] == 1), "{status:#?}");
}

/// Deploys generation 1 (healthy), then a generation 2 that `breaks` describes; the agent
/// must end on generation 1 with a `rolled_back` report.
fn broken_deploy_rolls_back(
    client: NixClient,
    health_checks: &str,
    server_via_netcut: bool,
    breaks: impl Fn(&Fleet, &Host),
) {
    let b = build_host_with(client, &["alpha"], "");
    let host = Host::new(&b, "alpha", health_checks);
    let netcut = NetCut::start(&b.server.url, host.network_flag.clone());
    let url = if server_via_netcut { netcut.url.clone() } else { b.server.url.clone() };
    let _agent = host.spawn(&b, &url);
    assert!(b.submit_wait(&b.fleet.commit("main", "good", Signing::Trusted), "main").0);
    wait_report(&b, "alpha", 1, &["confirmed"]);
    let good = toplevel(&b, "alpha", 1);

    breaks(&b.fleet, &host);
    b.fleet.set_host("alpha", "second");
    assert!(b.submit_wait(&b.fleet.commit("main", "bad", Signing::Trusted), "main").0);
    let report = wait_report(&b, "alpha", 2, &["rolled_back", "confirmed"]);
    assert_eq!(report["phase"], "rolled_back", "{report}");
    assert_eq!(host.profile().as_deref(), Some(good.as_str()), "the profile never left generation 1");
    assert!(host.activations().ends_with("alpha test\n"), "generation 1 re-activated: {}", host.activations());
    assert!(!host.network_flag.exists(), "the network is back");
}

fn a_failing_activation_rolls_back(client: NixClient) {
    broken_deploy_rolls_back(client, "", false, |fleet, _| fleet.set_switch_fails("alpha", true));
}

#[test]
fn a_failing_health_check_rolls_back() {
    let marker = std::env::temp_dir().join(format!("berth-unhealthy-{}", std::process::id()));
    let check = format!("[\"test\", \"!\", \"-e\", \"{}\"]", marker.display());
    broken_deploy_rolls_back(NixClient::Debian, &check, false, |_, _| std::fs::write(&marker, "").unwrap());
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn a_switch_that_cuts_the_network_rolls_back() {
    broken_deploy_rolls_back(NixClient::Debian, "", true, |fleet, _| fleet.set_cuts_network("alpha", true));
}

#[test]
fn an_agent_killed_between_test_and_boot_settles_after_restart() {
    let b = build_host(&["alpha"], "");
    let host = Host::new(&b, "alpha", "");
    let agent = host.spawn(&b, &b.server.url);
    assert!(b.submit_wait(&b.fleet.commit("main", "good", Signing::Trusted), "main").0);
    wait_report(&b, "alpha", 1, &["confirmed"]);
    let good = toplevel(&b, "alpha", 1);

    b.fleet.set_switch_pause("alpha", 4);
    b.fleet.set_host("alpha", "slow to switch");
    assert!(b.submit_wait(&b.fleet.commit("main", "slow", Signing::Trusted), "main").0);
    wait_report(&b, "alpha", 2, &["activating"]);
    std::thread::sleep(Duration::from_millis(500)); // inside `switch-to-configuration test`
    drop(agent); // SIGKILL
    assert_eq!(host.profile().as_deref(), Some(good.as_str()), "killed before boot: the profile is unchanged");

    let _restarted = host.spawn(&b, &b.server.url);
    let settled = wait_report(&b, "alpha", 2, &["confirmed", "rolled_back"]);
    let expected = if settled["phase"] == "confirmed" { toplevel(&b, "alpha", 2) } else { good };
    assert_eq!(host.profile(), Some(expected), "{settled}");
}

#[test]
fn a_manifest_signed_by_another_key_is_refused() {
    let b = build_host(&["alpha"], "");
    let host = Host::new(&b, "alpha", "");
    assert!(b.submit_wait(&b.fleet.commit("main", "deploy", Signing::Trusted), "main").0);
    let other = berth::nixfmt::SecretKey::generate("impostor-1").unwrap().public().to_nix_string();
    let out = host.agent(&b, &b.server.url, &other).arg("--once").output().unwrap();
    assert!(!out.status.success(), "refused: {}", String::from_utf8_lossy(&out.stderr));
    // Its failure is one clear line, not a Rust `Debug` dump.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("berth agent: refused the server's manifest: "), "{stderr}");
    assert!(!stderr.contains("Refused {"), "{stderr}");
    assert_eq!(host.profile(), None, "nothing was applied");
    assert_eq!(host.activations(), "");
}

/// `berth rollback` makes a new generation with the previous system; the running agent
/// substitutes nothing new and switches back to it.
fn an_admin_rollback_reaches_the_agent(client: NixClient) {
    let b = build_host_with(client, &["alpha"], "");
    let host = Host::new(&b, "alpha", "");
    let _agent = host.spawn(&b, &b.server.url);
    assert!(b.submit_wait(&b.fleet.commit("main", "one", Signing::Trusted), "main").0);
    wait_report(&b, "alpha", 1, &["confirmed"]);
    b.fleet.set_host("alpha", "two");
    assert!(b.submit_wait(&b.fleet.commit("main", "two", Signing::Trusted), "main").0);
    wait_report(&b, "alpha", 2, &["confirmed"]);
    run_ok(b.s.berth().args(["rollback", "alpha", "--server", &b.server.url]).env("BERTH_TOKEN", &b.admin));
    wait_report(&b, "alpha", 3, &["confirmed"]);
    assert_eq!(host.profile(), Some(toplevel(&b, "alpha", 1)), "back on generation 1's system");
}

/// `berth gc --keep 1` with a real agent that confirmed three generations: the one it runs
/// stays, and so does the one it would roll back to, so `berth rollback` works and its
/// system still substitutes from the cache into a fresh store.
#[test]
fn pruning_to_one_generation_leaves_the_host_able_to_roll_back() {
    let b = build_host(&["alpha"], "[retention]\ngrace_period_secs = 0\n");
    let host = Host::new(&b, "alpha", "");
    let _agent = host.spawn(&b, &b.server.url);
    for (n, marker) in [(1, "one"), (2, "two"), (3, "three")] {
        b.fleet.set_host("alpha", marker);
        assert!(b.submit_wait(&b.fleet.commit("main", marker, Signing::Trusted), "main").0);
        wait_report(&b, "alpha", n, &["confirmed"]);
    }
    let second = toplevel(&b, "alpha", 2);

    let gc = run_ok(b.s.berth().args(["gc", "--keep", "1", "--server", &b.server.url]).env("BERTH_TOKEN", &b.admin));
    let printed = String::from_utf8_lossy(&gc.stdout);
    assert!(printed.contains("drop alpha generation 1"), "{printed}");
    assert!(!printed.contains("drop alpha generation 2"), "the way back stays: {printed}");
    let numbers: Vec<i64> = b.generations("alpha").iter().map(|g| g["number"].as_i64().unwrap()).collect();
    assert_eq!(numbers, [3, 2]);
    let (out, _) = b.s.substitute(&b.server.url, &second, &b.server.public_key, "fresh-client");
    assert!(out.status.success(), "the rollback target substitutes: {}", String::from_utf8_lossy(&out.stderr));

    run_ok(b.s.berth().args(["rollback", "alpha", "--server", &b.server.url]).env("BERTH_TOKEN", &b.admin));
    wait_report(&b, "alpha", 4, &["confirmed"]);
    assert_eq!(host.profile(), Some(second.clone()), "back on generation 2's system");
    // Running generation 4 (2's system), the way back is behind 2: generation 1, which the
    // first collection dropped. So 3 (what the rollback left) may go too, and `rollback` says
    // there is nothing to go back to instead of undoing the rollback.
    run_ok(b.s.berth().args(["gc", "--keep", "1", "--server", &b.server.url]).env("BERTH_TOKEN", &b.admin));
    let after: Vec<i64> = b.generations("alpha").iter().map(|g| g["number"].as_i64().unwrap()).collect();
    assert_eq!(after, [4], "4 runs 2's system, and nothing confirmed before 2 is left");
    let out = b.s.berth().args(["rollback", "alpha", "--server", &b.server.url]).env("BERTH_TOKEN", &b.admin).output();
    let err = String::from_utf8(out.unwrap().stderr).unwrap();
    assert!(err.contains("no confirmed generation before generation 2"), "{err}");
    let (out, _) = b.s.substitute(&b.server.url, &second, &b.server.public_key, "fresh-client-2");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A fleet of 50 real agents loses the server for 35 s (long enough for any backoff to reach
/// its cap): once the network is back, every agent is back within a few seconds, and not in
/// one burst (their returns are spread by the jitter).
#[test]
fn fifty_agents_return_within_seconds_of_an_outage_and_not_at_once() {
    let b = build_host(&["alpha"], "");
    let key = deploy_public_key(&b);
    let outage = b.s.path("outage");
    let hosts: Vec<Host> = (0..50).map(|i| Host::new(&b, &format!("h{i:02}"), "")).collect();
    let proxies: Vec<NetCut> = hosts.iter().map(|_| NetCut::start(&b.server.url, outage.clone())).collect();
    let _agents: Vec<Agent> = hosts
        .iter()
        .zip(&proxies)
        .map(|(h, p)| Agent(h.agent(&b, &p.url, &key).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()))
        .collect();
    let count = |p: &NetCut| p.accepted.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxies.iter().any(|p| count(p) == 0) {
        assert!(Instant::now() < deadline, "every agent connects");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&outage, "").unwrap();
    std::thread::sleep(Duration::from_secs(35));
    let before: Vec<usize> = proxies.iter().map(count).collect();
    std::fs::remove_file(&outage).unwrap();
    let back_at = Instant::now();
    let mut returned: Vec<Option<Duration>> = vec![None; proxies.len()];
    while returned.iter().any(Option::is_none) && back_at.elapsed() < Duration::from_secs(45) {
        for (i, p) in proxies.iter().enumerate() {
            if returned[i].is_none() && count(p) > before[i] {
                returned[i] = Some(back_at.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let returned: Vec<Duration> = returned.into_iter().map(|r| r.expect("every agent came back")).collect();
    let (first, last) = (returned.iter().min().unwrap(), returned.iter().max().unwrap());
    eprintln!("agents back after {first:?} (first) to {last:?} (last)");
    assert!(*last < Duration::from_secs(6), "the last agent came back after {last:?}");
    assert!(*last - *first > Duration::from_millis(500), "all came back at once: {first:?}..{last:?}");
}
