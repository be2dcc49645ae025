//! The build host, end to end: CI submits a commit of a test fleet (a flake of plain
//! derivations in a git repository with SSH-signed commits); berth fetches it, checks the
//! signature with the real git, builds every host with the real Nix, publishes the closures
//! and records generations as the branch policy says.

use std::{process::Command, time::Duration};

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::{fleet::*, harness::*};

const WEBHOOK_SECRET: &str = "webhook-secret-for-tests";

/// A berth server configured with the fleet's repository, and tokens.
pub struct BuildHost {
    pub s: Scratch,
    pub fleet: Fleet,
    pub server: Server,
    pub ci: String,
    pub admin: String,
}

pub fn build_host(hosts: &[&str], extra: &str) -> BuildHost {
    build_host_with(NixClient::Debian, hosts, extra)
}

/// [`build_host`] whose server builds with `client` (the current Nix on a chroot store).
pub fn build_host_with(client: NixClient, hosts: &[&str], extra: &str) -> BuildHost {
    build_host_in(Scratch::with(client), hosts, extra)
}

/// [`build_host_with`] in a scratch directory the test already holds files in.
pub fn build_host_in(s: Scratch, hosts: &[&str], extra: &str) -> BuildHost {
    let store = s.own_store().map(|dir| format!("store = \"{}\"\n", dir.display())).unwrap_or_default();
    let fleet = Fleet::new(&s, hosts);
    let secret = s.path("webhook-secret");
    std::fs::write(&secret, format!("{WEBHOOK_SECRET}\n")).unwrap();
    let config = s.path("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[builder]\nstale_after_secs = 3\n{store}\n[[repositories]]\nname = \"fleet\"\nurl = \"{}\"\nallowed_signers_file = \"{}\"\nwebhook_secret_file = \"{}\"\n{extra}",
            fleet.url(),
            fleet.allowed_signers().display(),
            secret.display()
        ),
    )
    .unwrap();
    let server = Server::start_for(&s, &["--config", config.to_str().unwrap()]);
    let (ci, admin) = (server.token("ci"), server.token("admin"));
    BuildHost { s, fleet, server, ci, admin }
}

