//! Staged rollouts with real agents, real builds and the real Nix client: a canary wave
//! first, the rest once it confirmed (and soaked). A commit whose canary rolls back halts
//! the rollout and never reaches the other hosts; abort keeps them where they are, resume
//! goes on; a server restart in the middle of a soak continues the rollout; only an admin
//! token commands it; a wrong policy is refused at start-up.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::{
    agent::*,
    builds::*,
    fleet::*,
    forge::{forge_table, last},
    harness::*,
    openapi::{Forge, Kind as ForgeKind},
    receiver::Receiver,
};

const HOSTS: [&str; 3] = ["alpha", "beta", "gamma"];

/// alpha is the canary; beta and gamma follow once it confirmed and `soak` seconds passed.
fn policy(soak: u32) -> String {
    format!(
        "[repositories.hosts.alpha]\ntags = [\"canary\"]\n[repositories.rollout]\nwaves = [{{ hosts = [\"tag:canary\"] }}, {{ rest = true }}]\nsoak_secs = {soak}\n"
    )
}

/// `berth ARGS… --server URL` with the admin token; its stdout.
fn admin(b: &BuildHost, args: &[&str]) -> String {
    let out = run_ok(b.s.berth().args(args).args(["--server", &b.server.url]).env("BERTH_TOKEN", &b.admin));
    String::from_utf8(out.stdout).unwrap()
}

fn rollout(b: &BuildHost, id: i64) -> Value {
    http().get(b.api(&format!("rollouts/{id}"))).bearer_auth(&b.admin).send().unwrap().json().unwrap()
}

