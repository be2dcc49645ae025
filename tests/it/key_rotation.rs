//! A deploy-key rotation of a real fleet: real agents, started with the old key in their
//! configuration and never reconfigured, follow `berth keys rotate deploy` through every
//! state — announced without a new generation, waited for while one host has not
//! acknowledged, surviving a server restart — and deploy with the new key alone, with no
//! manifest refused. An agent before rotation still gets exactly what it always got; a
//! hostile key list is a one-line 400; only an admin sees or starts a rotation.
//! (Failed before: there was no `berth keys`, and the server only ever signed with
//! `deploy_key_file`.)

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::{agent::*, builds::*, fleet::*, harness::*};

const AGENTS: [&str; 2] = ["alpha", "beta"];

fn keys(b: &BuildHost) -> Value {
    let r = http().get(b.api("keys/deploy")).bearer_auth(&b.admin).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().unwrap()
}

fn state_of(keys: &Value, public: &str) -> String {
    keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["public_key"] == public)
        .map_or_else(|| panic!("no key {public}: {keys:#}"), |k| k["state"].as_str().unwrap().to_owned())
}

/// Waits until the key `public` is in `state`.
fn wait_key(b: &BuildHost, public: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let k = keys(b);
        if state_of(&k, public) == state {
            return k;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("key {public} never became {state}: {:#}", keys(b));
}

fn berth_admin(b: &BuildHost, args: &[&str]) -> std::process::Output {
    b.s.berth().args(args).args(["--server", &b.server.url]).env("BERTH_TOKEN", &b.admin).output().unwrap()
}

/// What the agent of `host` persisted of its trust set.
fn trust_file(host: &Host) -> Value {
    let text = std::fs::read_to_string(host.root.join("state/state.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["deploy_keys"].clone()
}

fn no_refusals(b: &BuildHost) {
    for h in AGENTS {
        for r in reports(b, h) {
            let message = r["message"].as_str().unwrap_or("");
            assert!(!message.contains("refused"), "{h} refused a manifest: {r:#}");
        }
    }
}

#[test]
fn a_fleet_rotates_its_deploy_key_with_no_config_change_and_no_refused_manifest() {
    // delta has a token and generations but no agent: it never acknowledges.
    let mut b = build_host(&["alpha", "beta", "delta"], "");
    let old = deploy_public_key(&b);
    let hosts = AGENTS.map(|h| Host::new(&b, h, ""));
    let _delta_token = b.server.token("host:delta");
    let agents = hosts.each_ref().map(|h| h.spawn(&b, &b.server.url));
    assert!(b.submit_wait(&b.fleet.commit("main", "one", Signing::Trusted), "main").0);
    for h in AGENTS {
        wait_report(&b, h, 1, &["confirmed"]);
    }
    let before = keys(&b);
    assert_eq!(state_of(&before, &old), "current", "{before:#}");
    assert_eq!(before["waiting_for"], serde_json::json!([]));

    // Only an admin sees or starts a rotation.
    let host_token = b.server.token("host:alpha");
    for (post, path) in [(false, "keys/deploy"), (true, "keys/deploy/rotate")] {
        let request = if post { http().post(b.api(path)) } else { http().get(b.api(path)) };
        assert_eq!(request.bearer_auth(&host_token).send().unwrap().status(), StatusCode::FORBIDDEN, "{path}");
        let request = if post { http().post(b.api(path)) } else { http().get(b.api(path)) };
        assert_eq!(request.send().unwrap().status(), StatusCode::UNAUTHORIZED, "{path}");
    }

    let out = berth_admin(&b, &["keys", "rotate", "deploy"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let new = text.lines().find_map(|l| l.strip_prefix("next deploy key: ")).expect("the new key").to_owned();
    // The agents hear of it without a new generation, and say so on their next poll.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let k = keys(&b);
        let acked = |h: &str| {
            k["hosts"].as_array().unwrap().iter().any(|x| {
                x["host"] == h && x["trusts"].as_array().is_some_and(|t| t.iter().any(|key| key == new.as_str()))
            })
        };
        if AGENTS.iter().all(|h| acked(h)) {
            assert_eq!(k["waiting_for"], serde_json::json!(["delta"]), "{k:#}");
            break;
        }
        assert!(Instant::now() < deadline, "the agents never acknowledged the next key: {k:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(b.generations("alpha").len(), 1, "no generation was needed");
    let status = String::from_utf8_lossy(&berth_admin(&b, &["keys", "status"]).stdout).into_owned();
    assert!(status.contains("waits for 1 host(s): delta"), "{status}");
    // One rotation at a time.
    let again = berth_admin(&b, &["keys", "rotate", "deploy"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("409") && err.contains("still waiting"), "{err}");

    // A server restart in the middle keeps the rotation (the next key's secret is recorded).
    b.reconfigure(|c| c.to_owned());
    let restarted = keys(&b);
    assert_eq!((state_of(&restarted, &old), state_of(&restarted, &new)), ("current".into(), "next".into()));

    // The agents must follow the restarted server.
    drop(agents);
    let agents = hosts.each_ref().map(|h| h.spawn(&b, &b.server.url));
    // A deploy during the transition: signed by the old key, co-signed by the new one.
    for h in AGENTS {
        b.fleet.set_host(h, "two");
    }
    assert!(b.submit_wait(&b.fleet.commit("main", "two", Signing::Trusted), "main").0);
    for h in AGENTS {
        wait_report(&b, h, 2, &["confirmed"]);
    }

    // delta leaves the fleet: nothing holds the rotation any longer.
    let removed = berth_admin(&b, &["hosts", "remove", "delta"]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    wait_key(&b, &new, "current");
    let done = wait_key(&b, &old, "retired");
    assert_eq!(done["waiting_for"], serde_json::json!([]), "{done:#}");
    for h in &hosts {
        let trust = trust_file(h);
        assert!(trust["retired"].as_array().unwrap().iter().any(|k| k == old.as_str()), "{}: {trust:#}", h.name);
        assert!(trust["keys"].as_array().unwrap().iter().any(|k| k == new.as_str()), "{}: {trust:#}", h.name);
    }

    // With the old key retired, the fleet deploys with the new key alone — including an
    // agent restarted with its configuration untouched (still the old key).
    drop(agents);
    let _agents = hosts.each_ref().map(|h| h.spawn(&b, &b.server.url));
    for h in AGENTS {
        b.fleet.set_host(h, "three");
    }
    assert!(b.submit_wait(&b.fleet.commit("main", "three", Signing::Trusted), "main").0);
    for h in AGENTS {
        wait_report(&b, h, 3, &["confirmed"]);
    }
    no_refusals(&b);

    // An agent before rotation (no key list) gets the manifest as it always did: one
    // signature, no co-signatures, no announcement — now by the new key.
    let manifest: Value =
        http().get(b.api("hosts/alpha/manifest?timeout=0")).bearer_auth(&host_token).send().unwrap().json().unwrap();
    assert_eq!(manifest.as_object().unwrap().keys().collect::<Vec<_>>(), ["manifest", "signature"], "{manifest:#}");
    assert!(manifest["signature"].as_str().unwrap().starts_with(new.split(':').next().unwrap()));

    // Hostile key lists: one line, 400, nothing recorded.
    for bad in ["not-a-key", &"a:AAAA,".repeat(200), "k\u{e9}y:AAAA"] {
        let r = http()
            .get(b.api("hosts/alpha/manifest?timeout=0"))
            .bearer_auth(&host_token)
            .header("x-berth-deploy-keys", bad.as_bytes())
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = r.json().unwrap();
        assert_eq!(body["code"], "bad_request");
        assert!(body["message"].as_str().unwrap().starts_with("x-berth-deploy-keys: "), "{body}");
    }
}

/// The `key_expiring` bodies `receiver` got, in order.
fn expiring(receiver: &crate::receiver::Receiver) -> Vec<Value> {
    receiver
        .requests()
        .into_iter()
        .filter(|r| r.header("x-berth-event") == Some("key_expiring"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

fn wait_expiring(receiver: &crate::receiver::Receiver, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let got = expiring(receiver);
        if got.len() >= n {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{n} key_expiring notification(s) expected, got {:#?}", expiring(receiver));
}

/// A server with `[keys] AGE` and `warn_days = 2`, sending `key_expiring` to a receiver (the
/// directory holds the notification secret).
fn expiry_server(age: &str) -> (crate::receiver::Receiver, tempfile::TempDir, BuildHost) {
    let receiver = crate::receiver::Receiver::start(|_| (204, String::new()));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("notify-secret");
    std::fs::write(&secret, "notify-s3cret").unwrap();
    let extra = format!(
        "[keys]\n{age}\nwarn_days = 2\n[[notify]]\nurl = \"{}/hook\"\nsecret_file = \"{}\"\nevents = [\"key_expiring\"]\n",
        receiver.url,
        secret.display()
    );
    let b = build_host(&["alpha"], &extra);
    (receiver, dir, b)
}

/// With `[keys]` ages, a deploy key within `warn_days` of its expiry raises `key_expiring`
/// once — not again on every look, nor after a restart — and the next key made by a
/// rotation warns of its own expiry. (Failed before: there was no such event.)
#[test]
fn a_deploy_key_near_its_expiry_is_announced_once() {
    let (receiver, _dir, mut b) = expiry_server("deploy_max_age_days = 1");
    let old = deploy_public_key(&b);
    let first = wait_expiring(&receiver, 1);
    assert_eq!((first[0]["key"].as_str(), first[0]["state"].as_str()), (Some(old.as_str()), Some("current")));
    let created = state_of_key(&keys(&b), &old)["created_at"].as_i64().unwrap();
    assert_eq!(first[0]["expires_at"], created + 86_400);
    std::thread::sleep(Duration::from_secs(4));
    b.reconfigure(|c| c.to_owned());
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(expiring(&receiver).len(), 1, "warned once, not on each look nor after a restart");

    let out = berth_admin(&b, &["keys", "rotate", "deploy"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // No host holds a token here, so nothing waits: the new key is current at once, and
    // the old one, retiring, warns no more.
    let both = wait_expiring(&receiver, 2);
    assert_eq!(both[1]["state"], "current", "{both:#?}");
    assert_ne!(both[1]["key"], old.as_str());
    assert_eq!(expiring(&receiver).len(), 2);
}

fn state_of_key<'a>(keys: &'a Value, public: &str) -> &'a Value {
    keys["keys"].as_array().unwrap().iter().find(|k| k["public_key"] == public).unwrap()
}

/// With `[keys] cache_max_age_days`, the cache key's age counts from berth's first use of
/// it (recorded: a restart keeps it); within `warn_days` of its expiry `key_expiring` is
/// raised once with `"state": "cache"`, and `berth keys status` shows the key's age and
/// expiry. (Failed before: the cache key had no recorded age.)
#[test]
fn the_cache_key_near_its_expiry_is_announced_once() {
    let (receiver, _dir, mut b) = expiry_server("cache_max_age_days = 1");
    let first = wait_expiring(&receiver, 1);
    assert_eq!(first.len(), 1, "the cache key alone may expire here: {first:#?}");
    assert_eq!(
        (first[0]["key"].as_str(), first[0]["state"].as_str()),
        (Some(b.server.public_key.as_str()), Some("cache"))
    );
    let status = keys(&b);
    let first_used = status["cache"]["first_used"].as_i64().unwrap();
    assert_eq!(first[0]["expires_at"], first_used + 86_400, "{status:#}");
    assert_eq!(status["cache"]["expires_at"], first_used + 86_400);
    b.reconfigure(|c| c.to_owned());
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(expiring(&receiver).len(), 1, "warned once, not again after a restart");
    assert_eq!(keys(&b)["cache"]["first_used"], first_used, "the age survives a restart");
    let out = berth_admin(&b, &["keys", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("cache key {}  signing since", b.server.public_key)) && text.contains(", expires "),
        "{text}"
    );
}