impl BuildHost {
    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.server.url)
    }

    /// `berth build submit --wait`, as CI runs it: (succeeded, stdout = log, stderr = status).
    pub fn submit_wait(&self, commit: &str, branch: &str) -> (bool, String, String) {
        // Bounded: a hung build fails the test instead of hanging the suite.
        let out = Command::new("timeout")
            .args(["300", berth_bin()])
            .args(["build", "submit", "--repo", "fleet", "--commit", commit, "--branch", branch, "--wait"])
            .env("BERTH_SERVER", &self.server.url)
            .env("BERTH_TOKEN", &self.ci)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }

    /// Restarts the server on the same data directory with its configuration file changed by
    /// `edit` (the repository's table is the file's last).
    pub fn reconfigure(&mut self, edit: impl FnOnce(&str) -> String) {
        let path = self.s.path("berth.toml");
        let config = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(&config)).unwrap();
        self.server.kill();
        self.server = Server::start_for(&self.s, &["--config", path.to_str().unwrap()]);
    }

    /// The build as `GET /api/v1/builds/{id}` shows it.
    pub fn build(&self, id: i64) -> Value {
        http().get(self.api(&format!("builds/{id}"))).bearer_auth(&self.ci).send().unwrap().json().unwrap()
    }

    /// Waits for build `id` to end and returns it.
    pub fn wait(&self, id: i64) -> Value {
        for _ in 0..600 {
            let build = self.build(id);
            if ["succeeded", "failed", "cancelled"].contains(&build["state"].as_str().unwrap()) {
                return build;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("build {id} did not end");
    }

    pub fn generations(&self, host: &str) -> Vec<Value> {
        let r = http().get(self.api(&format!("hosts/{host}/generations"))).bearer_auth(&self.admin).send().unwrap();
        if r.status() == StatusCode::NOT_FOUND {
            return vec![];
        }
        r.json().unwrap()
    }
}

for_each_client!(main_builds_every_host_publishes_and_records_generations);

fn main_builds_every_host_publishes_and_records_generations(client: NixClient) {
    let b = build_host_with(client, &["alpha", "beta"], "");
    let commit = b.fleet.commit("main", "first deploy", Signing::Trusted);
    let (ok, log, status) = b.submit_wait(&commit, "main");
    assert!(ok, "{log}\n{status}");
    assert!(log.contains("commit signature: signed by alice@example.org"), "{log}");
    assert!(status.contains("succeeded"), "{status}");
    for host in ["alpha", "beta"] {
        let generations = b.generations(host);
        assert_eq!(generations.len(), 1, "{host}");
        assert_eq!(generations[0]["number"], 1);
        assert_eq!(generations[0]["commit_sha"], commit.as_str());
        let toplevel = generations[0]["store_path"].as_str().unwrap().to_owned();
        assert_eq!(toplevel, b.fleet.toplevel(&b.s, &commit, host));
        let (out, _) = b.s.substitute(&b.server.url, &toplevel, &b.server.public_key, &format!("client-{host}"));
        assert!(out.status.success(), "{host}: {}", String::from_utf8_lossy(&out.stderr));
        // The build host copied the toplevel's build log: `nix log --store <cache>` reads it
        // (by output path, which Nix 2.8 takes too: through the narinfo's `Deriver`).
        let log = b.s.nix("nix").args(["log", "--store", &b.server.url, &toplevel]).output().unwrap();
        assert!(log.status.success(), "{host}: {}", String::from_utf8_lossy(&log.stderr));
    }
    // The build outputs stay GC roots on the build host.
    let roots = std::fs::read_dir(b.server.data_dir.join("gcroots/alpha")).unwrap().count();
    assert_eq!(roots, 1);
    // `berth hosts` shows both, for an admin; a ci token cannot read host state.
    let hosts = Command::new(berth_bin())
        .args(["hosts", "--server", &b.server.url])
        .env("BERTH_TOKEN", &b.admin)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&hosts.stdout);
    assert!(table.contains("alpha") && table.contains("beta"), "{table}");
    let refused = http().get(b.api("hosts")).bearer_auth(&b.ci).send().unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let refused = http().get(b.api("hosts/alpha/generations")).bearer_auth(&b.ci).send().unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

#[test]
fn a_change_to_one_host_deploys_that_host_only_and_republishes_nothing_else() {
    let b = build_host(&["alpha", "beta"], "");
    let first = b.fleet.commit("main", "first", Signing::Trusted);
    assert!(b.submit_wait(&first, "main").0);
    b.fleet.set_host("alpha", "changed");
    let second = b.fleet.commit("main", "change alpha", Signing::Trusted);
    let (ok, log, status) = b.submit_wait(&second, "main");
    assert!(ok, "{log}\n{status}");
    assert_eq!(b.generations("alpha").len(), 2);
    assert_eq!(b.generations("beta").len(), 1, "beta's system did not change");
    assert!(log.contains("[alpha] published: 1 new path(s)"), "{log}");
    assert!(log.contains("[beta] published: 0 new path(s)"), "{log}");
    // Submitting the same commit again answers the same build, without building twice.
    let (ok, _, again) = b.submit_wait(&second, "main");
    assert!(ok);
    let id = |text: &str| text.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    assert_eq!(id(&again), id(&status), "the same build: {again}");
    assert!(again.starts_with(&format!("{} succeeded", id(&status))), "already built: {again}");
}

#[test]
fn branch_policy_test_branches_and_feature_branches() {
    let b = build_host(&["alpha", "beta"], "");
    b.fleet.set_host("beta", "trying something");
    let test = b.fleet.commit("test-beta", "try beta", Signing::Trusted);
    let (ok, log, _) = b.submit_wait(&test, "test-beta");
    assert!(ok, "{log}");
    assert_eq!(b.generations("beta").len(), 1);
    assert_eq!(b.generations("beta")[0]["branch"], "test-beta");
    assert!(b.generations("alpha").is_empty(), "a test branch deploys its host alone");

    b.fleet.set_host("alpha", "feature");
    let feature = b.fleet.commit("feature/x", "feature work", Signing::Trusted);
    let (ok, _, status) = b.submit_wait(&feature, "feature/x");
    assert!(ok, "{status}");
    assert!(status.contains("deploys nothing"), "{status}");
    assert!(b.generations("alpha").is_empty());
}

#[test]
fn unsigned_or_foreign_signed_commits_build_but_never_deploy() {
    for (signing, word) in [(Signing::Unsigned, "not signed"), (Signing::OtherKey, "not trusted")] {
        let b = build_host(&["alpha"], "");
        b.fleet.set_host("alpha", word);
        let commit = b.fleet.commit("main", word, signing);
        let (ok, log, status) = b.submit_wait(&commit, "main");
        assert!(ok, "CI still learns that it builds: {log}\n{status}");
        assert!(status.contains(word), "{status}");
        assert!(b.generations("alpha").is_empty(), "{word}: nothing deployed");
    }
}

#[test]
fn a_failing_host_fails_the_build_with_its_log_tail() {
    let b = build_host(&["alpha", "beta"], "");
    b.fleet.set_broken("beta", true);
    let commit = b.fleet.commit("main", "break beta", Signing::Trusted);
    let (ok, log, status) = b.submit_wait(&commit, "main");
    assert!(!ok, "the CI job fails");
    assert!(status.contains("1 of 2 hosts failed: beta"), "{status}");
    assert!(status.contains("broken on purpose"), "the log tail is in the status: {status}");
    assert!(status.contains("alpha") && status.contains("succeeded"), "alpha's success is not hidden: {status}");
    assert!(log.contains("broken on purpose"), "{log}");
    assert!(b.generations("alpha").is_empty(), "a failed build deploys nothing");
}

pub fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[test]
fn webhooks_need_the_right_signature() {
    let b = build_host(&["alpha"], "");
    let commit = b.fleet.commit("main", "via webhook", Signing::Trusted);
    let body = serde_json::to_vec(&json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": commit,
        "repository": { "full_name": "ops/fleet", "clone_url": b.fleet.url().trim_start_matches("git+"), "html_url": "", "ssh_url": "" }
    }))
    .unwrap();
    let deliver = |signature: &str| {
        http()
            .post(b.api("webhooks/forgejo"))
            .header("X-Forgejo-Event", "push")
            .header("X-Forgejo-Signature", signature)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .unwrap()
    };
    let wrong = deliver(&sign(b"another body"));
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let builds: Vec<Value> = http().get(b.api("builds")).bearer_auth(&b.ci).send().unwrap().json().unwrap();
    assert!(builds.is_empty(), "a refused webhook builds nothing");
    let right = deliver(&sign(&body));
    assert_eq!(right.status(), StatusCode::ACCEPTED);
    let id = right.json::<Value>().unwrap()["id"].as_i64().unwrap();
    assert_eq!(b.wait(id)["state"], "succeeded");
    assert_eq!(b.generations("alpha").len(), 1);
}