/// Waits until rollout `id` is in `state`; returns it.
fn wait_rollout(b: &BuildHost, id: i64, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let r = rollout(b, id);
        if r["state"] == state {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("rollout {id} never became {state}: {:#}", rollout(b, id));
}

fn has_report(b: &BuildHost, host: &str, generation: i64) -> bool {
    reports(b, host).iter().any(|r| r["generation"] == generation)
}

fn host_state(b: &BuildHost, host: &str) -> Value {
    let hosts: Vec<Value> = http().get(b.api("hosts")).bearer_auth(&b.admin).send().unwrap().json().unwrap();
    hosts.into_iter().find(|h| h["name"] == host).unwrap()["state"].clone()
}

/// A new system for every host, alpha's switch failing; returns once alpha rolled back and
/// rollout `id` halted.
fn deploy_broken_canary(b: &BuildHost, id: i64) -> Value {
    b.fleet.set_switch_fails("alpha", true);
    for h in HOSTS {
        b.fleet.set_host(h, "two");
    }
    assert!(b.submit_wait(&b.fleet.commit("main", "two", Signing::Trusted), "main").0);
    assert_eq!(wait_report(b, "alpha", 2, &["rolled_back", "confirmed"])["phase"], "rolled_back");
    wait_rollout(b, id, "halted")
}

/// (Failed before: every host got generation 2 at once, and there were no rollouts; then:
/// the halt reached neither the forge nor the notifications.)
#[test]
fn a_bad_commit_stops_at_the_canary_and_abort_keeps_the_others_where_they_are() {
    let token = "ghp_berthRolloutToken1a2b";
    let forge = Forge::start(ForgeKind::Github, token, "acme", "fleet", 0);
    let receiver = Receiver::start(|_| (204, String::new()));
    let dir = tempfile::tempdir().unwrap();
    let (token_file, secret_file) = (dir.path().join("token"), dir.path().join("secret"));
    std::fs::write(&token_file, token).unwrap();
    std::fs::write(&secret_file, "notify-s3cret").unwrap();
    let extra = format!(
        "{}{}[[notify]]\nurl = \"{}/hook\"\nsecret_file = \"{}\"\n",
        policy(0),
        forge_table("github", &forge, &token_file, false),
        receiver.url,
        secret_file.display()
    );
    let b = build_host(&HOSTS, &extra);
    let hosts = HOSTS.map(|h| Host::new(&b, h, ""));
    let _agents = hosts.each_ref().map(|h| h.spawn(&b, &b.server.url));
    let one = b.fleet.commit("main", "one", Signing::Trusted);
    assert!(b.submit_wait(&one, "main").0);
    for h in HOSTS {
        wait_report(&b, h, 1, &["confirmed"]);
    }
    wait_rollout(&b, 1, "completed");
    wait_for("rollout 1's forge status to succeed", || {
        last(&forge, &one, "berth/rollout") == Some(("success".into(), "rollout 1 completed".into()))
    });

    let halted = deploy_broken_canary(&b, 2);
    assert_eq!(halted["halted_host"], "alpha", "{halted:#}");
    // The halt on the forge (the commit's berth/rollout) and as a notification (a default kind).
    let two = halted["commit_sha"].as_str().unwrap().to_owned();
    wait_for("rollout 2's forge status to fail", || {
        last(&forge, &two, "berth/rollout")
            .is_some_and(|(s, d)| s == "failure" && d.starts_with("rollout 2 halted at wave 1 by alpha: rolled back"))
    });
    forge.assert_no_violations();
    wait_for("the rollout_halted notification", || {
        receiver.requests().iter().any(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
            r.header("x-berth-event") == Some("rollout_halted") && body["host"] == "alpha" && body["rollout"]["id"] == 2
        })
    });
    assert!(halted["reason"].as_str().unwrap().starts_with("rolled back"), "{halted:#}");
    let status = admin(&b, &["rollout", "status", "2"]);
    assert!(status.contains("halted") && status.contains("halted by alpha: rolled back"), "{status}");
    assert_eq!(host_state(&b, "beta"), serde_json::json!({"state": "held", "rollout": 2}));
    let listed = admin(&b, &["hosts"]);
    assert!(
        listed.lines().any(|l| l.starts_with("beta") && l.contains("held") && l.ends_with("rollout 2")),
        "{listed}"
    );
    std::thread::sleep(Duration::from_secs(3));
    for h in &hosts[1..] {
        assert!(!has_report(&b, &h.name, 2), "{} never hears of generation 2", h.name);
        assert_eq!(h.profile(), Some(toplevel(&b, &h.name, 1)));
    }

    // Only an admin commands rollouts; an unknown one is a JSON 404.
    let host_token = b.server.token("host:beta");
    for (post, path) in
        [(false, "rollouts"), (false, "rollouts/2"), (true, "rollouts/2/resume"), (true, "rollouts/2/abort")]
    {
        let request = if post { http().post(b.api(path)) } else { http().get(b.api(path)) };
        let response = request.bearer_auth(&host_token).send().unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(rollout(&b, 2)["state"], "halted", "the host's refused resume changed nothing");
    for path in ["rollouts/99", "rollouts/99/abort"] {
        let request = if path.ends_with("abort") { http().post(b.api(path)) } else { http().get(b.api(path)) };
        let response = request.bearer_auth(&b.admin).send().unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = response.json().unwrap();
        assert_eq!(body, serde_json::json!({"code": "not_found", "message": "no rollout 99"}));
    }

    // The dashboard shows the halt to a reader; an admin aborts it there (confirmation, CSRF).
    let client = reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let url = &b.server.url;
    let read = b.server.token("read");
    let page = client.get(format!("{url}/ui/rollouts")).bearer_auth(&read).send().unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().unwrap();
    assert!(page.contains("halted by alpha: rolled back") && page.contains("beta (held)"), "{page}");
    assert!(!page.contains("/ui/rollouts/2/abort"), "a reader gets no actions");
    let login = client.post(format!("{url}/ui/login")).form(&[("token", b.admin.as_str())]).send().unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let get = |path: &str| client.get(format!("{url}{path}")).header("cookie", &cookie).send().unwrap().text().unwrap();
    assert!(get("/ui/rollouts").contains("/ui/rollouts/2/abort"));
    let confirm = get("/ui/rollouts/2/abort");
    let csrf = confirm.split("name=\"csrf\" value=\"").nth(1).and_then(|s| s.split('"').next()).unwrap().to_owned();
    assert!(confirm.contains("Abort rollout 2?"), "{confirm}");
    let post = |csrf: &str| {
        client
            .post(format!("{url}/ui/rollouts/2/abort"))
            .header("cookie", &cookie)
            .form(&[("csrf", csrf)])
            .send()
            .unwrap()
    };
    assert_eq!(post("forged").status(), StatusCode::FORBIDDEN);
    assert_eq!(rollout(&b, 2)["state"], "halted", "a forged form changes nothing");
    let done = post(&csrf);
    assert_eq!(done.status(), StatusCode::OK);
    assert!(done.text().unwrap().contains("Rollout 2 is aborted"));
    let status = admin(&b, &["rollout", "status", "2"]);
    assert!(status.contains(": aborted"), "{status}");
    let out =
        b.s.berth().args(["rollout", "abort", "2", "--server", url]).env("BERTH_TOKEN", &b.admin).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("409"), "aborted once");
    let again = http().post(b.api("rollouts/2/resume")).bearer_auth(&b.admin).send().unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT, "an aborted rollout does not resume");
    std::thread::sleep(Duration::from_secs(3));
    for h in &hosts[1..] {
        assert!(!has_report(&b, &h.name, 2), "{} still never hears of generation 2", h.name);
        assert_eq!(h.profile(), Some(toplevel(&b, &h.name, 1)));
    }
}

/// (Failed before: beta and gamma switched at once, with alpha.)
#[test]
fn a_good_commit_goes_wave_by_wave_through_a_server_restart_and_resume_goes_on() {
    const SOAK: i64 = 4;
    let mut b = build_host(&HOSTS, &policy(SOAK as u32));
    let hosts = HOSTS.map(|h| Host::new(&b, h, ""));
    let agents = hosts.each_ref().map(|h| h.spawn(&b, &b.server.url));
    assert!(b.submit_wait(&b.fleet.commit("main", "one", Signing::Trusted), "main").0);
    let confirmed = wait_report(&b, "alpha", 1, &["confirmed"])["created_at"].as_i64().unwrap();
    // In the soak: the server (and the agents, which know its address) restart.
    drop(agents);
    assert!(!has_report(&b, "beta", 1) && !has_report(&b, "gamma", 1), "the second wave waits for the soak");
    b.reconfigure(|config| config.to_owned());
    let _agents = hosts.each_ref().map(|h| h.spawn(&b, &b.server.url));
    for h in ["beta", "gamma"] {
        wait_report(&b, h, 1, &["confirmed"]);
        let started = wait_report(&b, h, 1, &["downloading"])["created_at"].as_i64().unwrap();
        assert!(started >= confirmed + SOAK, "{h} started at {started}, alpha confirmed at {confirmed}");
    }
    let done = wait_rollout(&b, 1, "completed");
    assert_eq!(done["hosts"].as_array().unwrap().iter().filter(|h| h["held"] == false).count(), 3, "{done:#}");

    // A halted rollout resumed: alpha's failure accepted, the rest go on.
    deploy_broken_canary(&b, 2);
    assert!(!has_report(&b, "beta", 2));
    let resumed = admin(&b, &["rollout", "resume"]);
    assert!(resumed.contains("rollout 2") && resumed.contains(": running"), "{resumed}");
    for h in ["beta", "gamma"] {
        wait_report(&b, h, 2, &["confirmed"]);
    }
    wait_rollout(&b, 2, "completed");
}