#[test]
fn tokens_are_scoped_for_builds() {
    let b = build_host(&["alpha"], "");
    let push = b.server.token("push");
    let body = json!({"repository": "fleet", "commit": "0".repeat(40), "branch": "main"});
    let r = http().post(b.api("builds")).bearer_auth(&push).json(&body).send().unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a push token cannot submit builds");
    let r = http().post(b.api("builds")).json(&body).send().unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http().post(b.api("paths/missing")).bearer_auth(&b.ci).json(&json!({"paths": []})).send().unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a ci token cannot push");
    let other = json!({"repository": "elsewhere", "commit": "0".repeat(40), "branch": "main"});
    let r = http().post(b.api("builds")).bearer_auth(&b.ci).json(&other).send().unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "only configured repositories");
    let bad = json!({"repository": "fleet", "commit": "HEAD", "branch": "main"});
    assert_eq!(
        http().post(b.api("builds")).bearer_auth(&b.ci).json(&bad).send().unwrap().status(),
        StatusCode::BAD_REQUEST
    );
}

#[test]
fn a_build_interrupted_by_a_crash_ends_in_a_definite_state() {
    let mut b = build_host(&["alpha"], "");
    b.fleet.set_slow("alpha", 30);
    let commit = b.fleet.commit("main", "slow", Signing::Trusted);
    let body = json!({"repository": "fleet", "commit": commit, "branch": "main"});
    let r: Value = http().post(b.api("builds")).bearer_auth(&b.ci).json(&body).send().unwrap().json().unwrap();
    let id = r["id"].as_i64().unwrap();
    for _ in 0..100 {
        if b.build(id)["state"] == "running" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(b.build(id)["state"], "running");
    b.server.kill();
    // Make the retry fast, restart on the same data directory: the build is settled (run
    // again, here to success), never left running.
    b.fleet.set_slow("alpha", 0);
    b.server = Server::start(&b.server.data_dir.clone(), &["--config", b.s.path("berth.toml").to_str().unwrap()]);
    let build = b.wait(id);
    assert!(["succeeded", "failed"].contains(&build["state"].as_str().unwrap()), "{build}");
    assert!(build["attempts"].as_i64().unwrap() >= 1, "{build}");
}