/// A policy that cannot work is refused before the server starts, with the reason.
#[test]
fn an_invalid_rollout_policy_is_refused_at_start_up() {
    let s = Scratch::new();
    let repo = "[[repositories]]\nname = \"fleet\"\nurl = \"git+file:///srv/fleet\"\nrequire_signed_commits = false\n[repositories.hosts.alpha]\ntags = [\"canary\"]\n[repositories.rollout]\n";
    for (waves, expected) in [
        ("waves = [{ hosts = [] }]", "wave 1 is empty"),
        ("waves = [{ hosts = [\"tag:canary\"] }, { percent = 120 }]", "wave 2: percent 120 is outside 1..=100"),
        ("waves = [{ hosts = [\"tag:cannary\"] }]", "wave 1: no host has tag \"cannary\""),
        ("waves = [{ rest = true }]\nsoak = 5", "unknown field `soak`"),
    ] {
        let config = s.path("bad.toml");
        std::fs::write(&config, format!("{repo}{waves}\n")).unwrap();
        let out = s.berth().arg("check-config").arg(&config).output().unwrap();
        assert!(!out.status.success(), "{waves}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(expected), "{waves}: {out:?}");
        let out =
            s.berth().args(["serve", "--config"]).arg(&config).arg("--data-dir").arg(s.path("d")).output().unwrap();
        assert!(!out.status.success(), "serve refuses {waves}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(expected), "{waves}: {out:?}");
    }
}

/// Deploys generation 1 everywhere (rollout 1), then a commit whose canary rolls back
/// (rollout 2, halted); returns the agents.
fn halted_second_rollout(b: &BuildHost, hosts: &[Host; 3]) -> [Agent; 3] {
    let agents = hosts.each_ref().map(|h| h.spawn(b, &b.server.url));
    assert!(b.submit_wait(&b.fleet.commit("main", "one", Signing::Trusted), "main").0);
    for h in HOSTS {
        wait_report(b, h, 1, &["confirmed"]);
    }
    wait_rollout(b, 1, "completed");
    deploy_broken_canary(b, 2);
    agents
}

/// A fixed commit for every host (alpha's switch works again).
fn fixed_commit(b: &BuildHost) {
    b.fleet.set_switch_fails("alpha", false);
    for h in HOSTS {
        b.fleet.set_host(h, "three");
    }
    assert!(b.submit_wait(&b.fleet.commit("main", "three", Signing::Trusted), "main").0);
}

/// `supersede = "replace"` (the default): the fixed commit's rollout replaces the halted
/// one, and beta and gamma go from generation 1 straight to 3, never hearing of 2.
#[test]
fn a_newer_commit_replaces_a_halted_rollout() {
    let b = build_host(&HOSTS, &policy(0));
    let hosts = HOSTS.map(|h| Host::new(&b, h, ""));
    let _agents = halted_second_rollout(&b, &hosts);
    fixed_commit(&b);
    let superseded = wait_rollout(&b, 2, "superseded");
    assert_eq!(superseded["reason"], "a newer commit replaced it", "{superseded:#}");
    for h in HOSTS {
        wait_report(&b, h, 3, &["confirmed"]);
    }
    wait_rollout(&b, 3, "completed");
    for h in &hosts[1..] {
        assert!(!has_report(&b, &h.name, 2), "{} never hears of generation 2", h.name);
        assert_eq!(h.profile(), Some(toplevel(&b, &h.name, 3)));
    }
}

/// A newer commit that changes only the canary still brings the other hosts what the
/// halted rollout it replaces held back from them: their systems are new to them, even if
/// the same as the held ones. (Failed before: beta and gamma were compared with their held
/// generation 2, got no generation 3, and stayed on generation 1.)
#[test]
fn a_commit_that_fixes_only_the_canary_brings_the_others_what_the_replaced_rollout_held() {
    let b = build_host(&HOSTS, &policy(0));
    let hosts = HOSTS.map(|h| Host::new(&b, h, ""));
    let _agents = halted_second_rollout(&b, &hosts);
    let held: Vec<String> = HOSTS[1..].iter().map(|h| toplevel(&b, h, 2)).collect();
    b.fleet.set_switch_fails("alpha", false);
    b.fleet.set_host("alpha", "three");
    assert!(b.submit_wait(&b.fleet.commit("main", "fix the canary alone", Signing::Trusted), "main").0);
    wait_rollout(&b, 2, "superseded");
    for (h, system) in hosts[1..].iter().zip(&held) {
        wait_report(&b, &h.name, 3, &["confirmed"]);
        assert_eq!(&toplevel(&b, &h.name, 3), system, "the system rollout 2 held back");
        assert_eq!(h.profile().as_ref(), Some(system));
    }
    wait_rollout(&b, 3, "completed");
}

/// `supersede = "queue"`: the fixed commit's rollout waits behind the halted one (nobody
/// hears of generation 3) until that one is aborted; then it goes wave by wave.
#[test]
fn with_queue_a_newer_commit_waits_for_the_halted_rollout() {
    let b = build_host(&HOSTS, &format!("{}supersede = \"queue\"\n", policy(0)));
    let hosts = HOSTS.map(|h| Host::new(&b, h, ""));
    let _agents = halted_second_rollout(&b, &hosts);
    fixed_commit(&b);
    assert_eq!(rollout(&b, 3)["state"], "queued");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rollout(&b, 3)["state"], "queued", "it waits behind the halted rollout 2");
    assert!(!has_report(&b, "alpha", 3), "the canary is not handed the queued generation");
    admin(&b, &["rollout", "abort", "2"]);
    for h in HOSTS {
        wait_report(&b, h, 3, &["confirmed"]);
    }
    wait_rollout(&b, 3, "completed");
    assert!(!has_report(&b, "beta", 2) && !has_report(&b, "gamma", 2));
}
